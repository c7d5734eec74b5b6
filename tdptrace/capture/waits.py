"""Waiter events paired into waits (capture table `waits`), block by block with what is still open carried
over, so a long recording keeps only the open waits in memory, never the stream of kvm_entry events.

Lock waits: lock:contention_begin .. the next lock:contention_end of the same task and lock (5.19+;
kernel/locking/qrwlock.c and friends fire them around the slow path). vCPU faults: kvm:kvm_page_fault .. the
same thread's next kvm:kvm_entry. A begin followed by another begin of the same task and lock lost its end
(dropped, counted); ends and entries with nothing open are not waits (other locks, ordinary VM entries).

A fault KVM retries (RET_PF_RETRY: it re-enters the guest, which faults on the same address again - what 6.1
does while an mmu-notifier invalidation is in progress, instead of waiting on mmu_lock) is one wait, from its
first kvm_page_fault to the entry after the last retry, with `retries` counting them: consecutive faults of one
vCPU thread on one address, each within RETRY_GAP_NS of the previous entry. The last fault wait of each thread
is held back until the thread's next fault (or the end) shows whether it was retried.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tdptrace.capture.hashing import PointerHasher
from tdptrace.capture.schema import WAITS

# Event names as the tracepoints are called (include/trace/events/lock.h, arch/x86/kvm/trace.h).
CONTENTION_BEGIN = "contention_begin"
CONTENTION_END = "contention_end"
PAGE_FAULT = "kvm_page_fault"
ENTRY = "kvm_entry"
WAIT_EVENTS = frozenset({CONTENTION_BEGIN, CONTENTION_END, PAGE_FAULT, ENTRY})
# contention_begin flags (include/trace/events/lock.h, LCB_F_*): keep in sync with the tracepoint.
LCB_FLAGS: dict[str, int] = {"SPIN": 1, "READ": 2, "WRITE": 4, "RT": 8, "PERCPU": 16, "MUTEX": 32}
LCB_SPIN, LCB_READ, LCB_WRITE = 1, 2, 4
# A re-fault on the same address this soon after the entry is KVM's retry, not a new fault: retries come tens
# of microseconds apart even under nested emulation; a new fault needs the guest to run and the page to go.
RETRY_GAP_NS = 10_000_000

# Raw waiter events as decoded from one block (any text format), the shape WaitPairer.add takes.
RAW_COLUMNS = ("ts", "seq", "cpu", "tid", "pid", "comm", "event", "lock", "flags", "vcpu", "address", "error_code")


def empty_raw() -> pd.DataFrame:
    return pd.DataFrame({"ts": np.zeros(0, np.int64), "seq": np.zeros(0, np.int64), "cpu": np.zeros(0, np.int16),
                         "tid": np.zeros(0, np.int32), "pid": np.zeros(0, np.int32),
                         "comm": pd.Series([], dtype="string"), "event": pd.Series([], dtype="string"),
                         "lock": pd.array([], dtype="UInt64"), "flags": pd.array([], dtype="Int64"),
                         "vcpu": pd.array([], dtype="Int64"), "address": pd.array([], dtype="UInt64"),
                         "error_code": pd.array([], dtype="UInt64")})


def mode_of(flags: np.ndarray) -> np.ndarray:
    """'read' / 'write' / None from contention_begin flags."""
    f = np.asarray(flags, dtype=np.int64)
    return np.where(f & LCB_WRITE, "write", np.where(f & LCB_READ, "read", None)).astype(object)


@dataclass
class WaitPairer:
    """Pairs waiter events across blocks. `add` returns the waits completed in that block (WAITS frame)."""

    hasher: PointerHasher
    open_locks: pd.DataFrame = field(default_factory=empty_raw)
    open_faults: pd.DataFrame = field(default_factory=empty_raw)
    held_faults: pd.DataFrame | None = None
    lost_ends: int = 0
    seen_lock: bool = False
    seen_fault: bool = False

    def add(self, raw: pd.DataFrame) -> pd.DataFrame:
        if raw.empty and self.open_locks.empty and self.open_faults.empty:
            return self._frame(empty_raw(), None)
        ev = raw["event"].astype(str).to_numpy()
        locks = raw[np.isin(ev, [CONTENTION_BEGIN, CONTENTION_END])]
        faults = raw[np.isin(ev, [PAGE_FAULT, ENTRY])]
        self.seen_lock |= len(locks) > 0
        self.seen_fault |= len(faults) > 0
        done = [self._pair(pd.concat([self.open_locks, locks], ignore_index=True), ["tid", "lock"],
                           CONTENTION_BEGIN, "lock"),
                self._coalesce(self._pair(pd.concat([self.open_faults, faults], ignore_index=True), ["tid"],
                                          PAGE_FAULT, "fault"), last=False)]
        return pd.concat([d for d in done if len(d)], ignore_index=True) if any(len(d) for d in done) else \
            self._frame(empty_raw(), None)

    def _pair(self, rows: pd.DataFrame, key: list[str], start_event: str, kind: str) -> pd.DataFrame:
        if rows.empty:
            return self._frame(rows, None)
        r = rows.sort_values(key + ["seq"], kind="stable", ignore_index=True)
        is_start = (r["event"].astype(str) == start_event).to_numpy()
        same = np.ones(len(r) - 1, dtype=bool)
        for k in key:
            col = r[k].to_numpy()
            same &= (col[1:] == col[:-1]) if col.dtype != object else \
                pd.Series(col[1:]).eq(pd.Series(col[:-1])).to_numpy()
        nxt_same = np.append(same, False)
        nxt_is_start = np.append(is_start[1:], False)
        # A start followed in its group by an end: a wait. By another start: its end was lost (contention) or
        # it is the first of two faults before one entry (the fault is kept, ending at that entry).
        paired = is_start & nxt_same & ~nxt_is_start
        still_open = is_start & ~nxt_same
        if kind == "fault":
            # Faults before the same entry: each ends at the next entry of the thread.
            tid = r["tid"].to_numpy(np.int64)
            ent = ~is_start
            order = np.arange(len(r))
            nxt_entry = pd.Series(np.where(ent, order, np.nan)).groupby(tid).bfill().to_numpy()
            paired = is_start & ~np.isnan(nxt_entry)
            still_open = is_start & np.isnan(nxt_entry)
            end_idx = np.where(paired, np.nan_to_num(nxt_entry, nan=0).astype(np.int64), 0)
        else:
            self.lost_ends += int((is_start & nxt_same & nxt_is_start).sum())
            end_idx = np.where(paired, order_next(len(r)), 0)
        starts = r[paired]
        ends = r.iloc[end_idx[paired]]
        if kind == "lock":
            self.open_locks = r[still_open].reset_index(drop=True)
        else:
            self.open_faults = r[still_open].reset_index(drop=True)
        return self._frame(starts, ends["ts"].to_numpy(np.int64), kind)

    def close(self) -> pd.DataFrame:
        """Waits still open when the capture ended (end_ts null)."""
        out = [self._frame(self.open_locks, None, "lock"), self._coalesce(self._frame(empty_raw(), None, "fault"),
                                                                          last=True),
               self._frame(self.open_faults, None, "fault")]
        self.open_locks, self.open_faults = empty_raw(), empty_raw()
        return pd.concat([o for o in out if len(o)], ignore_index=True) if any(len(o) for o in out) else out[0]

    def _coalesce(self, done: pd.DataFrame, last: bool) -> pd.DataFrame:
        """Merge retried faults (see the module docstring); hold each thread's last wait back unless `last`."""
        parts = [d for d in (self.held_faults, done) if d is not None and len(d)]
        if not parts:
            return done
        w = pd.concat(parts, ignore_index=True).sort_values(["tid", "ts"], kind="stable", ignore_index=True)
        tid = w["tid"].to_numpy(np.int64)
        addr = w["address"].astype("UInt64").fillna(0).to_numpy(np.uint64)
        vcpu = w["vcpu"].astype("Int64").fillna(-1).to_numpy(np.int64)
        end = w["end_ts"].astype("Int64").fillna(np.iinfo(np.int64).max).to_numpy(np.int64)
        ts = w["ts"].to_numpy(np.int64)
        cont = np.zeros(len(w), bool)
        cont[1:] = (tid[1:] == tid[:-1]) & (addr[1:] == addr[:-1]) & (vcpu[1:] == vcpu[:-1]) \
            & (ts[1:] - end[:-1] <= RETRY_GAP_NS) & (ts[1:] >= end[:-1])
        group = np.cumsum(~cont)
        g = w.groupby(group, sort=False)
        first = w[~cont].reset_index(drop=True)
        first["end_ts"] = g["end_ts"].last().to_numpy()
        first["wait_ns"] = first["end_ts"] - first["ts"]
        first["retries"] = (g.size().to_numpy() - 1 + g["retries"].sum().to_numpy()).astype(np.int32)
        if last:
            self.held_faults = None
            return first[WAITS.names]
        is_last = np.append(first["tid"].to_numpy()[1:] != first["tid"].to_numpy()[:-1], True)
        self.held_faults = first[is_last].reset_index(drop=True)
        return first[~is_last].reset_index(drop=True)[WAITS.names]

    def _frame(self, starts: pd.DataFrame, end_ts: np.ndarray | None, kind: str = "lock") -> pd.DataFrame:
        n = len(starts)
        end = pd.array(end_ts if end_ts is not None else np.zeros(n, np.int64), dtype="Int64")
        if end_ts is None:
            end[:] = pd.NA
        ts = starts["ts"].to_numpy(np.int64)
        is_lock = kind == "lock"
        flags = starts["flags"].astype("Int64")
        out = pd.DataFrame({
            "ts": ts, "seq": starts["seq"].to_numpy(np.int64), "cpu": starts["cpu"].to_numpy(np.int16),
            "tid": starts["tid"].to_numpy(np.int32), "pid": starts["pid"].to_numpy(np.int32),
            "comm": starts["comm"].astype("string").to_numpy(), "kind": np.full(n, kind, dtype=object),
            "end_ts": end, "wait_ns": end - ts,
            "lock": (self.hasher.column(starts["lock"]).to_numpy() if is_lock and n else [None] * n),
            "mode": (mode_of(flags.fillna(0).to_numpy(np.int64)) if is_lock else [None] * n),
            "flags": flags.astype("Int32").to_numpy() if is_lock else pd.array([pd.NA] * n, dtype="Int32"),
            "vcpu": starts["vcpu"].astype("Int32").to_numpy() if not is_lock else pd.array([pd.NA] * n,
                                                                                             dtype="Int32"),
            "address": starts["address"].astype("UInt64").to_numpy(),
            "error_code": starts["error_code"].astype("UInt64").to_numpy(),
            "retries": pd.array(np.zeros(n, np.int32), dtype="Int32") if not is_lock else
            pd.array([pd.NA] * n, dtype="Int32"),
        })
        return out[WAITS.names]


def order_next(n: int) -> np.ndarray:
    """Index of the next row (the last row points at itself)."""
    return np.minimum(np.arange(n) + 1, max(n - 1, 0))
