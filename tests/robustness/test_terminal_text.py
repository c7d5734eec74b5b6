"""Nothing printed carries a raw control character from the data: task names, kernel log lines and the trace
lines quoted in warnings may hold escape sequences (a window title change, a screen clear); every command
shows them escaped (\\x1b), while rich's own colours still reach a real terminal."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from smallcaps import span, write_capture
from tracegen import Trace, leaf4k, nonleaf

from tdptrace.cli import main
from tdptrace.textsafe import SafeStream, clean, clean_lines, installed

TITLE = "\x1b]0;owned\x07"
CLEAR = "\x1b[2J\x1b[H"
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\r")
TDPTRACE = [sys.executable, "-m", "tdptrace.cli"]


def _no_raw(text: str) -> None:
    for c in RAW:
        assert c not in text, repr(text[max(0, text.find(c) - 40):text.find(c) + 40])


@pytest.fixture
def cap(tmp_path):
    comm = f"q{TITLE}{CLEAR}\u202e\r"[:30]
    return write_capture(tmp_path / "esc.tdp",
                         spans=[span(0, 1_000, 5_000_000, comm=comm, caller=f"f{CLEAR}", vm=f"v{TITLE}")],
                         sptes=[{"ts": 2_000, "gfn": 1, "old_spte": leaf4k(1), "new_spte": 0, "comm": comm}],
                         markers=[{"ts": 3_000, "event": f"e{TITLE}", "detail": f"d{CLEAR}", "comm": comm}])


@pytest.mark.parametrize("args", [["summary"], ["summary", "--json"], ["triage"], ["triage", "--json"]])
def test_capture_text_is_escaped_in_every_rendering(cap, capsys, args):
    capsys.readouterr()
    assert main([args[0], str(cap), *args[1:]]) == 0
    out = capsys.readouterr()
    _no_raw(out.out + out.err)
    if args[0] == "triage":  # the task name is shown, escaped, not dropped
        assert "\\x1b" in out.out or "\\u001b" in out.out


def test_kernel_log_lines_are_escaped(cap, tmp_path, capsys):
    log = tmp_path / "dmesg.txt"
    log.write_text(f"[    0.000010] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [q{TITLE}:100]\n"
                   f"[    0.000020] rcu: INFO: rcu_sched self-detected stall on CPU {CLEAR}\n")
    capsys.readouterr()
    assert main(["triage", str(cap), "--dmesg", str(log)]) in (0, 1)  # 1: the log reports a lockup
    out = capsys.readouterr()
    assert "error" not in out.err
    _no_raw(out.out + out.err)
    assert "soft lockup" in out.out


def test_the_unread_lines_warning_is_escaped(tmp_path, capsys):
    src = tmp_path / "t.txt"
    src.write_text(Trace().get_page(0, 1).spte(0, 2, 0, nonleaf(5)).spte(1, 1, 0, leaf4k(1))
                   .raw(f"garbage {TITLE}{CLEAR}").text())
    capsys.readouterr()
    assert main(["import", str(src), "-o", str(tmp_path / "c.tdp")]) == 0
    out = capsys.readouterr()
    _no_raw(out.out + out.err)
    assert "could not be read" in out.out + out.err and "\\x1b]0;owned" in out.out + out.err


def test_an_error_line_with_a_hostile_path_is_escaped(tmp_path, capsys):
    capsys.readouterr()
    assert main(["summary", str(tmp_path / f"x{TITLE}.tdp")]) != 0
    err = capsys.readouterr().err
    _no_raw(err)
    assert len(err.strip().splitlines()) == 1


def test_rich_keeps_its_colours_and_cleans_the_data():
    from rich.console import Console
    from rich.text import Text

    buf = io.StringIO()
    with installed():
        con = Console(file=SafeStream(buf), force_terminal=True, color_system="standard", width=80)
        con.print(Text(f"task {TITLE}{CLEAR}", style="bold red"))
    out = buf.getvalue()
    assert "\x1b[1;31m" in out  # rich's own style still reaches the terminal
    assert "\\x1b]0;owned" in out and "\\x1b[2J" in out and "\x1b]" not in out and "\x1b[2J" not in out


def test_clean_escapes_only_what_is_not_printable():
    assert clean("qemu-system-x86 ok ✓ ümlaut") == "qemu-system-x86 ok ✓ ümlaut"
    assert clean(f"a{TITLE}b") == "a\\x1b]0;owned\\x07b"
    assert clean("a\nb\tc") == "a\\nb\\tc" and clean_lines("a\nb\tc") == "a\nb\tc"
    assert clean("\u202eevil\u200b\x9b") == "\\u202eevil\\u200b\\x9b"


def test_the_real_process_writes_nothing_raw(cap):
    p = subprocess.run(TDPTRACE + ["triage", str(cap)], capture_output=True, timeout=120,
                       env=os.environ | {"COLUMNS": "100"})
    assert p.returncode == 0
    for c in (b"\x1b]", b"\x1b[2J", b"\x07", b"\r"):
        assert c not in p.stdout + p.stderr
