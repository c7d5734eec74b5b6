"""`tdptrace report`: one self-contained HTML file with the verdict, tables and embedded figures; rendered
by a real headless browser where one is installed."""
from __future__ import annotations

import base64
import re
import shutil
import subprocess

import numpy as np
import pytest
from matplotlib.image import imread
from smallcaps import span, write_capture

import tdptrace
from tdptrace.cli import main
from tdptrace.oncall.report import render_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def embedded_pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


@pytest.fixture(scope="module")
def hog_report(reference_captures, tmp_path_factory):
    """The hog capture's report written through the CLI once for the tests below."""
    out = tmp_path_factory.mktemp("report") / "r.html"
    assert main(["report", str(reference_captures["k61-512m-hog"]), "-o", str(out)]) == 0
    return out


def test_report_holds_verdict_tables_and_four_figures(hog_report):
    text = hog_report.read_text()
    assert '<div class="verdict risk">RISK: KVM held mmu_lock in read mode for 99.7 ms' in text
    assert "<h2>Zaps by level</h2>" in text and "196,100" in text
    # one time base: the capture clock, the same as the kernel log's [seconds], in the tables too
    assert "Time base: times are seconds on the capture clock" in text
    assert "from 24.541214 s" in text and "<td class=\"n\">24.541214</td>" in text
    assert "<b>read</b> (yield function)" in text and "<b>write</b> (yield function)" in text
    assert '<tr class="away">' in text and "not a hold: includes time away in the yield" in text
    assert "<h2>Zap spans (5)</h2>" in text
    assert "kvm_tdp_mmu_zap_invalidated_roots+0x87/0xf0" in text
    pngs = embedded_pngs(text)
    assert len(pngs) == 4 and all(p.startswith(PNG_MAGIC) and len(p) > 10_000 for p in pngs)
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)
    assert "<script" not in text and "@import" not in text and "url(" not in text


def test_clean_capture_report(reference_captures):
    text = render_html(tdptrace.open(reference_captures["k61-256m-thp"]), 10_000_000)
    assert '<div class="verdict clean">No risk above 10.0 ms' in text


def test_text_from_the_capture_is_escaped(tmp_path):
    cap = tdptrace.open(write_capture(tmp_path / "x.tdp", spans=[
        span(0, 0, 20_000_000, comm="<script>alert(1)</script>", caller="a&b<c>+0x1/0x2")]))
    text = render_html(cap, 10_000_000)
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "a&amp;b&lt;c&gt;" in text


def test_capture_without_spans_says_cannot_tell(tmp_path):
    cap = tdptrace.open(write_capture(tmp_path / "n.tdp", sptes=[{"ts": 1, "gfn": 1, "old_spte": 1 << 11,
                                                                  "new_spte": 0}]))
    text = render_html(cap, 10_000_000)
    assert '<div class="verdict unknown">Cannot tell:' in text and "no zap spans" in text
    assert len(embedded_pngs(text)) == 4


def test_report_with_dmesg_lines_up_the_stall(reference_captures, tmp_path):
    log = tmp_path / "dmesg.txt"
    log.write_text("[   24.700000] rcu: INFO: rcu_sched self-detected stall on CPU\n")
    out = tmp_path / "r.html"
    assert main(["report", str(reference_captures["k61-512m-hog"]), "-o", str(out), "--dmesg", str(log)]) == 0
    text = out.read_text()
    assert "<h2>Kernel log</h2>" in text and "printed while span 1 __tdp_mmu_zap_root was running" in text
    # no stall length in the line and no recorded limit: the capture cannot explain it, and says why
    assert "This capture cannot explain the rcu stall" in text and "<b>no</b>" in text


def test_report_into_a_directory_is_refused(reference_captures, tmp_path, capsys):
    assert main(["report", str(reference_captures["k61-256m-thp"]), "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_headless_chromium(hog_report, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    html = hog_report
    shot = tmp_path / "shot.png"
    p = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1200,1600", f"--screenshot={shot}", html.as_uri()],
                       capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert shot.exists(), p.stderr[-2000:]
    img = imread(shot)[..., :3]
    assert img.shape[:2] == (1600, 1200)
    # the verdict box's red tint (#fdecea) is on screen, and the page is not blank
    tint = np.all(np.abs(img - np.array([0xFD, 0xEC, 0xEA]) / 255) < 0.02, axis=-1)
    assert tint.sum() > 20_000
    assert img.std() > 0.1
