"""`tdptrace plot CAPTURE -o DIR [--force] [--json]`: PNG figures of zaps by level, gaps, span timeline, retained
tables."""

import json
from pathlib import Path
from typing import Annotated

import typer

from tdptrace.options import command, duration_option, force_option, refuse_existing, writer_json


def register(app: typer.Typer) -> None:
    command(app, "plot", "PNG figures: zaps by level, gaps, span timeline, retained tables.",
            ("tdptrace plot host42.tdp -o figs", "four PNG files in figs/"),
            ("tdptrace plot host42.tdp -o figs -t 5ms --force", "threshold line at 5ms, replacing earlier figures"))(
        plot_cmd)


def plot_cmd(
    capture: Annotated[Path, typer.Argument(metavar="CAPTURE", help="Capture directory (NAME.tdp).")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="DIR", help="Directory for the PNG files "
                                         "(created if missing).")],
    threshold: Annotated[int, duration_option("-t", "--threshold", help="Threshold marked on the gap plots.",
                                              above_zero=True)] = "10ms",
    force: Annotated[bool, force_option("figures of the same names in DIR")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the files written as one JSON object.")] = False,
) -> None:
    """Write zaps_by_level.png, gap_distribution.png, span_timeline.png and retained_tables.png."""
    import tdptrace
    from tdptrace.oncall.plots import FIGURES, save_figures
    from tdptrace.outputs import output_dir

    refuse_existing([output / f"{name}.png" for name in FIGURES], force)
    cap = tdptrace.open(capture)
    paths = save_figures(cap, output_dir(output), threshold)
    if as_json:
        typer.echo(json.dumps(writer_json(paths, capture=str(capture), directory=str(output),
                                          threshold_ns=threshold), indent=1))
        return
    for p in paths:
        typer.echo(str(p))
