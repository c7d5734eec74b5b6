"""The cost model: nanoseconds per unit of zap work, with defaults documented by their source, and the fit
of the same model from real captures (`tdptrace calibrate`)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tdptrace.errors import BadInput

# 512^3 4 KiB SPTEs under one 4-level top-level entry, plus the tables holding them (512^2 + 512 + 1).
_PUBLISHED_SPTES = 512 ** 3
_PUBLISHED_TABLES = 512 ** 2 + 512 + 1
_PUBLISHED_NS = 7_000_000_000

SOURCES = {
    "leaf_zap_ns": "chosen so that tearing down one 4-level top-level SPTE fully populated with 4 KiB SPTEs "
                   "takes the published ~7 s (commit 'KVM: x86/mmu: Zap roots in two passes to avoid inducing "
                   "RCU stalls', v5.18): (7 s - tables x table_free_ns) / 512^3",
    "nonleaf_zap_ns": "same path as a leaf zap (SPTE write + handle_changed_spte); the subtree is costed apart",
    "table_free_ns": "estimate: handle_removed_pt visits all 512 entries of the table, then unlinks it and "
                     "queues the RCU free",
    "iter_ns": "estimate: one tdp_iter step (READ_ONCE of the SPTE, need_resched check) per visited entry",
    "removed_write_ns": "estimate: a shared-mode teardown (handle_removed_pt under the read lock) also "
                        "exchanges each non-present entry of a freed table for the removed marker",
    "yield_ns": "estimate: remote TLB flush before dropping mmu_lock, rcu_read_unlock/lock, lock re-take",
    "call_ns": "estimate: entry/exit of one zap function call (root walk setup)",
    "fault_ns": "estimate: one EPT/NPT violation handled (only places install events in time)",
}


@dataclass
class CostModel:
    """ns per unit of work. Defaults follow SOURCES; `calibrate` fits them from captures."""

    leaf_zap_ns: float = 0.0
    nonleaf_zap_ns: float = 51.0
    table_free_ns: float = 600.0
    iter_ns: float = 2.0
    removed_write_ns: float = 5.0
    yield_ns: float = 2000.0
    call_ns: float = 500.0
    fault_ns: float = 3000.0
    source: dict[str, Any] = field(default_factory=lambda: {"kind": "defaults", "notes": SOURCES})

    def __post_init__(self) -> None:
        if self.leaf_zap_ns <= 0:
            self.leaf_zap_ns = (_PUBLISHED_NS - _PUBLISHED_TABLES * self.table_free_ns) / _PUBLISHED_SPTES

    def segment_ns(self, seg: pd.DataFrame) -> np.ndarray:
        """Duration of each work segment (tree.Work.segments)."""
        return (seg["checks"].to_numpy(np.float64) * self.iter_ns
                + seg["leaf_zaps"].to_numpy(np.float64) * self.leaf_zap_ns
                + seg["nonleaf_zaps"].to_numpy(np.float64) * self.nonleaf_zap_ns
                + seg["tables_freed"].to_numpy(np.float64) * self.table_free_ns
                + seg["removed_writes"].to_numpy(np.float64) * self.removed_write_ns)

    def teardown_ns(self, leaf: float, nonleaf: float, tables: float) -> float:
        """Time to tear a subtree down in one go (no yield possible)."""
        return leaf * self.leaf_zap_ns + nonleaf * self.nonleaf_zap_ns + tables * self.table_free_ns

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        from tdptrace.outputs import write_file

        write_file(path, (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode())

    @classmethod
    def load(cls, path: Path) -> "CostModel":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInput(f"{path}: not a cost model ({exc.__class__.__name__})",
                           "give a file written by 'tdptrace calibrate -o cost.json'")
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or "leaf_zap_ns" not in d:
            raise BadInput(f"{path}: not a cost model (no leaf_zap_ns)",
                           "give a file written by 'tdptrace calibrate -o cost.json'")
        bad = [k for k, v in d.items() if k in names and k != "source" and not isinstance(v, (int, float))]
        if bad:
            raise BadInput(f"{path}: cost values must be numbers ({', '.join(bad)})", "fix or re-create the file")
        return cls(**{k: v for k, v in d.items() if k in names})


# Columns of the calibration design matrix, in the order of the fitted coefficients. In the TDP MMU every
# non-leaf zap frees exactly one table, so the two counts move together and cannot be told apart: they are
# fitted as one term (the defaults' cost of both, scaled) and split in the defaults' proportion.
FIT_TERMS = ("leaf_zap_ns", "table_ns", "removed_write_ns", "yield_ns", "call_ns")
TERM_FIELDS = {"leaf_zap_ns": ("leaf_zap_ns",), "table_ns": ("nonleaf_zap_ns", "table_free_ns"),
               "removed_write_ns": ("removed_write_ns",), "yield_ns": ("yield_ns",), "call_ns": ("call_ns",)}


def nnls(a: np.ndarray, b: np.ndarray, iters: int = 100) -> np.ndarray:
    """Non-negative least squares (Lawson-Hanson active set): argmin ||a x - b|| with x >= 0."""
    n = a.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    for _ in range(iters):
        w = a.T @ (b - a @ x)
        if passive.all() or (w[~passive] <= 1e-9 * max(1.0, np.abs(w).max())).all():
            break
        j = np.argmax(np.where(passive, -np.inf, w))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-12
    return x


def design(spans: pd.DataFrame, frees: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) for the fit: one row per innermost complete span with known zaps and known time away.

    Terms: leaf zaps; non-leaf zaps and tables freed inside the span (kvm_mmu_prepare_zap_page of the same
    task between entry and return) weighted by their default costs; non-present entries a shared root pass
    overwrote in the tables it freed (512 per table minus the present ones, which are zaps); yields taken;
    one call.
    b = duration minus the time away at yields. Spans with a yield whose return was not traced are left out:
    their time away cannot be separated from the work.
    """
    d = CostModel()
    s = spans[spans["complete"] & spans["zaps_known"] & (spans["lock_drops"].notna() | (spans["yields"] == 0))]
    s = s[~s["span_id"].isin(spans["parent_id"].dropna())]
    leaf = sum(s[f"leaf_l{lv}"].fillna(0).to_numpy(np.float64) for lv in range(1, 6))
    nonleaf = sum(s[f"nonleaf_l{lv}"].fillna(0).to_numpy(np.float64) for lv in range(1, 6))
    start, end, tid = (s["ts"].to_numpy(np.int64), s["end_ts"].to_numpy(np.int64), s["tid"].to_numpy())
    nfree = np.zeros(len(s))
    if len(frees):
        for t in np.unique(tid):  # per task: a handful of tasks; the count itself is a vectorised search
            ts = np.sort(frees.loc[frees["tid"] == t, "ts"].to_numpy(np.int64))
            m = tid == t
            nfree[m] = np.searchsorted(ts, end[m], side="right") - np.searchsorted(ts, start[m], side="left")
    away = s["away_ns"].fillna(0).to_numpy(np.float64)
    tables = nonleaf * d.nonleaf_zap_ns + nfree * d.table_free_ns
    # Zaps made by the loop itself are the ones at the pass's zap_level; the rest happened inside teardowns.
    zl = s["zap_level"].fillna(0).to_numpy(np.int64)
    cols = {lv: s[f"leaf_l{lv}"].fillna(0).to_numpy(np.float64) + s[f"nonleaf_l{lv}"].fillna(0).to_numpy(np.float64)
            for lv in range(1, 6)}
    at_level = np.select([zl == lv for lv in range(1, 6)], [cols[lv] for lv in range(1, 6)], 0.0)
    shared = (s["shared"].fillna(0).to_numpy(np.int64) == 1) & (zl > 0)
    writes = np.where(shared, np.maximum(512 * nfree - (leaf + nonleaf - at_level), 0.0), 0.0)
    a = np.column_stack([leaf, tables, writes, s["yields"].to_numpy(np.float64), np.ones(len(s))])
    b = (end - start).astype(np.float64) - away
    return a, b


