"""`tdptrace export CAPTURE -o FILE.perfetto-trace [--dmesg FILE] [--force] [--json]`: the capture as a Perfetto
timeline."""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from tdptrace.options import command, force_option, refuse_existing, writer_json


def register(app: typer.Typer) -> None:
    command(app, "export", "The capture as a Perfetto timeline (spans, holds, yields, counters, waiters).",
            ("tdptrace export host42.tdp -o host42.perfetto-trace", "open it in the Perfetto UI"),
            ("tdptrace export host42.tdp -o host42.perfetto-trace --dmesg dmesg.txt --force",
             "stall reports as instants on the same clock, replacing an earlier file"))(export_cmd)


def export_cmd(
    capture: Annotated[Path, typer.Argument(metavar="CAPTURE", help="Capture directory (NAME.tdp).")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="FILE", help="Perfetto trace to write "
                                         "(NAME.perfetto-trace).")],
    dmesg: Annotated[Optional[str], typer.Option("--dmesg", metavar="FILE", help="Kernel log whose stall/lockup "
                                                 "reports become instants on the timeline; - reads stdin.")] = None,
    dmesg_tz: Annotated[Optional[str], typer.Option("--dmesg-tz", metavar="OFFSET", help="UTC offset of dmesg -T "
                                                    "stamps.")] = None,
    force: Annotated[bool, force_option("the file at -o")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the file written and what it holds as one JSON "
                                          "object.")] = False,
) -> None:
    """Write a Perfetto protobuf trace: a track per task with every zap span as a slice, holds and yields
    under it, counters for retained tables and zaps per level, kernel log reports and waiters. Open it at
    the Perfetto UI (Open trace file) or with its trace processor."""
    import tdptrace
    from tdptrace.oncall.kernel_log import parse_dmesg, parse_utc_offset, read_kernel_log
    from tdptrace.oncall.timeline import export

    refuse_existing([output], force)
    tz = parse_utc_offset(dmesg_tz) if dmesg_tz else None
    reports = parse_dmesg(read_kernel_log(dmesg), tz=tz) if dmesg is not None else None
    st = export(tdptrace.open(capture), output, reports, force=force)
    if as_json:
        figures = {k: v for k, v in asdict(st).items() if k != "path"}
        typer.echo(json.dumps(writer_json([output], capture=str(capture), **figures), indent=1))
        return
    typer.echo(f"{output}: {st.span_slices} spans, {st.hold_slices} holds, {st.yield_slices} yields, "
               f"{st.wait_slices} waits, {st.counter_points} counter points, {st.log_instants} kernel log reports "
               f"({st.bytes // 1024} KiB)")
