"""Two captures side by side (A = before, B = after): zaps per level normalised, gaps, yields, retained tables,
and the direction of each change - the before/after picture for a kernel developer evaluating a zap change.

`compare(a, b)` -> Comparison (rows as a DataFrame plus headline sentences); no typer, no matplotlib.
Times are compared as ratios only: TCG lab runs are 30-100x slower than hardware but alike within a run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tdptrace.capture import Capture
from tdptrace.kernel.functions import LEAF_ZAP, ROOT_TEARDOWN
from tdptrace.kernel.spte import PAGE_SIZE
from tdptrace.metrics.holds import HOLD, df_holds
from tdptrace.metrics.operations import df_operations
from tdptrace.metrics.retained import retained_summary
from tdptrace.metrics.zaps import zaps_by_level
from tdptrace.oncall.triage import capture_bounds, df_stretches
from tdptrace.units import fmt_ns

ALL = "all zaps"
GIB = 1 << 30
# Relative change below which two values count as the same.
SAME_WITHIN = 0.05

ROW_COLUMNS = ["group", "scope", "metric", "unit", "a", "b", "ratio", "direction", "better", "verdict"]


@dataclass
class Comparison:
    """Rows (ROW_COLUMNS) and what they say, in sentences."""

    a_label: str
    b_label: str
    rows: pd.DataFrame
    headlines: list[str]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        rows = self.rows.astype(object).where(self.rows.notna(), None)
        return {"a": self.a_label, "b": self.b_label, "headlines": self.headlines, "notes": self.notes,
                "rows": rows.to_dict(orient="records")}


def capture_label(cap: Capture) -> str:
    """Kernel release when known, else the capture's directory name."""
    rel = (cap.meta.kernel or {}).get("release")
    return str(rel) if rel else cap.path.name.removesuffix(".tdp")


def _labels(a: Capture, b: Capture) -> tuple[str, str]:
    la, lb = capture_label(a), capture_label(b)
    if la == lb:
        la, lb = a.path.name.removesuffix(".tdp"), b.path.name.removesuffix(".tdp")
    if la == lb:
        la, lb = "A", "B"
    return la, lb


