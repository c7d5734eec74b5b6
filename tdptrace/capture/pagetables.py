"""Page-table bookkeeping from SPTE changes alone (docs/metrics.md "Page tables and retained non-leaf tables").

A table is (as_id, level of its entries, base gfn). Its present-entry count rises on installs and falls on
zaps; it is linked while the non-leaf SPTE one level up at its base gfn is present. A retained table is
linked, once had present entries, and has none now. Roots are never retained (nothing links them).
Everything is vectorised over the whole SPTE frame: one sort and a few grouped cumulative sums.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tdptrace.kernel.spte import (
    LEGACY_MMIO_VALUE,
    LEGACY_REMOVED_SPTE,
    LEGACY_SPECIAL_MASK,
    PT_PAGE_SIZE_MASK,
    SPTE_MMU_PRESENT_MASK,
    Encoding,
    is_leaf,
    is_present,
    table_base,
)

# Bits of the table key: as_id (8) | level (3) | base gfn (up to 2^52 pages). gfn fits in 52 bits on x86-64.
_GFN_BITS = 52


try:
    from tdptrace.capture import _pagetables_scan  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: the numpy path below
    _pagetables_scan = None


def classify(sptes: pd.DataFrame, encoding: Encoding) -> pd.DataFrame:
    """Per SPTE change: was/is present, was leaf, is leaf, zap (present -> not present) and install."""
    old = sptes["old_spte"].to_numpy(dtype=np.uint64)
    new = sptes["new_spte"].to_numpy(dtype=np.uint64)
    native = _native_classify(old, new, sptes["level"].to_numpy(), encoding, sptes.index)
    if native is not None:
        return native
    level = sptes["level"].to_numpy(dtype=np.int64)
    po = is_present(old, encoding)
    pn = is_present(new, encoding)
    return pd.DataFrame({
        "was_present": po,
        "is_present": pn,
        "old_leaf": po & is_leaf(old, level),
        "new_leaf": pn & is_leaf(new, level),
        "zap": po & ~pn,
        "install": ~po & pn,
    }, index=sptes.index)


_CLASSES = ("was_present", "is_present", "old_leaf", "new_leaf", "zap", "install")


def _native_classify(old: np.ndarray, new: np.ndarray, level: np.ndarray, encoding: Encoding,
                     index: pd.Index) -> pd.DataFrame | None:
    """classify() in one compiled pass writing the six columns directly (None where the pass is not built or
    switched off, or levels are not uint8)."""
    if _pagetables_scan is None or os.environ.get("TDPTRACE_PURE", "") not in ("", "0") or level.dtype != np.uint8:
        return None
    out = {c: np.empty(len(old), dtype=np.bool_) for c in _CLASSES}
    _pagetables_scan.classify(np.ascontiguousarray(old), np.ascontiguousarray(new), np.ascontiguousarray(level),
                              encoding == Encoding.LEGACY, int(SPTE_MMU_PRESENT_MASK), int(PT_PAGE_SIZE_MASK),
                              int(LEGACY_SPECIAL_MASK), int(LEGACY_MMIO_VALUE), int(LEGACY_REMOVED_SPTE),
                              *out.values())
    return pd.DataFrame(out, index=index, copy=False)


def _key(as_id: np.ndarray, level: np.ndarray, base: np.ndarray) -> np.ndarray:
    return ((as_id.astype(np.uint64) << np.uint64(_GFN_BITS + 3)) | (level.astype(np.uint64) << np.uint64(_GFN_BITS))
            | base.astype(np.uint64))


@dataclass
class RetainedSeries:
    """Changes of the retained non-leaf table count over the capture, in event order."""

    changes: pd.DataFrame  # seq, ts, level, delta, retained (total after this change)
    root_level: int

    def at(self, seq: np.ndarray) -> np.ndarray:
        """Total retained tables after every event with seq strictly below each given seq."""
        s = self.changes["seq"].to_numpy()
        total = np.concatenate([[0], self.changes["retained"].to_numpy()])
        idx = np.searchsorted(s, np.asarray(seq, dtype=np.int64), side="left")
        return total[idx]

    def by_level_at_end(self) -> dict[int, int]:
        """Retained tables per level (level of the table's entries) at the end of the capture."""
        if self.changes.empty:
            return {}
        per = self.changes.groupby("level")["delta"].sum()
        return {int(k): int(v) for k, v in per.items() if v}


def _native_changes(sptes: pd.DataFrame, cls: pd.DataFrame, seq: np.ndarray, root_level: int) -> RetainedSeries | None:
    """The same series from the compiled pass (one hash-table walk in event order instead of sorting every
    operation by table), or None where it does not apply: not built, TDPTRACE_PURE=1, rows not in seq order,
    or levels outside 1..5."""
    if _pagetables_scan is None or os.environ.get("TDPTRACE_PURE", "") not in ("", "0"):
        return None
    level = sptes["level"].to_numpy()
    if level.dtype != np.uint8 or int(level.min()) < 1 or int(level.max()) > 5 or not (np.diff(seq) > 0).all():
        return None
    as_id = sptes["as_id"].to_numpy()
    if as_id.dtype != np.uint8:
        return None
    flags = [np.ascontiguousarray(cls[c].to_numpy(dtype=np.bool_)) for c in ("was_present", "is_present",
                                                                              "old_leaf", "new_leaf")]
    rec = _pagetables_scan.retained(np.ascontiguousarray(seq), np.ascontiguousarray(sptes["ts"].to_numpy(np.int64)),
                                    np.ascontiguousarray(as_id), np.ascontiguousarray(level),
                                    np.ascontiguousarray(sptes["gfn"].to_numpy(np.uint64)), *flags, root_level)
    r = np.frombuffer(rec, dtype=np.int64).reshape(-1, 4)
    ch = pd.DataFrame({"seq": r[:, 0].copy(), "ts": r[:, 1].copy(), "level": r[:, 2].copy(), "delta": r[:, 3].copy()})
    ch["retained"] = np.cumsum(ch["delta"].to_numpy())
    return RetainedSeries(ch, root_level)


def retained_series(sptes: pd.DataFrame, cls: pd.DataFrame) -> RetainedSeries:
    """Compute the retained non-leaf table count after every SPTE change that moves it."""
    n = len(sptes)
    max_level = int(sptes["level"].max()) if n else 4
    root_level = max(4, max_level)
    if n == 0:
        return RetainedSeries(pd.DataFrame({"seq": [], "ts": [], "level": [], "delta": [], "retained": []},
                                           dtype=np.int64), root_level)
    seq = sptes["seq"].to_numpy(dtype=np.int64)
    native = _native_changes(sptes, cls, seq, root_level)
    if native is not None:
        return native
    ts = sptes["ts"].to_numpy(dtype=np.int64)
    as_id = sptes["as_id"].to_numpy(dtype=np.uint64)
    level = sptes["level"].to_numpy(dtype=np.int64)
    gfn = sptes["gfn"].to_numpy(dtype=np.uint64)
    po, pn = cls["was_present"].to_numpy(), cls["is_present"].to_numpy()
    dcount = pn.astype(np.int64) - po.astype(np.int64)
    nl_old = po & ~cls["old_leaf"].to_numpy()
    nl_new = pn & ~cls["new_leaf"].to_numpy()
    # Ops on the table holding the entry (count) and on the child table a non-leaf entry links (link).
    c_mask = dcount != 0
    l_mask = (nl_old != nl_new) & (level >= 2)
    c_key = _key(as_id[c_mask], level[c_mask], table_base(gfn[c_mask], level[c_mask]))
    l_lvl = level[l_mask] - 1
    l_key = _key(as_id[l_mask], l_lvl, table_base(gfn[l_mask], l_lvl))
    key = np.concatenate([c_key, l_key])
    if len(key) == 0:
        return RetainedSeries(pd.DataFrame({"seq": [], "ts": [], "level": [], "delta": [], "retained": []},
                                           dtype=np.int64), root_level)
    oseq = np.concatenate([seq[c_mask], seq[l_mask]])
    order = np.lexsort((oseq, key))  # by table, then event order
    key, oseq = key[order], oseq[order]
    ots = np.concatenate([ts[c_mask], ts[l_mask]])[order]
    tlevel = np.concatenate([level[c_mask], l_lvl]).astype(np.int64)[order]
    dcount = np.concatenate([dcount[c_mask], np.zeros(int(l_mask.sum()), dtype=np.int64)])[order]
    link = np.concatenate([np.full(int(c_mask.sum()), -1, dtype=np.int64), nl_new[l_mask].astype(np.int64)])[order]
    m = len(key)
    idx = np.arange(m)
    # One pass of numpy per step, with group boundaries computed once (a group = one table).
    start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    gstart = np.repeat(start, np.diff(np.r_[start, m]))  # first row of each row's group
    csum = np.cumsum(dcount)
    rel = csum - (csum[gstart] - dcount[gstart])  # running count since the table's first op
    # Tables populated before the capture began: assume the fewest entries consistent with what was zapped.
    initial = np.maximum(-np.repeat(np.minimum.reduceat(rel, start), np.diff(np.r_[start, m])), 0)
    count = rel + initial
    # Linked state: the last link op so far; before the first, linked unless that first op is a link.
    is_link = link >= 0
    last = np.maximum.accumulate(np.where(is_link, idx, -1))
    seen = last >= gstart
    first = np.minimum.reduceat(np.where(is_link, idx, m), start)
    first_val = np.where(first < m, link[np.minimum(first, m - 1)], 0)
    linked = np.where(seen, link[np.maximum(last, 0)] == 1,
                      np.repeat(first_val, np.diff(np.r_[start, m])) == 0)
    # "Once had present entries" restarts whenever the table is linked anew.
    relink = link == 1
    seg_start = np.maximum.accumulate(np.where(relink | (idx == gstart), idx, 0))
    first_segment = ~(np.maximum.accumulate(np.where(relink, idx, -1)) >= gstart)
    had = (count > 0) | ((initial > 0) & first_segment)
    ever = np.maximum.accumulate(np.where(had, idx, -1)) >= seg_start
    r = (linked & ever & (count == 0) & (tlevel < root_level)).astype(np.int64)
    prev = np.r_[0, r[:-1]]
    prev[start] = 0
    delta = r - prev
    moved = delta != 0
    ch = pd.DataFrame({"seq": oseq[moved], "ts": ots[moved], "level": tlevel[moved], "delta": delta[moved]})
    ch = ch.sort_values("seq", kind="stable", ignore_index=True)
    ch["retained"] = ch["delta"].cumsum()
    return RetainedSeries(ch.astype(np.int64), root_level)
