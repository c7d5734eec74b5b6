"""`tdptrace triage CAPTURE [--threshold 10ms] [--dmesg FILE|-] [--json]`: the on-call answer in one screen.

Exit status: 0 = no stretch without a yield above the threshold, 1 = risk found, 2 = cannot tell.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tdptrace.errors import BadInput


def register(app: typer.Typer) -> None:
    app.command("triage")(triage_cmd)


def read_dmesg_text(source: str) -> str:
    """Kernel log text from a file, or stdin for '-'."""
    if source == "-":
        return sys.stdin.read()
    p = Path(source)
    if not p.is_file():
        raise BadInput(f"{p}: no such kernel log file", "save it with: dmesg > dmesg.txt (or pass - for stdin)")
    data = p.read_bytes()
    if b"\x00" in data[:4096]:
        raise BadInput(f"{p} is binary, not kernel log text", "give the output of dmesg as text")
    return data.decode("utf-8", errors="replace")


def triage_cmd(
    capture: Annotated[Path, typer.Argument(help="Capture directory (NAME.tdp).")],
    threshold: Annotated[str, typer.Option("--threshold", "-t", help="Longest acceptable hold of mmu_lock "
                                           "without a yield, e.g. 10ms, 500us.")] = "10ms",
    dmesg: Annotated[Optional[str], typer.Option("--dmesg", help="Kernel log (dmesg or dmesg -T output) to line "
                                                 "up with the spans; - reads stdin.")] = None,
    dmesg_tz: Annotated[Optional[str], typer.Option("--dmesg-tz", help="UTC offset of dmesg -T stamps "
                                                    "(default: this machine's time zone), e.g. UTC, +01:00.")]
    = None,
    top: Annotated[int, typer.Option("--top", help="How many of the longest stretches to show.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the triage as one JSON object.")] = False,
) -> None:
    """Verdict first, then the longest stretches without a yield, zap levels, retained tables, kernel log.

    Exit status: 0 = no stretch above the threshold, 1 = risk found (a stretch above it, or a kernel
    stall report during a zap), 2 = cannot tell (bad input, or a capture without zap spans).
    """
    import tdptrace
    from tdptrace.dmesg import parse_dmesg, parse_utc_offset
    from tdptrace.durations import parse_duration
    from tdptrace.triage import triage

    threshold_ns = parse_duration(threshold)
    if top < 1:
        raise BadInput(f"--top {top} must be at least 1", "give e.g. --top 5")
    tz = parse_utc_offset(dmesg_tz) if dmesg_tz else None
    reports = parse_dmesg(read_dmesg_text(dmesg), tz=tz) if dmesg is not None else None
    cap = tdptrace.open(capture)
    t = triage(cap, threshold_ns, reports, top=top)
    if as_json:
        d = t.to_dict()
        d["capture"] = str(capture)
        d["dmesg_reports_found"] = None if reports is None else len(reports)
        typer.echo(json.dumps(d, indent=1))
    else:
        from tdptrace.commands.triage_text import render

        render(t, dmesg_given=reports is not None)
    raise typer.Exit(code=t.exit_code)
