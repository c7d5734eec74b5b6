"""Figures a person would rather look at than read, one plot_* function per figure.

Each plot_* takes one Capture or a {label: Capture} mapping (overlaid, for `compare`) and returns a
matplotlib Figure built with the object API (no pyplot state, renders headless with Agg).
`save_figures` writes them all as PNG. Empty inputs still give a readable figure that says what is missing.
"""
from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

from tdptrace.capture import Capture
from tdptrace.kernel.spte import PAGE_SIZE
from tdptrace.metrics.holds import HOLD, df_holds
from tdptrace.metrics.retained import df_retained
from tdptrace.metrics.zaps import zaps_by_level
from tdptrace.oncall.triage import (
    DEFAULT_THRESHOLD_NS,
    LEVEL_SIZE,
    capture_bounds,
    df_stretches,
)
from tdptrace.outputs import Dir, output_dir
from tdptrace.units import fmt_ns

Captures = Union[Capture, Mapping[str, Capture]]
FIGSIZE = (9.0, 4.8)
DPI = 110
LEAF_COLOR, NONLEAF_COLOR = "#4c72b0", "#dd8452"
CAPTURE_COLORS = ("#4c72b0", "#c44e52", "#55a868", "#8172b2")
FUNCTION_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
THRESHOLD_STYLE = {"color": "#c0392b", "linestyle": "--", "linewidth": 1.4}
AWAY_COLOR = "#b0b0b0"
ZOOM_FIGSIZE = (9.0, 7.6)

FIGURES = ("zaps_by_level", "gap_distribution", "span_timeline", "retained_tables")


def _labelled(caps: Captures) -> dict[str, Capture]:
    if isinstance(caps, Capture):
        return {caps.path.name.removesuffix(".tdp"): caps}
    return dict(caps)


def _new_figure() -> tuple[Figure, object]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11, color="#555555",
            transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _ms_formatter(v: float, _pos: int) -> str:
    if v >= 1000:
        return f"{v / 1000:g} s"
    if v >= 1:
        return f"{v:g} ms"
    return f"{v * 1000:g} us"


def plot_zaps_by_level(caps: Captures) -> Figure:
    """SPTE zaps per level, leaf and non-leaf side by side (log scale: leaf zaps outnumber the rest 1000:1)."""
    labelled = _labelled(caps)
    fig, ax = _new_figure()
    data = {lab: zaps_by_level(c)[0] for lab, c in labelled.items()}
    levels = sorted({int(lv) for z in data.values() for lv in z})
    if not levels:
        _empty(ax, "no SPTE zaps in this capture")
        ax.set_title("SPTE zaps by level")
        return fig
    x = np.arange(len(levels))
    bars = [(lab, kind) for lab in data for kind in ("leaf", "nonleaf")]
    width = 0.8 / len(bars)
    top = 1
    for i, (lab, kind) in enumerate(bars):
        vals = np.array([data[lab].get(str(lv), {}).get(kind, 0) for lv in levels])
        top = max(top, int(vals.max()))
        color = (LEAF_COLOR if kind == "leaf" else NONLEAF_COLOR)
        alpha = 1.0 - 0.45 * (list(data).index(lab))
        name = ("leaf" if kind == "leaf" else "non-leaf") + (f" ({lab})" if len(data) > 1 else "")
        hatch = None if list(data).index(lab) == 0 else "//"
        rects = ax.bar(x + (i - (len(bars) - 1) / 2) * width, np.where(vals > 0, vals, np.nan), width, color=color,
                       alpha=max(alpha, 0.35), hatch=hatch, edgecolor="white" if hatch is None else color,
                       label=name)
        ax.bar_label(rects, labels=[f"{v:,}" if v else "" for v in vals], fontsize=8, padding=2)
    ax.set_yscale("log")
    ax.set_ylim(0.7, top * 4)
    ax.set_xticks(x, [f"level {lv}\n({LEVEL_SIZE.get(lv, '?')} per SPTE)" for lv in levels])
    ax.set_xlabel("page-table level of the zapped SPTE (memory one SPTE maps)")
    ax.set_ylabel("SPTEs zapped (log scale)")
    ax.set_title("SPTE zaps by level: leaf (mappings) and non-leaf (page tables)")
    ax.legend(loc="upper right", frameon=False)
    ax.grid(axis="y", alpha=0.3, which="major")
    return fig


