"""`tdptrace export CAPTURE -o FILE.perfetto-trace [--dmesg FILE]`: the capture as a Perfetto timeline."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)


def export_cmd(
    capture: Annotated[Path, typer.Argument(help="Capture directory (NAME.tdp).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Perfetto trace to write (NAME.perfetto-trace).")],
    dmesg: Annotated[Optional[str], typer.Option("--dmesg", help="Kernel log whose stall/lockup reports become "
                                                 "instants on the timeline; - reads stdin.")] = None,
    dmesg_tz: Annotated[Optional[str], typer.Option("--dmesg-tz", help="UTC offset of dmesg -T stamps.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file at -o.")] = False,
) -> None:
    """Write a Perfetto protobuf trace: a track per task with every zap span as a slice, holds and yields
    under it, counters for retained tables and zaps per level, kernel log reports and waiters. Open it at
    the Perfetto UI (Open trace file) or with its trace processor."""
    import tdptrace
    from tdptrace.oncall.kernel_log import parse_dmesg, parse_utc_offset, read_kernel_log
    from tdptrace.oncall.timeline import export

    tz = parse_utc_offset(dmesg_tz) if dmesg_tz else None
    reports = parse_dmesg(read_kernel_log(dmesg), tz=tz) if dmesg is not None else None
    st = export(tdptrace.open(capture), output, reports, force=force)
    typer.echo(f"{output}: {st.span_slices} spans, {st.hold_slices} holds, {st.yield_slices} yields, "
               f"{st.wait_slices} waits, {st.counter_points} counter points, {st.log_instants} kernel log reports "
               f"({st.bytes // 1024} KiB)")
