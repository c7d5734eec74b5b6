"""numpy mirrors of the records in probes/record.h, and their decoding into capture-table frames.

Keep in sync with probes/record.h: RECORD_H holds every #define there, the dtypes every struct
(tests/live/test_probe_headers.py checks both against the header, the structs as BCC compiles them).
Decoding is vectorised: one boolean mask per record kind, no Python loop per event.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from tdptrace.capture.hashing import PointerHasher
from tdptrace.capture.schema import SPANS, ZAP_COUNT_COLUMNS

# Keep in sync with probes/record.h: every #define there, with its value.
RECORD_H: dict[str, int] = {
    "TDP_COMM_LEN": 16, "TDP_LEVELS": 5, "TDP_ZAP_COUNTERS": 10,
    "TDP_KIND_SPTE": 1, "TDP_KIND_GET_PAGE": 2, "TDP_KIND_PREPARE_ZAP": 3, "TDP_KIND_ZAP_ALL_FAST": 4,
    "TDP_KIND_SPLIT": 5, "TDP_KIND_YIELD": 6, "TDP_KIND_SYSCALL": 7,
    "TDP_F_CREATED": 1, "TDP_F_UNSYNC": 2, "TDP_F_RETURNED": 4,
    "TDP_F_YIELD_READ": 0x10, "TDP_F_YIELD_WRITE": 0x20, "TDP_F_YIELD_SPIN": 0x40,
    "TDP_STAT_SPAN_ID": 0, "TDP_STAT_DEPTH_OVERFLOW": 1, "TDP_STAT_TABLES_FULL": 2, "TDP_STAT_MAX_LEVEL": 3,
    "TDP_STAT_UNMATCHED_RETURN": 4, "TDP_STAT_RETAINED_PEAK": 5, "TDP_STAT_COUNT": 6,
    "TDP_DROPS_EVENTS": 0, "TDP_DROPS_SPANS": 1, "TDP_DROPS_COUNT": 2,
    "TDP_MAX_FUNCS": 16, "TDP_ARG_REGS": 6, "TDP_MAX_PIDS": 1024, "TDP_MAX_VMM_CALLS": 4,
    "TDP_OWNER_FIRST_ZAP": 0, "TDP_OWNER_VMM_CALL": 1,
    "TDP_SELFTEST_MAGIC": 0x7464707472616365, "TDP_SELFTEST_SPTE": 1, "TDP_SELFTEST_SPAN_ENTRY": 2,
    "TDP_SELFTEST_SPAN_RETURN": 3, "TDP_SELFTEST_YIELD_ENTRY": 4, "TDP_SELFTEST_YIELD_RETURN": 5,
    "TDP_SELFTEST_VMM_CALL": 6, "TDP_SELFTEST_SPAN_ENTRY_VM": 7,
}

COMM_LEN = RECORD_H["TDP_COMM_LEN"]
ZAP_COUNTERS = RECORD_H["TDP_ZAP_COUNTERS"]  # tdp_span.zaps: leaf_l1, nonleaf_l1, leaf_l2, ...
# tdp_event.kind
KIND: dict[str, int] = {
    name: RECORD_H[f"TDP_KIND_{name.upper()}"]
    for name in ("spte", "get_page", "prepare_zap", "zap_all_fast", "split", "yield", "syscall")
}
F_CREATED, F_UNSYNC, F_RETURNED = RECORD_H["TDP_F_CREATED"], RECORD_H["TDP_F_UNSYNC"], RECORD_H["TDP_F_RETURNED"]
# Yield flavour bits in tdp_event.flags -> kernel function name.
YIELD_FUNCTION: dict[int, str] = {
    RECORD_H["TDP_F_YIELD_READ"]: "__cond_resched_rwlock_read",
    RECORD_H["TDP_F_YIELD_WRITE"]: "__cond_resched_rwlock_write",
    RECORD_H["TDP_F_YIELD_SPIN"]: "__cond_resched_lock",
}
# Indexes of map `stats` (s64) and map `drops` (u64 per CPU).
STAT_DEPTH_OVERFLOW = RECORD_H["TDP_STAT_DEPTH_OVERFLOW"]
STAT_TABLES_FULL = RECORD_H["TDP_STAT_TABLES_FULL"]
STAT_UNMATCHED_RETURN = RECORD_H["TDP_STAT_UNMATCHED_RETURN"]
STAT_RETAINED_PEAK = RECORD_H["TDP_STAT_RETAINED_PEAK"]
DROPS_SLOTS = tuple(range(RECORD_H["TDP_DROPS_COUNT"]))
# span_entry_N / span_return_N programs, and argument registers a span function's parameters are read from.
MAX_SPAN_FUNCS = RECORD_H["TDP_MAX_FUNCS"]
ARG_REGS = RECORD_H["TDP_ARG_REGS"]
MAX_PIDS = RECORD_H["TDP_MAX_PIDS"]  # capacity of map `pids` (-p)
MAX_VMM_CALLS = RECORD_H["TDP_MAX_VMM_CALLS"]  # vmm_call_N programs (map `vmm_args`)
# struct tdp_vm_owner.how -> what meta.events.vm_owner_from says
OWNER_HOW: dict[int, str] = {RECORD_H["TDP_OWNER_FIRST_ZAP"]: "first zap seen",
                             RECORD_H["TDP_OWNER_VMM_CALL"]: "VMM call"}
# record_selftest.bpf.c: the replay syscall's marker and operations.
SELFTEST_MAGIC = RECORD_H["TDP_SELFTEST_MAGIC"]
SELFTEST_OPS: dict[str, int] = {
    op: RECORD_H[f"TDP_SELFTEST_{op.upper()}"]
    for op in ("spte", "span_entry", "span_return", "yield_entry", "yield_return", "vmm_call", "span_entry_vm")
}

_HEAD = [
    ("ts", "<u8"), ("tid", "<u4"), ("pid", "<u4"), ("cpu", "<u2"), ("kind", "u1"), ("level", "u1"),
    ("as_id", "u1"), ("flags", "u1"), ("ret", "<i2"), ("comm", f"S{COMM_LEN}"),
]
# The union tdp_event.u seen through each of its members (same bytes, offset 40).
EVENT_SPTE = np.dtype(_HEAD + [("gfn", "<u8"), ("old_spte", "<u8"), ("new_spte", "<u8")])
EVENT_PAGE = np.dtype(_HEAD + [("gfn", "<u8"), ("role", "<u4"), ("root_count", "<u4"), ("mmu_valid_gen", "<u4"),
                               ("used_pages", "<u4")])
EVENT_YIELD = np.dtype(_HEAD + [("lock", "<u8"), ("ret_ts", "<u8"), ("span_id", "<i8")])
EVENT = EVENT_SPTE  # the generic view; all three views have the same size
UNION_OFFSET = 40

SPAN = np.dtype([
    ("start_ts", "<u8"), ("end_ts", "<u8"), ("span_id", "<i8"), ("parent_id", "<i8"), ("kvm", "<u8"),
    ("root", "<u8"), ("gfn_start", "<u8"), ("gfn_end", "<u8"), ("ret", "<i8"), ("away_ns", "<u8"),
    ("max_gap_ns", "<u8"), ("retained_after", "<i8"), ("zaps", "<u8", (ZAP_COUNTERS,)), ("tid", "<u4"), ("pid", "<u4"),
    ("yields", "<u4"), ("lock_drops", "<u4"), ("stack_id", "<i4"), ("cpu", "<u2"), ("func_id", "u1"),
    ("depth", "u1"), ("zap_level", "i1"), ("shared", "i1"), ("can_yield", "i1"), ("flush", "i1"),
    ("_pad", "u1", (4,)), ("comm", f"S{COMM_LEN}"),
])

FUNC_ARGS = np.dtype([
    ("kvm", "i1"), ("root", "i1"), ("start", "i1"), ("end", "i1"), ("can_yield", "i1"), ("flush", "i1"),
    ("shared", "i1"), ("zap_level", "i1"), ("vmm_call", "i1"), ("_pad", "u1", (7,)),
])


def _comm(raw: np.ndarray) -> pd.Series:
    """Fixed-size NUL-padded comm bytes -> string column (decoded once per unique value)."""
    if len(raw) == 0:
        return pd.Series([], dtype="string")
    codes, uniq = pd.factorize(raw)
    names = np.array([u.decode("utf-8", "replace") for u in uniq], dtype=object)
    return pd.Series(pd.array(names[codes], dtype="string"))


def _common(ev: np.ndarray, seq: np.ndarray) -> dict:
    return {
        "ts": ev["ts"].astype(np.int64), "seq": seq, "cpu": ev["cpu"].astype(np.int16),
        "tid": ev["tid"].astype(np.int32), "pid": ev["pid"].astype(np.int32), "comm": _comm(ev["comm"]),
    }


def decode_events(raw: np.ndarray, seq0: int, hasher: PointerHasher) -> dict[str, pd.DataFrame]:
    """A batch of tdp_event records (any view) -> frames for the sptes, page_tables, markers and yields tables.

    seq follows the order the records left the ring buffer (reservation order), starting at seq0.
    """
    raw = raw.view(EVENT_SPTE)
    seq = np.arange(seq0, seq0 + len(raw), dtype=np.int64)
    kind = raw["kind"]
    out: dict[str, pd.DataFrame] = {}
    m = kind == KIND["spte"]
    if m.any():
        ev = raw[m]
        out["sptes"] = pd.DataFrame(_common(ev, seq[m]) | {
            "as_id": ev["as_id"], "gfn": ev["gfn"], "level": ev["level"], "old_spte": ev["old_spte"],
            "new_spte": ev["new_spte"]})
    m = (kind == KIND["get_page"]) | (kind == KIND["prepare_zap"])
    if m.any():
        ev = raw[m].view(EVENT_PAGE)
        free = ev["kind"] == KIND["prepare_zap"]
        created = (ev["flags"] & F_CREATED) != 0
        out["page_tables"] = pd.DataFrame(_common(ev, seq[m]) | {
            "kind": pd.array(np.where(free, "free", np.where(created, "alloc", "lookup")), dtype="string"),
            "gfn": ev["gfn"], "level": ev["level"], "role": pd.array(ev["role"], dtype="UInt32"),
            "root_count": pd.array(ev["root_count"].astype(np.int32), dtype="Int32"),
            "unsync": pd.array(((ev["flags"] & F_UNSYNC) != 0).astype(np.int8), dtype="Int8"),
            "mmu_valid_gen": pd.array(ev["mmu_valid_gen"].astype(np.int32), dtype="Int32")})
    m = (kind == KIND["zap_all_fast"]) | (kind == KIND["split"]) | (kind == KIND["syscall"])
    if m.any():
        ev = raw[m]
        pg = ev.view(EVENT_PAGE)
        k = ev["kind"]
        fast = k == KIND["zap_all_fast"]
        split = k == KIND["split"]
        # Same text as tracefs prints, so imported and recorded captures read alike.
        detail = np.where(
            fast, _fmt("kvm-mmu-valid-gen {} used_pages {:x}", pg["mmu_valid_gen"], pg["used_pages"]),
            np.where(split, _fmt("gfn {:x} spte {:x} level {} errno {}", ev["gfn"], ev["old_spte"], ev["level"],
                                 ev["ret"]), _fmt("id {}", ev["gfn"])))
        out["markers"] = pd.DataFrame(_common(ev, seq[m]) | {
            "event": pd.array(np.where(fast, "kvm_mmu_zap_all_fast",
                                       np.where(split, "kvm_mmu_split_huge_page", "sys_enter")), dtype="string"),
            "function": pd.array([pd.NA] * int(m.sum()), dtype="string"),
            "detail": pd.array(detail, dtype="string")})
    m = kind == KIND["yield"]
    if m.any():
        ev = raw[m].view(EVENT_YIELD)
        returned = (ev["flags"] & F_RETURNED) != 0
        fn = np.full(len(ev), "__cond_resched_rwlock_read", dtype=object)
        for bit, name in YIELD_FUNCTION.items():
            fn[(ev["flags"] & bit) != 0] = name
        ret_ts = pd.array(ev["ret_ts"].astype(np.int64), dtype="Int64")
        ret_ts[~returned] = pd.NA
        ret = pd.array(ev["ret"].astype(np.int64), dtype="Int64")
        ret[~returned] = pd.NA
        sid = pd.array(ev["span_id"], dtype="Int64")
        sid[ev["span_id"] < 0] = pd.NA
        out["yields"] = pd.DataFrame(_common(ev, seq[m]) | {
            "function": pd.array(fn, dtype="string"), "ret_ts": ret_ts, "ret": ret, "span_id": sid,
            "lock": hasher.column(ev["lock"]).to_numpy()})
    return out


def _fmt(pattern: str, *cols: np.ndarray) -> np.ndarray:
    """Format a few columns into text for the (rare) marker rows."""
    return np.array([pattern.format(*vals) for vals in zip(*(c.tolist() for c in cols))], dtype=object)


def decode_spans(raw: np.ndarray, seq: np.ndarray, functions: list[str], hasher: PointerHasher,
                 zaps_known: bool) -> pd.DataFrame:
    """tdp_span records -> rows of the spans table (schema.SPANS). seq orders them with the events (by end)."""
    s = raw.view(SPAN)
    n = len(s)
    names = np.array(functions + ["?"], dtype=object)
    fid = np.minimum(s["func_id"].astype(np.int64), len(functions))

    def small(col: str) -> pd.arrays.IntegerArray:
        a = pd.array(s[col].astype(np.int64), dtype="Int64")
        a[s[col] < 0] = pd.NA
        return a

    out = pd.DataFrame(_common_span(s, seq))
    out["span_id"] = s["span_id"].astype(np.int64)
    out["function"] = pd.array(names[fid], dtype="string")
    out["end_ts"] = pd.array(s["end_ts"].astype(np.int64), dtype="Int64")
    out["duration_ns"] = pd.array((s["end_ts"] - s["start_ts"]).astype(np.int64), dtype="Int64")
    out["complete"] = np.ones(n, dtype=bool)
    out["parent_id"] = small("parent_id")
    out["depth"] = s["depth"].astype(np.int16)
    out["caller"] = pd.array([pd.NA] * n, dtype="string")
    out["vm"] = hasher.column(s["kvm"]).to_numpy()
    out["root"] = hasher.column(s["root"]).to_numpy()
    out["gfn_start"] = pd.array(s["gfn_start"], dtype="UInt64")
    out["gfn_end"] = pd.array(s["gfn_end"], dtype="UInt64")
    for a in ("zap_level", "shared", "can_yield", "flush"):
        out[a] = small(a)
    out["ret"] = pd.array(s["ret"].astype(np.int64), dtype="Int64")
    out["yields"] = s["yields"].astype(np.int32)
    out["lock_drops"] = pd.array(s["lock_drops"].astype(np.int32), dtype="Int32")
    out["away_ns"] = pd.array(s["away_ns"].astype(np.int64), dtype="Int64")
    out["max_gap_ns"] = pd.array(s["max_gap_ns"].astype(np.int64), dtype="Int64")
    out["zaps_known"] = np.full(n, zaps_known)
    z = s["zaps"].astype(np.int64)
    for i, c in enumerate(ZAP_COUNT_COLUMNS):
        col = pd.array(z[:, i], dtype="Int64")
        if not zaps_known:
            col[:] = pd.NA
        out[c] = col
    ret = pd.array(s["retained_after"].astype(np.int64), dtype="Int64")
    if not zaps_known:
        ret[:] = pd.NA
    out["retained_after"] = ret
    out["stack_id"] = small("stack_id")
    return out[SPANS.names]


def _common_span(s: np.ndarray, seq: np.ndarray) -> dict:
    return {"ts": s["start_ts"].astype(np.int64), "seq": seq, "cpu": s["cpu"].astype(np.int16),
            "tid": s["tid"].astype(np.int32), "pid": s["pid"].astype(np.int32), "comm": _comm(s["comm"])}
