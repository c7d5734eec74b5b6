"""Holds and stretches that include time away: a stretch that begins at a yield point whose return was not
traced runs from the yield's entry, so it counts the time the task spent away from mmu_lock in the yield as
if the lock had been held. Such stretches are kept apart from holds and are never above a threshold.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from tdptrace.capture import Capture

HOLD = "hold"
INCLUDES_AWAY = "includes_away"


def df_holds(cap: Capture, stretches: pd.DataFrame) -> pd.DataFrame:
    """`stretches` (metrics.stretches.df_stretches) with `kind`: 'hold', or 'includes_away' when the stretch
    starts at a yield of the same task whose return was not observed. Order and index are kept."""
    y = cap.yields
    blind = y[y["ret_ts"].isna()]
    out = stretches.copy()
    if blind.empty or stretches.empty:
        out["kind"] = HOLD
        return out
    keys = pd.MultiIndex.from_arrays([blind["tid"].to_numpy(np.int64), blind["ts"].to_numpy(np.int64)])
    mine = pd.MultiIndex.from_arrays([stretches["tid"].to_numpy(np.int64), stretches["start"].to_numpy(np.int64)])
    out["kind"] = np.where(mine.isin(keys), INCLUDES_AWAY, HOLD)
    return out


def above(holds: pd.DataFrame, threshold_ns: int) -> pd.Series:
    """Which stretches are holds above the threshold (a stretch that includes time away never is)."""
    return (holds["kind"] == HOLD) & (holds["gap_ns"] > threshold_ns)