def _gaps_ms(cap: Capture) -> pd.DataFrame:
    """Stretches without a yield (nesting deduplicated) with gap in ms."""
    if cap.spans.empty:
        return pd.DataFrame({"function": [], "gap_ms": [], "start": [], "span_id": []})
    _, end = capture_bounds(cap)
    st = df_holds(cap, df_stretches(cap, end))
    return st.assign(gap_ms=st["gap_ns"].to_numpy(np.float64) / 1e6)


def plot_gap_distribution(caps: Captures, threshold_ns: int = DEFAULT_THRESHOLD_NS) -> Figure:
    """How long KVM held mmu_lock between yield points: histogram of gaps on a log axis, threshold marked."""
    labelled = _labelled(caps)
    fig, ax = _new_figure()
    ax.set_title("Time holding mmu_lock between yield points (gaps)")
    gaps = {lab: _gaps_ms(c) for lab, c in labelled.items()}
    allv = np.concatenate([g["gap_ms"].to_numpy() for g in gaps.values()]) if gaps else np.zeros(0)
    allv = allv[allv > 0]
    if not len(allv):
        _empty(ax, "no zap spans in this capture:\ngaps between yields cannot be measured")
        return fig
    thr_ms = threshold_ns / 1e6
    lo = min(allv.min(), thr_ms) / 1.5
    hi = max(allv.max(), thr_ms) * 1.5
    bins = np.logspace(np.log10(lo), np.log10(hi), 40)
    single = len(gaps) == 1
    for i, (lab, g) in enumerate(gaps.items()):
        v = g["gap_ms"].to_numpy()
        v = v[v > 0]
        if single:
            h = g[g["kind"] == HOLD]
            by_fn = [(fn, gg["gap_ms"].to_numpy()) for fn, gg in h.groupby("function")]
            away = g.loc[g["kind"] != HOLD, "gap_ms"].to_numpy()
            data = [b for _, b in by_fn] + ([away] if len(away) else [])
            # (labels must not start with "_": matplotlib hides those, and kernel names often do)
            labels = [f"{len(b)} gap{'' if len(b) == 1 else 's'} in {fn}" for fn, b in by_fn]
            colors = [CAPTURE_COLORS[j % len(CAPTURE_COLORS)] for j in range(len(by_fn))]
            if len(away):
                labels.append(f"{len(away)} incl. time away in an untraced yield (not holds)")
                colors.append(AWAY_COLOR)
            ax.hist(data, bins=bins, stacked=True, label=labels, color=colors, alpha=0.85)
        else:
            ax.hist(v, bins=bins, histtype="step", linewidth=2, color=CAPTURE_COLORS[i % len(CAPTURE_COLORS)],
                    label=f"{lab}: {len(v)} gaps, max {fmt_ns(v.max() * 1e6)}, {int((v > thr_ms).sum())} above "
                          "threshold")
    ax.axvline(thr_ms, **THRESHOLD_STYLE, label=f"threshold {_ms_formatter(thr_ms, 0)}")
    if single:
        holds = next(iter(gaps.values()))
        above = int(((holds["kind"] == HOLD) & (holds["gap_ms"] > thr_ms)).sum())
        ax.text(thr_ms * 1.08, 0.97, f"{above} above", transform=ax.get_xaxis_transform(), va="top",
                color=THRESHOLD_STYLE["color"], fontsize=9)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # room for the legend above the tallest bar
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_ms_formatter))
    ax.set_xlabel("gap: time from span start or previous yield to the next yield point or span end (log scale)")
    ax.set_ylabel("number of gaps")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper left", frameon=False, fontsize=9)
    ax.grid(alpha=0.3, which="major")
    return fig


