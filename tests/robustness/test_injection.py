"""C and shell text through options: rejected in one line, or proven inert. Nothing from the command line is
pasted into BPF C (settings are numeric -D defines), no option value reaches a shell, captures hold no raw
kernel addresses, and capture files are private (0600 in 0700 directories) whatever the umask."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from addrscan import scan_for_kernel_addresses
from tracegen import Trace, leaf4k, nonleaf

from tdptrace.cli import main

TDPTRACE = [sys.executable, "-m", "tdptrace.cli"]
SHELL = "x;touch {canary};$(touch {canary})`touch {canary}`|touch {canary}"
C_TEXT = '1);\n#include "/etc/shadow"\nint evil(void) { system("id"); } //'


def _one_line_refusal(args: list[str], capsys, needle: str) -> None:
    capsys.readouterr()
    rc = main(args)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc != 0
    assert len(err) == 1 and needle in err[0], err
    assert "Traceback" not in err[0]


@pytest.fixture
def trace(tmp_path) -> Path:
    f = tmp_path / "t.txt"
    f.write_text(Trace().get_page(0, 1).spte(0, 2, 0, nonleaf(5)).spte(1, 1, 0, leaf4k(1))
                 .enter("tdp_mmu_zap_leafs", "root=0xffff8946134bab80 start=0x0 end=0x200 can_yield=1 flush=0")
                 .spte(1, 1, leaf4k(1), 0).yield_().ret("tdp_mmu_zap_leafs", args="ret=1").text())
    return f


@pytest.mark.parametrize("args,needle", [
    (["record", "-p", "1;system('id')"], "is not a list of process ids"),
    (["record", "-p", C_TEXT], "is not a list of process ids"),
    (["record", "-d", "1s; rm -rf /"], "is not a duration"),
    (["record", "--backend", "bcc;id"], "is unknown"),
    (["record", "--stack-threshold", "1e400"], "is not a duration"),
    (["record", "--stack-threshold", "2h"], "out of range"),
    (["top", "-s", "zaps;id"], "unknown sort key"),
    (["top", "-c", "([unclosed"], "is not a regular expression"),
    (["serve", "--listen", "127.0.0.1:9464;id"], "is not HOST:PORT"),
    (["lab", "run", "--kernel", "6.1;id"], "6.1;id"),
    (["lab", "probes", "--kernel", "$(id)"], "$(id)"),
    (["simulate", "-o", "/tmp/never.tdp", "--size", "64G;id"], "64G;id"),
])
def test_metacharacters_in_options_are_refused(args, needle, capsys, monkeypatch):
    import tdptrace.lab.host

    monkeypatch.setattr(tdptrace.lab.host, "ensure_host_packages", lambda: pytest.fail("got past validation"))
    _one_line_refusal(args, capsys, needle)


@pytest.mark.parametrize("cmd", ["triage", "report", "plot", "compare"])
def test_threshold_with_code_is_refused(cmd, trace, tmp_path, capsys):
    cap = tmp_path / "c.tdp"
    assert main(["import", str(trace), "-o", str(cap), "-q"]) == 0
    args = {"triage": ["triage", str(cap)], "report": ["report", str(cap), "-o", str(tmp_path / "r.html")],
            "plot": ["plot", str(cap), "-o", str(tmp_path / "p")], "compare": ["compare", str(cap), str(cap)]}[cmd]
    _one_line_refusal(args + ["--threshold", "10ms$(id)"], capsys, "is not a duration")


def test_kernel_option_with_code_is_refused(trace, tmp_path, capsys):
    _one_line_refusal(["import", str(trace), "-o", str(tmp_path / "c.tdp"), "--kernel", "6.1.0; id"], capsys,
                      "is not a kernel release")


def test_an_output_name_too_long_is_one_line(trace, tmp_path, capsys):
    _one_line_refusal(["import", str(trace), "-o", str(tmp_path / ("x" * 300 + ".tdp")), "-q"], capsys,
                      "File name too long")


def test_shell_text_in_output_paths_is_inert(trace, tmp_path):
    """-o names with shell syntax are used literally: the capture gets that very name, nothing is executed."""
    canary = tmp_path / "pwned"
    name = SHELL.format(canary="pwned") + ".tdp"
    for args in (["import", str(trace), "-o", str(tmp_path / name), "-q"],
                 ["report", str(tmp_path / name), "-o", str(tmp_path / (name + ".html"))]):
        p = subprocess.run(TDPTRACE + args, capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert p.returncode == 0, p.stderr
    assert (tmp_path / name / "meta.json").is_file() and (tmp_path / (name + ".html")).is_file()
    assert not canary.exists() and not list(tmp_path.glob("pwned*"))


def test_record_ebpf_holds_no_user_text(tmp_path):
    """`record --ebpf` prints the program as compiled: every setting is a numeric #define; the user's -o text
    and the values given do not appear anywhere."""
    marker = "INJECTED_MARKER"
    out = tmp_path / f'{marker}");system("id");/*.tdp'
    p = subprocess.run(TDPTRACE + ["record", "--ebpf", "--sptes", "--stacks", "--stack-threshold", "2.5ms", "-p",
                                   str(os.getpid()), "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert marker not in p.stdout and "system(" not in p.stdout
    settings = p.stdout.split("\n\n", 1)[0]  # the -D settings come first, then the header and the source
    defines = re.findall(r"^#define (TDP_\w+) (.*)$", settings, re.M)
    assert len(defines) == len(settings.splitlines())
    assert defines and all(re.fullmatch(r"-?\d+", v) for _, v in defines), defines
    assert dict(defines)["TDP_STACK_MIN_GAP_NS"] == "2500000"
    assert dict(defines)["TDP_FILTER_PIDS"] == "1"  # the pid itself goes into a map, not the text


def test_only_integers_under_tdp_names_reach_the_compiler():
    from tdptrace.live.bcc_recorder import cflag

    assert cflag("TDP_X", 3) == "-DTDP_X=3" and cflag("TDP_Y", True) == "-DTDP_Y=1"
    for name, value in (("TDP_X", "1; evil"), ("TDP_X", 1.5), ("TDP_X", None)):
        with pytest.raises(TypeError):
            cflag(name, value)
    for name in ("X", "TDP_X=1 -DEVIL", "TDP_x", "TDP_X;"):
        with pytest.raises(ValueError):
            cflag(name, 1)


# ---- no raw kernel addresses in captures ----------------------------------------------------------------

def test_imported_reference_capture_holds_no_kernel_addresses(tmp_path):
    from refdata import reference_trace

    from tdptrace.importers import import_file

    src = reference_trace("k61-128m")
    import lzma

    assert re.search(r"ffff8[0-9a-f]{11}", lzma.open(src, "rt").read())  # the text has them (kprobe root= arguments)
    import_file(src, tmp_path / "r.tdp", kernel_release="6.1.0-56-amd64")
    assert scan_for_kernel_addresses(tmp_path / "r.tdp") == []


def test_scan_finds_an_address_when_there_is_one(trace, tmp_path):
    """The scan above can fail: a capture with a raw root pointer left in a marker is caught."""
    from smallcaps import _frame

    from tdptrace.capture.schema import MARKERS

    import_dir = tmp_path / "c.tdp"
    assert main(["import", str(trace), "-o", str(import_dir), "-q"]) == 0
    assert scan_for_kernel_addresses(import_dir) == []
    # one more chunk written behind the writer's back, as a careless tool would
    rows = [{"ts": 1, "event": "x", "detail": "root=0xffff8946134bab80"},
            {"ts": 2, "event": "y", "detail": "o=18446612685283207808"}]
    tbl = pa.Table.from_pandas(_frame("markers", rows, 0), schema=MARKERS, preserve_index=False)
    (import_dir / "markers").mkdir(exist_ok=True)
    pq.write_table(tbl, import_dir / "markers" / "part-000009.parquet")
    assert scan_for_kernel_addresses(import_dir) == ["markers.detail: root=0xffff8946134bab80"]
    tbl = pa.Table.from_pandas(_frame("markers", rows[1:], 0), schema=MARKERS, preserve_index=False)
    pq.write_table(tbl, import_dir / "markers" / "part-000009.parquet")
    assert scan_for_kernel_addresses(import_dir) == ["markers.detail: o=18446612685283207808"]


@pytest.mark.live
def test_recorded_capture_holds_no_kernel_addresses(tmp_path):
    if os.geteuid() != 0 or not os.access("/dev/kvm", os.W_OK):
        pytest.skip("recording needs root and /dev/kvm")
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.skip("bcc (python3-bpfcc) is not installed")
    cap = tmp_path / "live.tdp"
    p = subprocess.run(TDPTRACE + ["record", "-q", "--sptes", "--stacks", "-o", str(cap), "--", *TDPTRACE,
                                   "exercise", "--mib", "16"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert scan_for_kernel_addresses(cap) == []


# ---- file and directory modes -----------------------------------------------------------------------------

def _modes(cap: Path) -> set[tuple[str, str]]:
    out = {("dir", oct(cap.stat().st_mode & 0o777))}
    for p in cap.rglob("*"):
        out.add(("dir" if p.is_dir() else "file", oct(p.stat().st_mode & 0o777)))
    return out


def test_capture_modes_ignore_a_permissive_umask(trace, tmp_path):
    cap = tmp_path / "c.tdp"
    p = subprocess.run(TDPTRACE + ["import", str(trace), "-o", str(cap), "-q"], capture_output=True, text=True,
                       preexec_fn=lambda: os.umask(0), timeout=120)
    assert p.returncode == 0, p.stderr
    assert _modes(cap) == {("dir", "0o700"), ("file", "0o600")}
    # --force replaces it with the same modes
    p = subprocess.run(TDPTRACE + ["import", str(trace), "-o", str(cap), "-q", "--force"], capture_output=True,
                       text=True, preexec_fn=lambda: os.umask(0), timeout=120)
    assert p.returncode == 0, p.stderr
    assert _modes(cap) == {("dir", "0o700"), ("file", "0o600")}


@pytest.mark.live
def test_recorded_capture_modes(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("recording needs root")
    cap = tmp_path / "m.tdp"
    p = subprocess.run(TDPTRACE + ["record", "-q", "-d", "1s", "-o", str(cap)], capture_output=True, text=True,
                       preexec_fn=lambda: os.umask(0), timeout=120)
    assert p.returncode == 0, p.stderr
    assert _modes(cap) == {("dir", "0o700"), ("file", "0o600")}
