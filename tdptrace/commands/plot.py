"""`tdptrace plot CAPTURE -o DIR`: PNG figures of zaps by level, gaps, span timeline, retained tables."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("plot")(plot_cmd)


def plot_cmd(
    capture: Annotated[Path, typer.Argument(help="Capture directory (NAME.tdp).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for the PNG files.")],
    threshold: Annotated[str, typer.Option("--threshold", "-t", help="Threshold marked on the gap plots.")]
    = "10ms",
) -> None:
    """Write zaps_by_level.png, gap_distribution.png, span_timeline.png and retained_tables.png."""
    import tdptrace
    from tdptrace.units import parse_duration

    threshold_ns = parse_duration(threshold)
    cap = tdptrace.open(capture)
    from tdptrace.outputs import output_dir

    outdir = output_dir(output)
    from tdptrace.oncall.plots import save_figures

    for p in save_figures(cap, outdir, threshold_ns):
        typer.echo(str(p))
