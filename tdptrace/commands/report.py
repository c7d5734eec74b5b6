"""`tdptrace report CAPTURE -o report.html [--force] [--json]`: one self-contained HTML file (verdict, tables,
figures)."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tdptrace.errors import BadInput
from tdptrace.options import command, duration_option, force_option, refuse_existing, writer_json


def register(app: typer.Typer) -> None:
    command(app, "report", "One self-contained HTML file: verdict, tables, figures.",
            ("tdptrace report host42.tdp -o host42.html", "verdict, tables and figures in one HTML file"),
            ("tdptrace report host42.tdp -o host42.html --dmesg dmesg.txt --force",
             "with the kernel log, replacing an earlier report"))(report_cmd)


def report_cmd(
    capture: Annotated[Path, typer.Argument(metavar="CAPTURE", help="Capture directory (NAME.tdp).")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="FILE", help="HTML file to write.")],
    threshold: Annotated[int, duration_option("-t", "--threshold", help="Longest acceptable hold of mmu_lock "
                                              "without a yield.", above_zero=True)] = "10ms",
    dmesg: Annotated[Optional[str], typer.Option("--dmesg", metavar="FILE", help="Kernel log to line up with the "
                                                 "spans; - = stdin.")] = None,
    dmesg_tz: Annotated[Optional[str], typer.Option("--dmesg-tz", metavar="OFFSET", help="UTC offset of dmesg -T "
                                                    "stamps.")] = None,
    limits: Annotated[Optional[str], typer.Option("--limits", metavar="LIMITS", help="The host's limits "
                                                  "where the capture has none (imports): "
                                                  "rcu_cpu_stall_timeout=S,watchdog_thresh=S,hz=N.")] = None,
    guest_size: Annotated[Optional[str], typer.Option("--guest-size", metavar="SIZE", help="Also model each hold "
                                                      "on a guest of this size (simulator), e.g. 512G.")] = None,
    force: Annotated[bool, force_option("the file at -o")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the file written as one JSON object.")] = False,
) -> None:
    """Write the triage verdict, summary tables and plots into one HTML file that needs no network."""
    import tdptrace
    from tdptrace.metrics.limits import parse_given
    from tdptrace.oncall.extrapolate import parse_guest_size
    from tdptrace.oncall.kernel_log import (
        parse_dmesg,
        parse_utc_offset,
        read_kernel_log,
    )
    from tdptrace.oncall.report import render_html
    threshold_ns = threshold
    if output.is_dir():
        raise BadInput(f"{output} is a directory", "give a file name, e.g. -o report.html")
    refuse_existing([output], force)
    if not output.parent.exists():
        raise BadInput(f"directory {output.parent} does not exist", "create it first or choose another -o")
    given = parse_given(limits)
    if guest_size is not None:
        parse_guest_size(guest_size)
    tz = parse_utc_offset(dmesg_tz) if dmesg_tz else None
    reports = parse_dmesg(read_kernel_log(dmesg), tz=tz) if dmesg is not None else None
    text = render_html(tdptrace.open(capture), threshold_ns, reports, limits=given, guest_size=guest_size)
    from tdptrace.outputs import write_file

    write_file(output, text.encode("utf-8"))
    if as_json:
        typer.echo(json.dumps(writer_json([output], capture=str(capture), bytes=len(text.encode("utf-8")),
                                          threshold_ns=threshold_ns), indent=1))
        return
    typer.echo(f"{output} ({len(text) // 1024} KiB)")