def fit(parts: list[tuple[pd.DataFrame, pd.DataFrame]], sources: list[str]) -> tuple[CostModel, dict[str, Any]]:
    """Fit the cost model from (spans, page-table frees) of captures. Terms the data cannot separate keep
    their default scaled by the fitted/default ratio of the leaf cost; returns the model and fit statistics."""
    rows = [design(s, f) for s, f in parts]
    a = np.concatenate([r[0] for r in rows]) if rows else np.zeros((0, len(FIT_TERMS)))
    b = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0)
    if len(b) < 2 or a[:, 0].sum() == 0:
        raise BadInput("the captures hold too few complete zap spans with SPTE events to fit a cost model",
                       "give captures with zap spans and kvm_tdp_mmu_spte_changed (lab or 'record --sptes')")
    # Calls that zapped nothing measure the fixed cost of a call; the rest is fitted on what remains.
    empty = (a[:, :4] == 0).all(axis=1)
    call = float(np.median(b[empty])) if empty.any() else None
    x = np.zeros(len(FIT_TERMS))
    cols = [0, 1, 2, 3] if call is not None else [0, 1, 2, 3, 4]
    rest = b - (call or 0.0)
    aa = a[~empty][:, cols] if call is not None else a[:, cols]
    bb = rest[~empty] if call is not None else rest
    # Weight 1/sqrt(duration): long spans dominate less, so the per-table terms that only short passes
    # reveal are still seen, while long spans keep the per-SPTE cost honest.
    w = 1.0 / np.sqrt(np.maximum(np.abs(bb), 1000.0))
    aa, bb = aa * w[:, None], bb * w
    scale = np.where(aa.max(axis=0) > 0, aa.max(axis=0), 1.0)
    x[cols] = nnls(aa / scale, bb) / scale
    if call is not None:
        x[4] = call
    default = CostModel()
    identified = {k: bool(a[:, i].any()) for i, k in enumerate(FIT_TERMS)}
    ratio = x[0] / default.leaf_zap_ns
    coef = {}
    values: dict[str, float] = {}
    for i, k in enumerate(FIT_TERMS):
        c = float(x[i]) if identified[k] else (ratio if k == "table_ns" else getattr(default, k) * ratio)
        coef[k] = c
        if k == "table_ns":
            values.update({f: c * getattr(default, f) for f in TERM_FIELDS[k]})
        else:
            values[k] = c
    pred = a @ np.array([coef[k] for k in FIT_TERMS])
    stats = {
        "spans": int(len(b)), "captures": sources,
        "residual_rms_ns": float(np.sqrt(np.mean((pred - b) ** 2))),
        "total_measured_ns": float(b.sum()), "total_predicted_ns": float(pred.sum()),
        "identified": {f: identified[k] for k in FIT_TERMS for f in TERM_FIELDS[k]},
        "scale_vs_defaults": float(ratio),
    }
    model = CostModel(**values, iter_ns=default.iter_ns * ratio, fault_ns=default.fault_ns * ratio,
                      source={"kind": "calibrated", "fit": stats,
                              "notes": {"iter_ns": "default scaled by the fitted/default leaf cost ratio",
                                        "fault_ns": "default scaled by the fitted/default leaf cost ratio"}})
    return model, stats
