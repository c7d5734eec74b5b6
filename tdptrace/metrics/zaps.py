"""At which levels KVM zaps SPTEs (docs/metrics.md "Zap")."""
from __future__ import annotations

import numpy as np
import pandas as pd

from tdptrace.capture import Capture
from tdptrace.capture.pagetables import classify
from tdptrace.capture.schema import LEVELS, ZAP_COUNT_COLUMNS
from tdptrace.kernel.spte import Encoding


# The SPTE columns the zap and retained-table figures read: no task names, so a summary does not decode them.
CORE = ("ts", "seq", "as_id", "gfn", "level", "old_spte", "new_spte")


def spte_core(cap: Capture) -> pd.DataFrame:
    """The capture's SPTE changes, only the columns the figures need (the whole table when already read)."""
    if "sptes" in cap.__dict__ or "sptes" in cap._frames:
        return cap.sptes
    return cap.table("sptes", CORE)


def spte_classes(cap: Capture) -> pd.DataFrame:
    """classify() of the capture's SPTE changes, computed once per opened capture (zaps and retained
    tables both need it)."""
    key = "__spte_classes"
    if key not in cap._frames:
        cap._frames[key] = classify(spte_core(cap), Encoding(cap.meta.spte_encoding))
    return cap._frames[key]


def df_spte_changes(cap: Capture) -> pd.DataFrame:
    """SPTE changes with their classification.

    Columns: ts, seq, cpu, tid, comm, as_id, gfn, level, old_spte, new_spte, was_present, is_present,
    old_leaf, new_leaf, zap, install.
    """
    s = cap.sptes
    return pd.concat([s, spte_classes(cap)], axis=1)


def df_zaps(cap: Capture) -> pd.DataFrame:
    """Zaps only (present -> not present). Columns: ts, seq, cpu, tid, comm, as_id, gfn, level, leaf."""
    d = df_spte_changes(cap)
    z = d[d["zap"]]
    return z[["ts", "seq", "cpu", "tid", "comm", "as_id", "gfn", "level"]].assign(leaf=z["old_leaf"].to_numpy())


def zap_counts(level: np.ndarray, cls: pd.DataFrame) -> dict[tuple[int, bool], int]:
    """{(level, leaf): zaps} from SPTE levels and their classify() columns: one bincount, no frame of zaps."""
    zap = cls["zap"].to_numpy()
    code = level[zap].astype(np.int64) * 2 + cls["old_leaf"].to_numpy()[zap]
    counts = np.bincount(code, minlength=2 * (max(LEVELS) + 1))
    return {(int(c) // 2, bool(c % 2)): int(n) for c, n in enumerate(counts) if n}


def zaps_by_level(cap: Capture) -> tuple[dict[str, dict[str, int]], str]:
    """{level: {leaf, nonleaf}} for levels with any zap, and where the figure comes from."""
    core = spte_core(cap)
    if len(core):
        return _shape(zap_counts(core["level"].to_numpy(), spte_classes(cap))), "kvm_tdp_mmu_spte_changed"
    totals = (cap.meta.events or {}).get("zap_totals")
    if totals:  # the live recorder's in-kernel per-level counters (when SPTE events were not streamed)
        return _shape({(int(lv), kind == "leaf"): int(n) for lv, v in totals.items() for kind, n in v.items()}), \
            "in-kernel counters"
    spans = cap.spans
    if len(spans) and spans["zaps_known"].all():
        top = spans[spans["depth"] == 0]
        got = {}
        for lv in LEVELS:
            got[(lv, True)] = int(top[f"leaf_l{lv}"].sum())
            got[(lv, False)] = int(top[f"nonleaf_l{lv}"].sum())
        return _shape(got), "zap spans (in-kernel aggregation; zaps outside spans not seen)"
    pt = cap.page_tables
    frees = pt[pt["kind"] == "free"]
    if len(frees):
        counts = frees.groupby("level").size()
        return _shape({(int(lv), False): int(n) for lv, n in counts.items()}), \
            "kvm_mmu_prepare_zap_page (shadow MMU page tables)"
    return {}, "none"


def _shape(counts: dict[tuple[int, bool], int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for lv in LEVELS:
        leaf, nonleaf = counts.get((lv, True), 0), counts.get((lv, False), 0)
        if leaf or nonleaf:
            out[str(lv)] = {"leaf": leaf, "nonleaf": nonleaf}
    return out


def span_zap_matrix(spans: pd.DataFrame) -> np.ndarray:
    """(n_spans, 5, 2) array of zaps per level (leaf, non-leaf) inside each span."""
    return spans[ZAP_COUNT_COLUMNS].fillna(0).to_numpy(np.int64).reshape(len(spans), len(LEVELS), 2)
