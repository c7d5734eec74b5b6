"""`tdptrace triage CAPTURE [--threshold 10ms] [--dmesg FILE|-] [--json]`: the on-call answer in one screen.

Exit status: 0 = no stretch without a yield above the threshold, 1 = risk found, 2 = cannot tell.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tdptrace.errors import BadInput


def register(app: typer.Typer) -> None:
    app.command("triage")(triage_cmd)


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
    from tdptrace.oncall.kernel_log import (
        parse_dmesg,
        parse_utc_offset,
        read_kernel_log,
    )
    from tdptrace.oncall.triage import triage
    from tdptrace.units import parse_duration

    threshold_ns = parse_duration(threshold)
    if top < 1:
        raise BadInput(f"--top {top} must be at least 1", "give e.g. --top 5")
    tz = parse_utc_offset(dmesg_tz) if dmesg_tz else None
    reports = parse_dmesg(read_kernel_log(dmesg), tz=tz) if dmesg is not None else None
    cap = tdptrace.open(capture)
    t = triage(cap, threshold_ns, reports, top=top)
    if as_json:
        d = t.to_dict()
        d["capture"] = str(capture)
        d["dmesg_reports_found"] = None if reports is None else len(reports)
        typer.echo(json.dumps(d, indent=1))
    else:
        from tdptrace.oncall.triage_text import render

        render(t, dmesg_given=reports is not None)
    raise typer.Exit(code=t.exit_code)
