"""`tdptrace compare A B [-o DIR [--force]] [--json]`: two captures side by side, with the direction of each
change."""

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tdptrace.options import command, duration_option, force_option, refuse_existing


def register(app: typer.Typer) -> None:
    command(app, "compare", "Two captures side by side, with the direction of each change.",
            ("tdptrace compare before.tdp after.tdp", "table of every figure, B against A"),
            ("tdptrace compare k61.tdp k612.tdp -o cmp --json", "as JSON, with overlaid figures in cmp/"))(
        compare_cmd)


def fmt_value(v: Any, unit: str) -> str:
    """A metric value for the table, in its unit."""
    from tdptrace.units import fmt_ns

    if v is None:
        return "-"
    if unit == "ns":
        return fmt_ns(v)
    if unit == "bytes":
        return f"{v / 1024:,.0f} KiB"
    if unit in ("count", "tables"):
        return f"{v:,.0f}"
    return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def fmt_change(r: dict[str, Any]) -> str:
    """'x0.08 lower (better)'."""
    if r["direction"] in ("n/a", None):
        return "n/a"
    if r["direction"] == "same":
        return "same"
    ratio = f"x{r['ratio']:.3g} " if r["ratio"] is not None else "new "
    tail = f" ({r['verdict']})" if r["verdict"] in ("better", "worse") else ""
    return f"{ratio}{r['direction']}{tail}"


# Rows shown in the text table (the JSON has them all).
TEXT_METRICS = ("zaps count", "zaps per GiB unmapped", "GiB unmapped by leaf zaps", "operations",
                "yields_in_longest_operation", "yields_per_operation", "yields_per_second", "gap_p50_ns",
                "gap_p99_ns", "gap_max_ns",
                "longest_operation_ns", "retained non-leaf peak", "retained non-leaf peak bytes",
                "retained non-leaf at end", "lost events")
METRIC_NAMES = {"operations": "operations", "yields_per_operation": "yields per operation",
                "yields_in_longest_operation": "yields in the longest operation",
                "yields_per_second": "yields per s of zap time", "gap_p50_ns": "gap p50", "gap_p99_ns": "gap p99",
                "gap_max_ns": "gap max", "longest_operation_ns": "longest operation"}


def render(c) -> None:
    """Print the comparison as one rich table plus the headline sentences."""
    from rich.console import Console
    from rich.table import Table

    con = Console(width=100, highlight=False)
    for h in c.headlines:
        con.print(f"[bold]{h}[/]")
    t = Table(title=f"A = {c.a_label}   B = {c.b_label}", title_justify="left")
    for col, j in (("scope", "left"), ("metric", "left"), ("A", "right"), ("B", "right"), ("B vs A", "left")):
        t.add_column(col, justify=j)
    last_scope = None
    for r in c.rows.astype(object).where(c.rows.notna(), None).to_dict(orient="records"):
        if r["metric"] not in TEXT_METRICS:
            continue
        scope = r["scope"] if r["scope"] != last_scope else ""
        if scope and last_scope is not None:
            t.add_section()
        last_scope = r["scope"]
        style = {"better": "green", "worse": "red"}.get(r["verdict"], "")
        t.add_row(scope, METRIC_NAMES.get(r["metric"], r["metric"]), fmt_value(r["a"], r["unit"]),
                  fmt_value(r["b"], r["unit"]), f"[{style}]{fmt_change(r)}[/]" if style else fmt_change(r))
    con.print(t)
    for n in c.notes:
        con.print(f"[yellow]note:[/] {n}")


def compare_cmd(
    a: Annotated[Path, typer.Argument(metavar="A", help="Capture A (before).")],
    b: Annotated[Path, typer.Argument(metavar="B", help="Capture B (after).")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="DIR", help="Directory for overlaid "
                                                   "PNG plots.")] = None,
    threshold: Annotated[int, duration_option("-t", "--threshold", help="Threshold marked on the gap plots.",
                                              above_zero=True)] = "10ms",
    force: Annotated[bool, force_option("figures of the same names in DIR")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as one JSON object.")] = False,
) -> None:
    """Zaps per level (per GiB unmapped, per span), gap quantiles, yields per operation, retained tables."""
    import tdptrace
    from tdptrace.oncall.compare import compare
    threshold_ns = threshold
    if output is not None:
        from tdptrace.oncall.plots import FIGURES

        refuse_existing([output / f"{name}.png" for name in FIGURES], force)
    ca, cb = tdptrace.open(a), tdptrace.open(b)
    c = compare(ca, cb)
    paths: list[Path] = []
    if output is not None:
        from tdptrace.oncall.plots import save_figures
        from tdptrace.outputs import output_dir

        paths = save_figures({c.a_label: ca, c.b_label: cb}, output_dir(output), threshold_ns)
    if as_json:
        d = c.to_dict()
        d["plots"] = [str(p) for p in paths]
        d["wrote"] = d["plots"]
        typer.echo(json.dumps(d, indent=1))
        return
    render(c)
    for p in paths:
        typer.echo(str(p))