def _time_origin(c: Capture, single: bool) -> tuple[int, str]:
    """The x origin (ns) and axis label: the capture clock itself for one capture (the time base of triage,
    the report and the kernel log), the first zap span for overlaid captures (so they line up)."""
    if single:
        return 0, "time (s, capture clock: a dmesg line at [T] is at T)"
    return int(c.spans["ts"].min()) if len(c.spans) else capture_bounds(c)[0], "time since the first zap span (s)"


def _zoom_panel(ax, c: Capture, sid: int, st: pd.DataFrame, threshold_ns: int) -> None:
    """One span close up: its holds as bars (red above the threshold, grey where they include time away),
    its yield points as ticks, in ms from the span's start."""
    sp = c.spans.set_index("span_id").loc[sid]
    _, t_end = capture_bounds(c)
    s0 = int(sp["ts"])
    s1 = int(t_end if pd.isna(sp["end_ts"]) else sp["end_ts"])
    dur = max(s1 - s0, 1)
    tid = int(sp["tid"])
    mine = st[(st["tid"] == tid) & (st["start"] < s1) & (st["start"] + st["gap_ns"] > s0)]
    for r in mine.itertuples():
        x = (r.start - s0) / 1e6
        w = r.gap_ns / 1e6
        color = AWAY_COLOR if r.kind != HOLD else (THRESHOLD_STYLE["color"] if r.gap_ns > threshold_ns
                                                    else CAPTURE_COLORS[0])
        ax.broken_barh([(x, w)], (0.6, 0.8), color=color, alpha=0.8, hatch=None if r.kind == HOLD else "//",
                       edgecolor="white")
        ax.text(x + w / 2, 1.0, fmt_ns(r.gap_ns), ha="center", va="center", fontsize=8, color="white"
                if w > dur / 12 else "black", clip_on=True)
    y = c.yields
    y = y[(y["tid"] == tid) & (y["ts"] >= s0) & (y["ts"] <= s1)]
    for t, f in zip(y["ts"].to_numpy(np.int64), y["function"].astype(str)):
        ax.axvline((t - s0) / 1e6, color="black", linewidth=1, ymin=0.05, ymax=0.95)
    ax.set_xlim(-dur * 0.03 / 1e6, dur * 1.03 / 1e6)
    ax.set_ylim(0, 2)
    ax.set_yticks([])
    ax.set_xlabel(f"ms from span {sid}'s start ({s0 / 1e9:.6f} s); bars: holds (grey: incl. time away), "
                  "lines: yield points")
    ax.set_ylabel("zoom")
    ax.set_title(f"Span {sid} {sp['function']} close up: {fmt_ns(dur)}, {int(sp['yields'])} yield"
                 f"{'' if int(sp['yields']) == 1 else 's'}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def plot_span_timeline(caps: Captures, threshold_ns: int = DEFAULT_THRESHOLD_NS) -> Figure:
    """Each zap span as a bar from its start to its end at the height of its longest hold, marker by function
    (one capture: on the capture clock, with a second panel zoomed into the span with the longest hold;
    overlaid captures: time since each one's first zap span; log y)."""
    labelled = _labelled(caps)
    single = len(labelled) == 1
    fns = sorted({str(f) for c in labelled.values() for f in c.spans["function"].unique()})
    if single and fns:
        fig = Figure(figsize=ZOOM_FIGSIZE, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        ax, zoom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1.3]})
    else:
        fig, ax = _new_figure()
        zoom = None
    ax.set_title("Zap spans over time: longest hold of mmu_lock without a yield")
    if not fns:
        _empty(ax, "no zap spans in this capture")
        return fig
    thr_ms = threshold_ns / 1e6
    ymax = thr_ms
    ymin = thr_ms
    xlabel = ""
    for i, (lab, c) in enumerate(labelled.items()):
        sp = c.spans
        _, t_end = capture_bounds(c)
        t0, xlabel = _time_origin(c, single)
        st = _gaps_ms(c)
        holds = st[st["kind"] == HOLD]
        per_span = holds.groupby("span_id")["gap_ms"].max()
        if per_span.empty:
            continue
        sp = sp.set_index("span_id").loc[per_span.index]
        start = (sp["ts"].to_numpy(np.int64) - t0) / 1e9
        end = (sp["end_ts"].fillna(t_end).to_numpy(np.int64) - t0) / 1e9
        y = np.maximum(per_span.to_numpy(), 1e-3)
        ymax, ymin = max(ymax, y.max()), min(ymin, y.min())
        fn_of = sp["function"].to_numpy(dtype=object)
        for j, fn in enumerate(fns):
            m = fn_of == fn
            if not m.any():
                continue
            color = CAPTURE_COLORS[(j if single else i) % len(CAPTURE_COLORS)]
            name = f"spans of {fn}" + ("" if single else f" ({lab})")
            ax.hlines(y[m], start[m], end[m], color=color, linewidth=3, alpha=0.55)
            ax.scatter(start[m], y[m], marker=FUNCTION_MARKERS[j % len(FUNCTION_MARKERS)], s=45, color=color,
                       edgecolor="black", linewidth=0.5, zorder=3, label=name)
        if single:  # name the worst spans above the threshold
            worst = np.argsort(-y)[:3]
            mid = (start.min() + end.max()) / 2
            for k in worst[y[worst] > thr_ms]:
                sid = int(per_span.index[k])
                dur = sp["duration_ns"].iloc[k]
                dur_txt = "never returned" if pd.isna(dur) else f"lasted {fmt_ns(dur)}"
                ny = int(sp["yields"].iloc[k])
                ax.annotate(f"span {sid} {fn_of[k]}: {fmt_ns(y[k] * 1e6)} without a yield\n"
                            f"({dur_txt}, {ny} yield{'' if ny == 1 else 's'})",
                            (start[k], y[k]), xytext=(8, -4), textcoords="offset points", fontsize=8.5,
                            va="top", ha="left" if start[k] <= mid else "right")
            pad = max((end.max() - start.min()) * 0.04, 1e-3)
            ax.set_xlim(start.min() - pad, end.max() + pad)
            if zoom is not None:
                _zoom_panel(zoom, c, int(per_span.index[int(np.argmax(y))]), st, threshold_ns)
    ax.axhline(thr_ms, **THRESHOLD_STYLE, label=f"threshold {_ms_formatter(thr_ms, 0)}")
    ax.set_yscale("log")
    ax.set_ylim(ymin / 2, ymax * 3)
    ax.yaxis.set_major_locator(LogLocator(base=10))
    ax.yaxis.set_major_formatter(FuncFormatter(_ms_formatter))
    ax.set_xlabel(xlabel + "; bar = span start to end")
    ax.set_ylabel("longest hold without a yield (log)")
    if single:
        ax.legend(loc="best", frameon=True, framealpha=0.85, fontsize=9)
    else:  # one entry per function and capture: below the plot, where it hides no span
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8,
                   frameon=False)
    ax.grid(alpha=0.3, which="major")
    return fig


