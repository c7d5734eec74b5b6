"""The `summary` object rendered for a person at a terminal: rich tables under 100 columns."""
from __future__ import annotations

from typing import Any

from tdptrace.kernel.spte import LEVEL_SIZE
from tdptrace.metrics.summary import page_table_lines


def _us(ns: Any) -> str:
    return "-" if ns is None else f"{ns / 1000:,.0f}"


def render(s: dict[str, Any]) -> None:
    """Print a summary dict as rich tables (under 80 columns)."""
    from rich.console import Console
    from rich.table import Table

    con = Console(width=min(Console().width, 100))
    cap = s["capture"]
    con.print(f"[bold]{cap['path']}[/] ({cap['source'].get('kind')}"
              f"{', ' + cap['kernel'].get('release') if cap['kernel'].get('release') else ''}, {cap['status']})")
    t = Table(title="SPTE zaps by level", title_justify="left", caption=f"from {s['zaps_source']}",
              caption_justify="left")
    t.add_column("level", justify="right")
    t.add_column("size", justify="right")
    t.add_column("leaf", justify="right")
    t.add_column("non-leaf", justify="right")
    for lv, v in s["zaps_by_level"].items():
        t.add_row(lv, LEVEL_SIZE.get(int(lv), "?"), f"{v['leaf']:,}", f"{v['nonleaf']:,}")
    con.print(t if s["zaps_by_level"] else "no zaps")
    y = s["yields"]
    if s["spans"]:
        t = Table(title=f"Zap spans: {y['spans']}, yield points {y['count']}, longest hold without a yield "
                        f"{_us(y['max_gap_ns'])} us", title_justify="left")
        for c, j in (("#", "right"), ("function", "left"), ("start s", "right"), ("dur us", "right"),
                     ("yields", "right"), ("max gap us", "right"), ("retained", "right")):
            t.add_column(c, justify=j)
        for i, sp in enumerate(s["spans"][:40]):
            name = ("  " * sp["depth"]) + sp["function"]
            t.add_row(str(i), name, f"{sp['start_ns'] / 1e9:.6f}", _us(sp["duration_ns"]), str(sp["yields"]),
                      _us(sp["max_gap_ns"]), "-" if sp["retained_nonleaf_after"] is None
                      else str(sp["retained_nonleaf_after"]))
        con.print(t)
        if len(s["spans"]) > 40:
            con.print(f"... {len(s['spans']) - 40} more spans (use --json for all)")
    else:
        con.print(f"[yellow]spans: {s.get('spans_unavailable')}[/]")
    for line in page_table_lines(s):
        con.print(line, markup=False)
    w = s.get("waiters") or {}
    if w.get("recorded"):
        from tdptrace.oncall.triage_text import waiters_text

        con.print("waiters: " + (waiters_text(w.get("all")) or "none"), markup=False)
    lost = s["lost_events"]
    con.print(f"lost events: {lost}" if not lost else f"[red]lost events: {lost} {s['lost_events_per_cpu']}[/]")
    if s.get("unknown_events"):
        con.print("unknown events: " + ", ".join(f"{k} ({v})" for k, v in s["unknown_events"].items()))
    for n in s.get("notes", []):
        con.print(f"[yellow]note:[/] {n}")
