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
    st = df_stretches(cap, end)
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
            by_fn = [(fn, gg["gap_ms"].to_numpy()) for fn, gg in g.groupby("function")]
            # (labels must not start with "_": matplotlib hides those, and kernel names often do)
            ax.hist([b for _, b in by_fn], bins=bins, stacked=True,
                    label=[f"{len(b)} gap{'' if len(b) == 1 else 's'} in {fn}" for fn, b in by_fn],
                    color=[CAPTURE_COLORS[j % len(CAPTURE_COLORS)] for j in range(len(by_fn))], alpha=0.85)
        else:
            ax.hist(v, bins=bins, histtype="step", linewidth=2, color=CAPTURE_COLORS[i % len(CAPTURE_COLORS)],
                    label=f"{lab}: {len(v)} gaps, max {fmt_ns(v.max() * 1e6)}, {int((v > thr_ms).sum())} above "
                          "threshold")
    ax.axvline(thr_ms, **THRESHOLD_STYLE, label=f"threshold {_ms_formatter(thr_ms, 0)}")
    if single:
        above = int((allv > thr_ms).sum())
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


def plot_span_timeline(caps: Captures, threshold_ns: int = DEFAULT_THRESHOLD_NS) -> Figure:
    """Each zap span as a bar from its start to its end at the height of its longest gap, marker by function
    (time in seconds from the first zap span, so overlaid captures line up; log y)."""
    labelled = _labelled(caps)
    fig, ax = _new_figure()
    ax.set_title("Zap spans over time: longest hold of mmu_lock without a yield")
    fns = sorted({str(f) for c in labelled.values() for f in c.spans["function"].unique()})
    if not fns:
        _empty(ax, "no zap spans in this capture")
        return fig
    thr_ms = threshold_ns / 1e6
    ymax = thr_ms
    ymin = thr_ms
    single = len(labelled) == 1
    for i, (lab, c) in enumerate(labelled.items()):
        sp = c.spans
        _, t_end = capture_bounds(c)
        t0 = int(sp["ts"].min())  # align captures on their first zap span
        st = _gaps_ms(c)
        per_span = st.groupby("span_id")["gap_ms"].max()
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
            for k in worst[y[worst] > thr_ms]:
                sid = int(per_span.index[k])
                dur = sp["duration_ns"].iloc[k]
                dur_txt = "never returned" if pd.isna(dur) else f"lasted {fmt_ns(dur)}"
                ny = int(sp["yields"].iloc[k])
                ax.annotate(f"span {sid} {fn_of[k]}: {fmt_ns(y[k] * 1e6)} without a yield\n"
                            f"({dur_txt}, {ny} yield{'' if ny == 1 else 's'})",
                            (start[k], y[k]), xytext=(8, -4), textcoords="offset points", fontsize=8.5,
                            va="top", ha="left" if start[k] < (t_end - t0) / 2e9 else "right")
    ax.axhline(thr_ms, **THRESHOLD_STYLE, label=f"threshold {_ms_formatter(thr_ms, 0)}")
    ax.set_yscale("log")
    ax.set_ylim(ymin / 2, ymax * 3)
    ax.yaxis.set_major_locator(LogLocator(base=10))
    ax.yaxis.set_major_formatter(FuncFormatter(_ms_formatter))
    ax.set_xlabel("time since the first zap span (s); bar = span start to end")
    ax.set_ylabel("longest gap without a yield (log scale)")
    if single:
        ax.legend(loc="best", frameon=True, framealpha=0.85, fontsize=9)
    else:  # one entry per function and capture: below the plot, where it hides no span
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8,
                   frameon=False)
    ax.grid(alpha=0.3, which="major")
    return fig


def plot_retained_tables(caps: Captures) -> Figure:
    """Non-leaf page tables kept alive with no children, over time (count, and memory on the right axis)."""
    labelled = _labelled(caps)
    fig, ax = _new_figure()
    ax.set_title("Retained non-leaf page tables (linked, emptied, kept for reuse)")
    if not any(len(c.sptes) for c in labelled.values()):
        _empty(ax, "no SPTE change events in this capture:\nretained page tables cannot be counted")
        return fig
    top = 1
    for i, (lab, c) in enumerate(labelled.items()):
        if not len(c.sptes):
            continue
        t0, t_end = capture_bounds(c)
        if len(c.spans):  # the same time origin as the span timeline
            t0 = int(c.spans["ts"].min())
        ch = df_retained(c)
        t_first, _ = capture_bounds(c)
        x = np.concatenate([[(t_first - t0) / 1e9], (ch["ts"].to_numpy(np.int64) - t0) / 1e9, [(t_end - t0) / 1e9]])
        y = np.concatenate([[0], ch["retained"].to_numpy(np.int64),
                            [ch["retained"].iloc[-1] if len(ch) else 0]])
        top = max(top, int(y.max()))
        peak = int(y.max())
        ax.step(x, y, where="post", color=CAPTURE_COLORS[i % len(CAPTURE_COLORS)], linewidth=2,
                label=f"{lab}: peak {peak} tables ({peak * PAGE_SIZE // 1024} KiB), {int(y[-1])} at end")
    ax.set_ylim(0, top * 1.25)
    ax.set_xlabel("time relative to the first zap span (s; the capture's start when it has no spans)")
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