def plot_retained_tables(caps: Captures) -> Figure:
    """Non-leaf page tables kept alive with no children, over time (count, and memory on the right axis);
    the x axis covers where the count changes, with the zap spans shaded."""
    labelled = _labelled(caps)
    single = len(labelled) == 1
    fig, ax = _new_figure()
    ax.set_title("Retained non-leaf page tables (linked, emptied, kept for reuse)")
    if not any(len(c.sptes) for c in labelled.values()):
        _empty(ax, "no SPTE change events in this capture:\nretained page tables cannot be counted")
        return fig
    top = 1
    lo_x, hi_x = [], []
    xlabel = ""
    for i, (lab, c) in enumerate(labelled.items()):
        if not len(c.sptes):
            continue
        t_first, t_end = capture_bounds(c)
        t0, xlabel = _time_origin(c, single)
        ch = df_retained(c)
        x = np.concatenate([[(t_first - t0) / 1e9], (ch["ts"].to_numpy(np.int64) - t0) / 1e9, [(t_end - t0) / 1e9]])
        y = np.concatenate([[0], ch["retained"].to_numpy(np.int64),
                            [ch["retained"].iloc[-1] if len(ch) else 0]])
        top = max(top, int(y.max()))
        peak = int(y.max())
        ax.step(x, y, where="post", color=CAPTURE_COLORS[i % len(CAPTURE_COLORS)], linewidth=2,
                label=f"{lab}: peak {peak} tables ({peak * PAGE_SIZE // 1024} KiB), {int(y[-1])} at end")
        # Where the activity is: from the first change of the count (or first span) to the last.
        marks = list((ch["ts"].to_numpy(np.int64) - t0) / 1e9) + list((c.spans["ts"].to_numpy(np.int64) - t0) / 1e9)
        marks += list((c.spans["end_ts"].dropna().to_numpy(np.int64) - t0) / 1e9)
        if marks:
            lo_x.append(min(marks))
            hi_x.append(max(marks))
        if single:
            for s0, s1 in zip(c.spans["ts"].to_numpy(np.int64), c.spans["end_ts"].fillna(t_end).to_numpy(np.int64)):
                ax.axvspan((s0 - t0) / 1e9, (s1 - t0) / 1e9, color="#999999", alpha=0.15, linewidth=0)
    if lo_x:
        a, b = min(lo_x), max(hi_x)
        pad = max((b - a) * 0.05, 1e-3)
        ax.set_xlim(a - pad, b + pad)
    ax.set_ylim(0, top * 1.25)
    ax.set_xlabel(xlabel + ("; shaded: zap spans" if single else ""))
    ax.set_ylabel("retained tables")
    mem = ax.secondary_yaxis("right", functions=(lambda n: n * PAGE_SIZE / 1024, lambda k: k * 1024 / PAGE_SIZE))
    mem.set_ylabel("memory (KiB, 4 KiB per table)")
    ax.legend(loc="upper left", frameon=False, fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def figures(caps: Captures, threshold_ns: int = DEFAULT_THRESHOLD_NS) -> dict[str, Figure]:
    """All figures by name, in FIGURES order."""
    return {
        "zaps_by_level": plot_zaps_by_level(caps),
        "gap_distribution": plot_gap_distribution(caps, threshold_ns),
        "span_timeline": plot_span_timeline(caps, threshold_ns),
        "retained_tables": plot_retained_tables(caps),
    }


def save_figures(caps: Captures, outdir: Path | Dir, threshold_ns: int = DEFAULT_THRESHOLD_NS) -> list[Path]:
    """Write every figure as outdir/NAME.png (0600, never through a link; see tdptrace.outputs); returns the
    paths. `outdir` is a path or a directory already opened by tdptrace.outputs.output_dir."""
    d = outdir if isinstance(outdir, Dir) else output_dir(outdir)
    paths = []
    try:
        for name, fig in figures(caps, threshold_ns).items():
            d.write_bytes(f"{name}.png", png_bytes(fig))
            paths.append(d.path / f"{name}.png")
    finally:
        if d is not outdir:
            d.close()
    return paths


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (for embedding in the HTML report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


__all__ = ["FIGURES", "figures", "save_figures", "png_bytes", "plot_zaps_by_level", "plot_gap_distribution",
           "plot_span_timeline", "plot_retained_tables"]
