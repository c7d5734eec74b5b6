"""How many non-leaf page tables KVM keeps alive with no children (docs/metrics.md "Page tables...")."""
from __future__ import annotations

import pandas as pd

from tdptrace.capture import Capture
from tdptrace.capture.pagetables import RetainedSeries, retained_series
from tdptrace.kernel.spte import PAGE_SIZE
from tdptrace.metrics.zaps import spte_classes, spte_core


def series(cap: Capture) -> RetainedSeries:
    """Retained-table changes over the capture (needs SPTE changes)."""
    return retained_series(spte_core(cap), spte_classes(cap))


def df_retained(cap: Capture) -> pd.DataFrame:
    """The retained count over time. Columns: ts, seq, level (of the table changing), delta, retained (total)."""
    return series(cap).changes


def retained_summary(cap: Capture) -> dict:
    """End-of-capture retained tables per level, their bytes, and the peak."""
    rs = series(cap)
    ch = rs.changes
    by_level = rs.by_level_at_end()
    now = int(sum(by_level.values()))
    peak = int(ch["retained"].max()) if len(ch) else 0
    peak_at = int(ch.loc[ch["retained"].idxmax(), "ts"]) if len(ch) and peak > 0 else None
    return {"at_end": now, "by_level_at_end": {str(k): v for k, v in sorted(by_level.items())},
            "bytes_at_end": now * PAGE_SIZE, "peak": peak, "peak_ts_ns": peak_at, "peak_bytes": peak * PAGE_SIZE,
            "root_level": rs.root_level}
