"""`tdptrace summary A.tdp B.tdp DIR/ ...`: one row per capture plus a fleet total (JSON keyed by capture)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from tdptrace.metrics.summary import summarize


def summarize_many(paths: list[Path], as_json: bool) -> None:
    """Summaries of every capture, then the total over them (per host too)."""
    import tdptrace
    from tdptrace.metrics.fleet import fleet_total

    summaries = {str(p): summarize(tdptrace.open(p)) for p in paths}
    fleet = fleet_total(summaries)
    if as_json:
        typer.echo(json.dumps({"captures": summaries, "fleet": fleet}, indent=1))
        return
    render_many(summaries, fleet)


def _n(v: Any) -> str:
    return "-" if v is None else str(v)


def _ms(ns: Any) -> str:
    return "-" if ns is None else f"{ns / 1e6:.1f}"


def render_many(summaries: dict[str, dict[str, Any]], fleet: dict[str, Any]) -> None:
    """A table of captures (80 columns) with the fleet total as the last row; lost events below it."""
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title=f"{fleet['captures']} captures from {len(fleet['hosts'])} host(s)", title_justify="left",
              box=None, padding=(0, 1, 0, 0), header_style="bold")
    # leaf / non-leaf zaps; zap spans; yield points; longest hold without a yield (ms); page tables
    # allocated (PT+) and freed (PT-); retained non-leaf tables at the end.
    for c, w in (("capture", 18), ("host", 10), ("leaf", None), ("nonleaf", None), ("spans", None),
                 ("ylds", None), ("gap ms", None), ("PT+", None), ("PT-", None), ("ret", None)):
        t.add_column(c, justify="left" if w else "right", max_width=w, no_wrap=True, overflow="ellipsis")

    def row(name: str, host: str, zt: dict, y: dict, pt: dict, retained: Any, **kw: Any) -> None:
        t.add_row(name, host, _n(zt.get("leaf", 0)), _n(zt.get("nonleaf", 0)), _n(y.get("spans")),
                  _n(y.get("count")), _ms(y.get("max_gap_ns")), _n(pt.get("allocated")), _n(pt.get("freed")),
                  _n(retained), **kw)

    lost = []
    for path, s in summaries.items():
        r = s["page_tables"].get("retained_nonleaf")
        row(Path(path).name, str(s["capture"].get("host") or "unknown"), s.get("zaps_total", {}), s["yields"],
            s["page_tables"], r["at_end"] if r else None)
        if s["lost_events"]:
            lost.append(f"{path}: {s['lost_events']}")
    f = fleet
    row("fleet total", ",".join(f["hosts"]), f["zaps_total"], f["yields"], f["page_tables"],
        f["page_tables"]["retained_nonleaf_at_end"], style="bold")
    con.print(t)
    con.print(f"lost events: {f['lost_events']}" + (" (" + "; ".join(lost) + ")" if lost else ""))