def df_operation_metrics(cap: Capture) -> pd.DataFrame:
    """Per operation class (and ALL): operations, spans, zap time, yields, yields per operation and per second
    of zap time, gap p50/p99/max, longest operation. Index: scope. Empty when the capture has no spans."""
    sp = cap.spans
    if sp.empty:
        return pd.DataFrame()
    ops = df_operations(cap).set_index("span_id")
    top = sp[sp["parent_id"].isna()].set_index("span_id")
    op_dur = pd.DataFrame({"op_id": ops.loc[top.index, "op_id"].to_numpy(), "cls": ops.loc[top.index, "op_class"],
                           "dur": top["duration_ns"].astype("Float64").to_numpy()}).groupby(["op_id", "cls"])["dur"] \
        .sum(min_count=1).reset_index()
    y = cap.yields
    y = y[y["span_id"].notna()]
    y_cls = ops["op_class"].reindex(y["span_id"].astype("int64").to_numpy()).to_numpy()
    y_op = ops["op_id"].reindex(y["span_id"].astype("int64").to_numpy()).to_numpy()
    _, end = capture_bounds(cap)
    st = df_holds(cap, df_stretches(cap, end))
    st = st[st["kind"] == HOLD]  # a stretch that includes time away in a yield is not a hold
    st_cls = ops["op_class"].reindex(st["span_id"].to_numpy(np.int64)).to_numpy()
    rows = {}
    scopes = [ALL] + sorted(ops["op_class"].unique())
    for scope in scopes:  # a handful of classes
        m_op = np.ones(len(op_dur), bool) if scope == ALL else (op_dur["cls"] == scope).to_numpy()
        m_y = np.ones(len(y), bool) if scope == ALL else (y_cls == scope)
        m_st = np.ones(len(st), bool) if scope == ALL else (st_cls == scope)
        m_sp = np.ones(len(sp), bool) if scope == ALL else (ops["op_class"].reindex(sp["span_id"]) == scope)
        n_ops = int(m_op.sum())
        zap_time = float(op_dur.loc[m_op, "dur"].sum())
        yields_per_op = pd.Series(y_op[m_y]).value_counts().reindex(op_dur.loc[m_op, "op_id"], fill_value=0)
        gaps = st.loc[m_st, "gap_ns"].to_numpy(np.int64)
        longest = op_dur.loc[m_op, "dur"].astype("float64")
        longest_id = op_dur.loc[longest.idxmax(), "op_id"] if n_ops and longest.notna().any() else None
        rows[scope] = {
            "operations": n_ops,
            "yields_in_longest_operation": (float(yields_per_op.get(longest_id, 0)) if longest_id is not None
                                            else np.nan),
            "spans": int(np.asarray(m_sp).sum()),
            "zap_time_ns": zap_time,
            "longest_operation_ns": float(op_dur.loc[m_op, "dur"].max()) if n_ops else np.nan,
            "yields": int(m_y.sum()),
            "yields_per_operation": float(yields_per_op.mean()) if n_ops else np.nan,
            "yields_per_second": int(m_y.sum()) / (zap_time / 1e9) if zap_time > 0 else np.nan,
            "gap_p50_ns": float(np.quantile(gaps, 0.5, method="higher")) if len(gaps) else np.nan,
            "gap_p99_ns": float(np.quantile(gaps, 0.99, method="higher")) if len(gaps) else np.nan,
            "gap_max_ns": float(gaps.max()) if len(gaps) else np.nan,
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def df_zap_metrics(cap: Capture) -> pd.DataFrame:
    """Zaps per (level, kind): count, per GiB of guest memory the leaf zaps unmapped, and per zap span."""
    zbl, _ = zaps_by_level(cap)
    rows = [{"level": int(lv), "kind": kind, "count": n} for lv, v in zbl.items()
            for kind, n in (("leaf", v["leaf"]), ("non-leaf", v["nonleaf"])) if n]
    df = pd.DataFrame(rows, columns=["level", "kind", "count"])
    leaf = df[df["kind"] == "leaf"]
    unmapped = float((leaf["count"] * PAGE_SIZE * (512.0 ** (leaf["level"] - 1))).sum())
    df["per_gib_unmapped"] = df["count"] / (unmapped / GIB) if unmapped else np.nan
    n_spans = len(cap.spans)
    df["per_span"] = df["count"] / n_spans if n_spans else np.nan
    df.attrs["gib_unmapped"] = unmapped / GIB
    return df


# metric -> (group, unit, which direction is better: "lower", "higher" or None)
_OP_METRICS: dict[str, tuple[str, str, str | None]] = {
    "operations": ("yields", "count", None),
    "yields": ("yields", "count", None),
    "yields_per_operation": ("yields", "per operation", "higher"),
    "yields_in_longest_operation": ("yields", "count", "higher"),
    "yields_per_second": ("yields", "per s of zap time", "higher"),
    "gap_p50_ns": ("gaps", "ns", "lower"),
    "gap_p99_ns": ("gaps", "ns", "lower"),
    "gap_max_ns": ("gaps", "ns", "lower"),
    "longest_operation_ns": ("gaps", "ns", "lower"),
    "zap_time_ns": ("yields", "ns", None),
}


def _row(group: str, scope: str, metric: str, unit: str, a: float | None, b: float | None,
         better: str | None) -> dict[str, Any]:
    a = None if a is None or pd.isna(a) else float(a)
    b = None if b is None or pd.isna(b) else float(b)
    ratio = direction = verdict = None
    if a is None or b is None:
        direction, verdict = "n/a", "n/a"
    else:
        ratio = (b / a) if a else (np.inf if b else 1.0)
        if (a == b) or (a and abs(b - a) / abs(a) <= SAME_WITHIN):
            direction = "same"
        else:
            direction = "higher" if b > a else "lower"
        verdict = "same" if direction == "same" else ("changed" if better is None else
                                                      "better" if direction == better else "worse")
        ratio = None if not np.isfinite(ratio) else float(ratio)
    return {"group": group, "scope": scope, "metric": metric, "unit": unit, "a": a, "b": b, "ratio": ratio,
            "direction": direction, "better": better, "verdict": verdict}


def compare(a: Capture, b: Capture) -> Comparison:
    """Compare capture B against capture A."""
    la, lb = _labels(a, b)
    rows: list[dict[str, Any]] = []
    za, zb = df_zap_metrics(a), df_zap_metrics(b)
    keys = sorted(set(zip(za["level"], za["kind"])) | set(zip(zb["level"], zb["kind"])))
    ia, ib = za.set_index(["level", "kind"]), zb.set_index(["level", "kind"])
    for lv, kind in keys:
        for col, unit in (("count", "count"), ("per_gib_unmapped", "per GiB unmapped"), ("per_span", "per span")):
            va = ia[col].get((lv, kind), 0.0 if col == "count" else np.nan)
            vb = ib[col].get((lv, kind), 0.0 if col == "count" else np.nan)
            if col != "count" and pd.isna(va) and not pd.isna(vb) and (lv, kind) not in ia.index:
                va = 0.0
            if col != "count" and pd.isna(vb) and not pd.isna(va) and (lv, kind) not in ib.index:
                vb = 0.0
            rows.append(_row("zaps", f"level {lv} {kind}", f"zaps {unit}", unit, va, vb, None))
    rows.append(_row("zaps", ALL, "GiB unmapped by leaf zaps", "GiB", za.attrs["gib_unmapped"],
                     zb.attrs["gib_unmapped"], None))
    oa, ob = df_operation_metrics(a), df_operation_metrics(b)
    scopes = [s for s in ([ALL] + sorted((set(oa.index) | set(ob.index)) - {ALL}))
              if s in oa.index or s in ob.index]
    for scope in scopes:
        for metric, (group, unit, better) in _OP_METRICS.items():
            va = oa.at[scope, metric] if scope in oa.index else None
            vb = ob.at[scope, metric] if scope in ob.index else None
            rows.append(_row(group, scope, metric, unit, va, vb, better))
    ra = retained_summary(a) if len(a.sptes) else None
    rb = retained_summary(b) if len(b.sptes) else None
    for key, unit in (("peak", "tables"), ("peak_bytes", "bytes"), ("at_end", "tables")):
        rows.append(_row("retained", "page tables", f"retained non-leaf {key.replace('_', ' ')}", unit,
                         ra[key] if ra else None, rb[key] if rb else None, "lower"))
    rows.append(_row("capture", "capture", "lost events", "count", a.meta.lost_events.get("total", 0),
                     b.meta.lost_events.get("total", 0), "lower"))
    df = pd.DataFrame(rows, columns=ROW_COLUMNS)
    notes = []
    for lab, cap in ((la, a), (lb, b)):
        if cap.spans.empty:
            notes.append(f"{lab} has no zap spans: yields and gaps cannot be compared")
        if int(cap.meta.lost_events.get("total", 0)):
            notes.append(f"{lab} lost {cap.meta.lost_events['total']} events")
    return Comparison(la, lb, df, _headlines(df, la, lb), notes)


def _get(df: pd.DataFrame, scope: str, metric: str) -> pd.Series | None:
    r = df[(df["scope"] == scope) & (df["metric"] == metric)]
    return None if r.empty else r.iloc[0]


def _headlines(df: pd.DataFrame, la: str, lb: str) -> list[str]:
    """One sentence per operation class seen in both: how often it yields and how long it holds the lock."""
    out = []
    for scope in (ROOT_TEARDOWN, LEAF_ZAP) + tuple(s for s in df["scope"].unique()
                                                  if s not in (ROOT_TEARDOWN, LEAF_ZAP, ALL) and
                                                  not str(s).startswith("level")):
        ypo, yps, mx, ylo = (_get(df, scope, m) for m in ("yields_per_operation", "yields_per_second",
                                                           "gap_max_ns", "yields_in_longest_operation"))
        if any(r is None or r["direction"] == "n/a" for r in (ypo, mx)):
            continue
        freq = yps if yps is not None and yps["direction"] != "n/a" else ypo
        often = {"higher": "more often", "lower": "less often", "same": "as often"}[freq["direction"]]
        rate = f", {yps['b']:.0f}/s vs {yps['a']:.0f}/s of zap time" if freq is yps else ""
        gap = {"lower": "lower", "higher": "higher", "same": "about the same"}[mx["direction"]]
        longest = (f"{ylo['b']:.0f} vs {ylo['a']:.0f} yields in the longest operation, "
                   if ylo is not None and ylo["direction"] != "n/a" else "")
        out.append(f"{scope}: {lb} yields {often} than {la} ({longest}{ypo['b']:.1f} vs {ypo['a']:.1f} per "
                   f"operation{rate}); its longest hold of mmu_lock without a yield is {gap} "
                   f"({fmt_ns(mx['b'])} vs {fmt_ns(mx['a'])}).")
    r = _get(df, "page tables", "retained non-leaf peak")
    if r is not None and r["direction"] != "n/a":
        out.append(f"retained non-leaf tables: peak {r['b']:.0f} in {lb} vs {r['a']:.0f} in {la} "
                   f"({r['direction']}).")
    return out
