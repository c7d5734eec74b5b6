"""`tdptrace triage CAPTURE [--threshold 10ms] [--dmesg FILE|-] [--json]`: the on-call answer in one screen.

Exit status: 0 = no stretch without a yield above the threshold, 1 = risk found, 2 = cannot tell.
"""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tdptrace.errors import BadInput
from tdptrace.options import command, duration_option


def register(app: typer.Typer) -> None:
    command(app, "triage", "The on-call verdict: mmu_lock held too long without a yield?",
            ("tdptrace triage host42.tdp", "verdict at the 10ms threshold, then the evidence"),
            ("tdptrace triage host42.tdp -t 20ms --dmesg dmesg.txt --json",
             "with the kernel log's stall reports lined up, as JSON"))(triage_cmd)


def triage_cmd(
    capture: Annotated[Path, typer.Argument(metavar="CAPTURE", help="Capture directory (NAME.tdp).")],
    threshold: Annotated[int, duration_option("-t", "--threshold", help="Longest acceptable hold of mmu_lock "
                                              "without a yield.", above_zero=True)] = "10ms",
    dmesg: Annotated[Optional[str], typer.Option("--dmesg", metavar="FILE",
                                                 help="Kernel log (dmesg or dmesg -T output) to line "
                                                 "up with the spans; - reads stdin.")] = None,
    dmesg_tz: Annotated[Optional[str], typer.Option("--dmesg-tz", metavar="OFFSET",
                                                    help="UTC offset of dmesg -T stamps "
                                                    "(default: this machine's time zone), e.g. UTC, +01:00.")]
    = None,
    top: Annotated[int, typer.Option("--top", metavar="N", help="How many of the longest stretches to show.")] = 5,
    limits: Annotated[Optional[str], typer.Option("--limits", metavar="LIMITS", help="The host's limits "
                                                  "where the capture has none (imports): "
                                                  "rcu_cpu_stall_timeout=S,watchdog_thresh=S,hz=N.")] = None,
    guest_size: Annotated[Optional[str], typer.Option("--guest-size", metavar="SIZE", help="Also model each hold "
                                                      "on a guest of this size (simulator), e.g. 512G.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the triage as one JSON object.")] = False,
) -> None:
    """Verdict first, then the longest stretches without a yield, zap levels, retained tables, kernel log.

    Exit status: 0 = no stretch above the threshold, 1 = risk found (a stretch above it, or a kernel
    stall report during a zap), 2 = cannot tell (bad input, or a capture without zap spans).
    """
    import tdptrace
    from tdptrace.metrics.limits import parse_given, resolve
    from tdptrace.oncall.extrapolate import parse_guest_size
    from tdptrace.oncall.kernel_log import (
        parse_dmesg,
        parse_utc_offset,
        read_kernel_log,
    )
    from tdptrace.oncall.triage import triage
    threshold_ns = threshold
    if top < 1:
        raise BadInput(f"--top {top} must be at least 1", "give e.g. --top 5")
    given = parse_given(limits)
    if guest_size is not None:
        parse_guest_size(guest_size)
    tz = parse_utc_offset(dmesg_tz) if dmesg_tz else None
    cap = tdptrace.open(capture)
    hz = resolve((cap.meta.host or {}).get("limits"), given).hz
    reports = parse_dmesg(read_kernel_log(dmesg), tz=tz, **({"hz": hz} if hz else {})) if dmesg is not None else None
    t = triage(cap, threshold_ns, reports, top=top, limits=given, guest_size=guest_size)
    if as_json:
        d = t.to_dict()
        d["capture"] = str(capture)
        d["dmesg_reports_found"] = None if reports is None else len(reports)
        typer.echo(json.dumps(d, indent=1))
    else:
        from tdptrace.oncall.triage_text import render

        render(t, dmesg_given=reports is not None)
    raise typer.Exit(code=t.exit_code)
