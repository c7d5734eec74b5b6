"""`tdptrace report CAPTURE -o report.html`: one self-contained HTML file (verdict, tables, figures)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tdptrace.errors import BadInput


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)


def report_cmd(
    capture: Annotated[Path, typer.Argument(help="Capture directory (NAME.tdp).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")],
    threshold: Annotated[str, typer.Option("--threshold", "-t", help="Longest acceptable hold of mmu_lock "
                                           "without a yield.")] = "10ms",
    dmesg: Annotated[Optional[str], typer.Option("--dmesg", help="Kernel log to line up with the spans; - = stdin.")]
    = None,
    dmesg_tz: Annotated[Optional[str], typer.Option("--dmesg-tz", help="UTC offset of dmesg -T stamps.")] = None,
) -> None:
    """Write the triage verdict, summary tables and plots into one HTML file that needs no network."""
    import tdptrace
    from tdptrace.oncall.kernel_log import (
        parse_dmesg,
        parse_utc_offset,
        read_kernel_log,
    )
    from tdptrace.oncall.report import render_html
    from tdptrace.units import parse_duration

    threshold_ns = parse_duration(threshold)
    if output.is_dir():
        raise BadInput(f"{output} is a directory", "give a file name, e.g. -o report.html")
    if not output.parent.exists():
        raise BadInput(f"directory {output.parent} does not exist", "create it first or choose another -o")
    tz = parse_utc_offset(dmesg_tz) if dmesg_tz else None
    reports = parse_dmesg(read_kernel_log(dmesg), tz=tz) if dmesg is not None else None
    text = render_html(tdptrace.open(capture), threshold_ns, reports)
    from tdptrace.outputs import write_file

    write_file(output, text.encode("utf-8"))
    typer.echo(f"{output} ({len(text) // 1024} KiB)")
