"""How long KVM holds mmu_lock between yield points (docs/metrics.md "Yield point and gap")."""
from __future__ import annotations

import numpy as np
import pandas as pd

from tdptrace.capture import Capture
from tdptrace.capture.spans import ancestor_pairs


def df_gaps(cap: Capture) -> pd.DataFrame:
    """Every gap of every complete span.

    Columns: span_id, function, tid, start (ns, where the gap begins), gap_ns, ends_at ('yield' or 'return').
    A gap runs from the span start or the previous yield's return (its entry when no return was observed)
    to the next yield entry or the span end.
    """
    spans = cap.spans
    spans = spans[spans["complete"]]
    if spans.empty:
        return pd.DataFrame({"span_id": [], "function": [], "tid": [], "start": [], "gap_ns": [], "ends_at": []})
    y = cap.yields
    y = y[y["span_id"].notna()]
    # Each yield belongs to its innermost span and to every enclosing span.
    p = ancestor_pairs(y["span_id"].to_numpy(np.int64), cap.spans.set_index("span_id")["parent_id"])
    p = p[p["span_id"].isin(spans["span_id"])]
    yy = y.iloc[p["i"].to_numpy()]
    entry = yy["ts"].to_numpy(np.int64)
    resume = yy["ret_ts"].fillna(pd.Series(entry, index=yy.index)).to_numpy(np.int64)
    sp = spans.set_index("span_id")
    # Boundaries per span: start, then (entry, resume) per yield, then end.
    rows = pd.DataFrame({"span_id": p["span_id"].to_numpy(), "seq": yy["seq"].to_numpy(), "entry": entry,
                         "resume": resume})
    starts = pd.DataFrame({"span_id": sp.index.to_numpy(), "seq": sp["seq"].to_numpy() - 0,
                           "entry": sp["ts"].to_numpy(np.int64), "resume": sp["ts"].to_numpy(np.int64)})
    ends = pd.DataFrame({"span_id": sp.index.to_numpy(), "seq": np.iinfo(np.int64).max,
                         "entry": sp["end_ts"].to_numpy(np.int64), "resume": sp["end_ts"].to_numpy(np.int64)})
    b = pd.concat([starts.assign(k=0), rows.assign(k=1), ends.assign(k=2)], ignore_index=True)
    b = b.sort_values(["span_id", "k", "seq"], kind="stable", ignore_index=True)
    prev_resume = b.groupby("span_id")["resume"].shift(1)
    g = b[b["k"] > 0].copy()
    g["start"] = prev_resume[g.index].to_numpy(np.int64)
    g["gap_ns"] = g["entry"].to_numpy() - g["start"].to_numpy()
    g["ends_at"] = np.where(g["k"] == 1, "yield", "return")
    g["function"] = sp.loc[g["span_id"], "function"].to_numpy()
    g["tid"] = sp.loc[g["span_id"], "tid"].to_numpy()
    return g[["span_id", "function", "tid", "start", "gap_ns", "ends_at"]].reset_index(drop=True)


def gap_quantiles(gaps: pd.Series, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, int]:
    """p50/p90/p99/max of gaps in ns (empty dict when there are none)."""
    if gaps.empty:
        return {}
    v = gaps.to_numpy(np.int64)
    out = {f"p{int(q * 100)}_ns": int(np.quantile(v, q, method="higher")) for q in qs}
    out["max_ns"] = int(v.max())
    return out
