"""Who waited while a zap held mmu_lock: lock contention on each VM's mmu_lock (lock:contention_begin/end,
5.19+) and vCPU fault latency (kvm:kvm_page_fault to the vCPU's next kvm:kvm_entry), from the `waits` table.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from tdptrace.capture import Capture

LOCK = "lock"
FAULT = "fault"


def has_waiters(cap: Capture) -> bool:
    """Whether the capture recorded waiter events at all (an empty table still means 'recorded, none')."""
    caps = cap.meta.capabilities or {}
    return bool(caps.get("lock_contention") or caps.get("fault_latency"))


def df_waits(cap: Capture) -> pd.DataFrame:
    """The waits table. Columns: ts, end_ts (null: still waiting at the capture's end), wait_ns, kind ('lock'
    or 'fault'), tid, pid, comm, cpu, lock (hashed address), mode ('read'/'write'/None), vcpu."""
    return cap.table("waits")


def _stats(g: pd.DataFrame) -> dict[str, Any]:
    """Counts and quantiles of complete waits; waits still open at the capture's end are counted apart (their
    length is only a lower bound)."""
    done = g["end_ts"].notna().to_numpy() if len(g) else np.zeros(0, bool)
    w = g["wait_ns"].to_numpy(np.int64)[done] if len(g) else np.zeros(0, np.int64)
    out: dict[str, Any] = {"count": int(len(w)), "open": int((~done).sum()), "tasks": int(g["tid"].nunique())}
    if not len(w):
        return out | {"p50_ns": None, "p99_ns": None, "max_ns": None, "total_ns": 0}
    return out | {"p50_ns": int(np.quantile(w, 0.5, method="higher")),
                  "p99_ns": int(np.quantile(w, 0.99, method="higher")), "max_ns": int(w.max()),
                  "total_ns": int(w.sum())}


def _describe(w: pd.DataFrame) -> dict[str, Any]:
    """Tasks, counts and wait quantiles of some waits, lock waits split by mode."""
    locks = w[w["kind"] == LOCK]
    faults = w[w["kind"] == FAULT]
    by_mode = {m: _stats(g) for m, g in locks.groupby(locks["mode"].fillna("unknown").astype(str))}
    return {
        "tasks": int(w["tid"].nunique()),
        "lock": _stats(locks) | {"by_mode": by_mode},
        "fault": _stats(faults) | {"vcpus": sorted(int(v) for v in faults["vcpu"].dropna().unique())},
        "task_names": sorted(set(w["comm"].astype(str)))[:16],
    }


def mmu_lock_waits(cap: Capture, w: pd.DataFrame | None = None) -> pd.DataFrame:
    """Lock waits on a VM's mmu_lock: the lock is a VM the capture knows (span vm or yield lock hashes,
    the same keyed hash of the struct kvm pointer), or, where it knows none, an rwlock waited on by a task
    of a process that faults (a vCPU thread)."""
    w = df_waits(cap) if w is None else w
    locks = w[w["kind"] == LOCK]
    known = set(cap.spans["vm"].dropna().astype(str)) | set(cap.yields["lock"].dropna().astype(str))
    if known:
        return locks[locks["lock"].isin(known)]
    vcpu_pids = set(w.loc[w["kind"] == FAULT, "pid"].tolist())
    spin_rw = ((locks["flags"].fillna(0).astype(np.int64) & 1) == 1) & locks["mode"].isin(["read", "write"])
    return locks[locks["pid"].isin(vcpu_pids) & spin_rw]


def _waits(cap: Capture) -> pd.DataFrame:
    """mmu_lock waits and vCPU faults, with `end` (the capture's end for waits still open)."""
    key = "__waiter_rows"
    if key in cap._frames:
        return cap._frames[key]
    from tdptrace.metrics.stretches import capture_bounds

    w = df_waits(cap)
    if not w.empty:
        w = pd.concat([mmu_lock_waits(cap, w), w[w["kind"] == FAULT]])
    end = w["end_ts"].fillna(capture_bounds(cap)[1]).astype(np.int64)
    w = w.assign(end=end.to_numpy(np.int64), wait_ns=(end - w["ts"]).to_numpy(np.int64))
    cap._frames[key] = w
    return w


def waiters_between(cap: Capture, lo: int, hi: int, vm: Optional[str] = None,
                    exclude_tid: Optional[int] = None) -> dict[str, Any]:
    """Who waited during [lo, hi]: waits overlapping it (on `vm`'s mmu_lock when the VM is known), the
    zapping task itself left out."""
    w = _waits(cap)
    if w.empty:
        return _describe(w)
    m = (w["ts"].to_numpy(np.int64) <= hi) & (w["end"].to_numpy(np.int64) >= lo)
    if vm is not None:
        m &= ((w["kind"] == FAULT) | (w["lock"] == vm)).to_numpy()
    if exclude_tid is not None:
        m &= (w["tid"] != exclude_tid).to_numpy()
    return _describe(w[m])


def waiters_summary(cap: Capture) -> dict[str, Any]:
    """The `waiters` object of `summary --json`: what was recorded, per VM (process) and per span."""
    caps = cap.meta.capabilities or {}
    out: dict[str, Any] = {"recorded": has_waiters(cap), "lock_contention": bool(caps.get("lock_contention")),
                           "fault_latency": bool(caps.get("fault_latency"))}
    if not out["recorded"]:
        out["unavailable"] = "no waiter events in this capture (record with --waiters)"
        return out
    w = _waits(cap)
    out["all"] = _describe(w)
    out["per_vm"] = {str(pid): _describe(g) for pid, g in w.groupby("pid")} if len(w) else {}
    spans = cap.spans
    per_span = []
    if len(w) and len(spans):
        ends = spans["end_ts"].fillna(int(w["end"].max())).to_numpy(np.int64)
        for sid, s0, s1, tid, vm in zip(spans["span_id"], spans["ts"], ends, spans["tid"], spans["vm"]):
            d = waiters_between(cap, int(s0), int(s1), None if pd.isna(vm) else str(vm), exclude_tid=int(tid))
            if d["tasks"]:
                per_span.append({"span_id": int(sid)} | d)
    out["per_span"] = per_span
    return out
