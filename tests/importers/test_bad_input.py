"""Bad input to `tdptrace import` / `summary`: one clear line on stderr, non-zero exit, never a traceback."""
from __future__ import annotations

import gzip
import lzma
import os
import subprocess
import sys

import pytest
from tracegen import Trace, leaf4k

from tdptrace.metrics.summary import summarize

TDP = [sys.executable, "-m", "tdptrace.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(TDP + list(args), capture_output=True, text=True, env=os.environ | {"COLUMNS": "100"})


def one_line_error(p: subprocess.CompletedProcess, needle: str) -> None:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert needle in lines[0], lines[0]


def test_empty_file(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("")
    one_line_error(run("import", str(f), "-o", str(tmp_path / "x.tdp")), "is empty")


def test_binary_garbage(tmp_path):
    f = tmp_path / "garbage.bin"
    f.write_bytes(bytes(range(256)) * 64)
    one_line_error(run("import", str(f), "-o", str(tmp_path / "x.tdp")), "binary")


def test_unknown_text_format(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello\nthis is not a trace\n")
    one_line_error(run("import", str(f), "-o", str(tmp_path / "x.tdp")), "not a trace format")


def test_missing_file(tmp_path):
    one_line_error(run("import", str(tmp_path / "nope.txt"), "-o", str(tmp_path / "x.tdp")), "no such file")


def test_truncated_last_line_imports_the_rest_and_fails(tmp_path):
    text = Trace().spte(1, 1, leaf4k(1), 0).spte(2, 1, leaf4k(2), 0).text()
    f = tmp_path / "cut.txt"
    f.write_text(text[:-20])  # cut inside the second event line
    p = run("import", str(f), "-o", str(tmp_path / "x.tdp"))
    one_line_error(p, "truncated")
    assert p.returncode == 1
    import tdptrace

    s = summarize(tdptrace.open(tmp_path / "x.tdp"))
    assert s["zaps_by_level"] == {"1": {"leaf": 1, "nonleaf": 0}}
    assert any("truncated" in n for n in s["notes"])


def test_damaged_xz(tmp_path):
    data = lzma.compress(Trace().spte(1, 1, leaf4k(1), 0).text().encode() * 50)
    f = tmp_path / "t.txt.xz"
    f.write_bytes(data[: len(data) // 2])
    one_line_error(run("import", str(f), "-o", str(tmp_path / "x.tdp")), "decompress")


def test_gzip_input(tmp_path):
    f = tmp_path / "t.txt.gz"
    f.write_bytes(gzip.compress(Trace().spte(1, 1, leaf4k(1), 0).text().encode()))
    p = run("import", str(f), "-o", str(tmp_path / "x.tdp"), "--kernel", "6.1.0")
    assert p.returncode == 0, p.stderr


def test_bad_kernel_option(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(Trace().spte(1, 1, leaf4k(1), 0).text())
    one_line_error(run("import", str(f), "-o", str(tmp_path / "x.tdp"), "--kernel", "banana"), "not a kernel release")


def test_output_exists(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(Trace().spte(1, 1, leaf4k(1), 0).text())
    assert run("import", str(f), "-o", str(tmp_path / "x.tdp")).returncode == 0
    one_line_error(run("import", str(f), "-o", str(tmp_path / "x.tdp")), "already exists")


@pytest.mark.parametrize("target", ["missing", "file"])
def test_summary_of_non_capture(tmp_path, target):
    p = tmp_path / "x"
    if target == "file":
        p.write_text("x")
    one_line_error(run("summary", str(p)), "capture" if target == "missing" else "not a capture directory")


def test_damaged_line_body(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(Trace().raw("            qemu-1       [000] ...1.     1.000010: kvm_tdp_mmu_spte_changed: "
                             "as id 0 gfn zz level").text())
    one_line_error(run("import", str(f), "-o", str(tmp_path / "x.tdp")), "cannot read a kvm_tdp_mmu_spte_changed")
