"""Stretches: every span of time a zap held mmu_lock without offering to yield, deduplicated across nested
spans, longest first. The metric behind triage, plots and compare."""
from __future__ import annotations

import numpy as np
import pandas as pd

from tdptrace.capture import Capture
from tdptrace.capture.spans import ancestor_pairs
from tdptrace.metrics.gaps import df_gaps


def capture_bounds(cap: Capture) -> tuple[int, int]:
    """First and last timestamp of any event in the capture (ns, capture clock)."""
    lo, hi = [], []
    for name in ("sptes", "spans", "yields", "page_tables", "markers"):
        ts = cap.table(name, columns=["ts"])["ts"]
        if len(ts):
            lo.append(int(ts.min()))
            hi.append(int(ts.max()))
    ends = cap.spans["end_ts"].dropna()
    if len(ends):
        hi.append(int(ends.max()))
    rets = cap.yields["ret_ts"].dropna()
    if len(rets):
        hi.append(int(rets.max()))
    return (min(lo), max(hi)) if lo else (0, 0)


def df_stretches(cap: Capture, capture_end_ns: int) -> pd.DataFrame:
    """Every stretch without a yield, deduplicated across nesting, longest first.

    Columns: span_id, function, tid, start, gap_ns, ends_at, lower_bound. A nested span's gaps lie inside a
    gap of its enclosing span, so only gaps of spans with no complete ancestor are kept. Spans that never
    returned add one stretch from their last yield (or start) to the end of the capture, as a lower bound.
    """
    spans = cap.spans
    g = df_gaps(cap).assign(lower_bound=False)
    parent = spans.set_index("span_id")["parent_id"]
    complete = spans.set_index("span_id")["complete"]
    ids = spans["span_id"].to_numpy(np.int64)
    anc = ancestor_pairs(ids, parent)
    anc = anc[anc["span_id"].to_numpy() != ids[anc["i"].to_numpy()]]
    covered = set(ids[anc.loc[complete.reindex(anc["span_id"]).to_numpy(bool), "i"].to_numpy()])
    g = g[~g["span_id"].isin(covered)]
    open_spans = spans[~spans["complete"] & ~spans["span_id"].isin(covered)]
    if len(open_spans):
        y = cap.yields
        y = y[y["span_id"].isin(open_spans["span_id"])]
        resume = y["ret_ts"].fillna(y["ts"]).groupby(y["span_id"]).max() if len(y) else pd.Series(dtype="Int64")
        start = open_spans.set_index("span_id")["ts"]
        last = pd.concat([start, resume.astype("int64")], axis=1).max(axis=1).astype(np.int64)
        tail = pd.DataFrame({"span_id": last.index.to_numpy(np.int64),
                             "function": open_spans.set_index("span_id").loc[last.index, "function"].to_numpy(),
                             "tid": open_spans.set_index("span_id").loc[last.index, "tid"].to_numpy(),
                             "start": last.to_numpy(), "gap_ns": capture_end_ns - last.to_numpy(),
                             "ends_at": "capture end", "lower_bound": True})
        g = pd.concat([g, tail], ignore_index=True)
    return g.sort_values(["gap_ns", "start"], ascending=[False, True], kind="stable", ignore_index=True)
