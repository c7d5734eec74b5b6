"""The capture format: one Parquet table per record kind plus meta.json (documented in docs/capture-format.md).

A capture is a directory NAME.tdp/ holding meta.json and one sub-directory per table, each a set of
chunk files part-NNNNNN.parquet. Every chunk is a complete Parquet file written under a temporary name and
renamed into place, so a writer killed half-way leaves every finished chunk readable. Any Parquet reader
(pandas, pyarrow, DuckDB: read_parquet('NAME.tdp/spans/*.parquet')) reads the tables.

Every event table shares the columns ts (ns on the capture's clock), seq (global order of the events in the
capture, breaks ties between equal timestamps), cpu, tid, pid (-1 where unknown) and comm.
Kernel pointers (struct kvm, roots, locks) are never stored raw: they are keyed hashes (see hashing.py).
"""
from __future__ import annotations

import re

import pyarrow as pa

FORMAT_NAME = "tdptrace-capture"
FORMAT_VERSION = 1
META_FILE = "meta.json"

MAX_LEVEL = 5
LEVELS = range(1, MAX_LEVEL + 1)

COMMON = [
    pa.field("ts", pa.int64(), nullable=False),
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("cpu", pa.int16(), nullable=False),
    pa.field("tid", pa.int32(), nullable=False),
    pa.field("pid", pa.int32(), nullable=False),
    pa.field("comm", pa.string(), nullable=False),
]

# kvm_tdp_mmu_spte_changed (or the 5.10 __handle_changed_spte kprobe): one row per SPTE change.
SPTES = pa.schema(COMMON + [
    pa.field("as_id", pa.uint8(), nullable=False),
    pa.field("gfn", pa.uint64(), nullable=False),
    pa.field("level", pa.uint8(), nullable=False),
    pa.field("old_spte", pa.uint64(), nullable=False),
    pa.field("new_spte", pa.uint64(), nullable=False),
])

ZAP_COUNT_COLUMNS = [f"{kind}_l{level}" for level in LEVELS for kind in ("leaf", "nonleaf")]

# One row per call of a zap function (docs/metrics.md "Zap span"). ts = entry; end_ts/duration_ns null when the
# return was not observed (complete = False). Aggregates (yields, gaps, zaps by level) are computed in the
# kernel by the live recorder and by tdptrace.capture.spans for imported traces: the same definition either way.
SPANS = pa.schema(COMMON + [
    pa.field("span_id", pa.int64(), nullable=False),
    pa.field("function", pa.string(), nullable=False),
    pa.field("end_ts", pa.int64()),
    pa.field("duration_ns", pa.int64()),
    pa.field("complete", pa.bool_(), nullable=False),
    pa.field("parent_id", pa.int64()),
    pa.field("depth", pa.int16(), nullable=False),
    pa.field("caller", pa.string()),
    pa.field("vm", pa.string()),
    pa.field("root", pa.string()),
    pa.field("gfn_start", pa.uint64()),
    pa.field("gfn_end", pa.uint64()),
    pa.field("zap_level", pa.int8()),
    pa.field("shared", pa.int8()),
    pa.field("can_yield", pa.int8()),
    pa.field("flush", pa.int8()),
    pa.field("ret", pa.int64()),
    pa.field("yields", pa.int32(), nullable=False),
    pa.field("lock_drops", pa.int32()),
    pa.field("away_ns", pa.int64()),
    pa.field("max_gap_ns", pa.int64()),
    pa.field("zaps_known", pa.bool_(), nullable=False),
] + [pa.field(c, pa.int64()) for c in ZAP_COUNT_COLUMNS] + [
    pa.field("retained_after", pa.int64()),
    pa.field("stack_id", pa.int64()),
])

# One row per call of a yield point (__cond_resched_rwlock_read/write, __cond_resched_lock).
# span_id is the innermost zap span of the same task that contains it; null = outside any span.
YIELDS = pa.schema(COMMON + [
    pa.field("function", pa.string(), nullable=False),
    pa.field("ret_ts", pa.int64()),
    pa.field("ret", pa.int64()),
    pa.field("span_id", pa.int64()),
    pa.field("lock", pa.string()),
])

# kvm_mmu_get_page (kind "alloc" when created, "lookup" otherwise) and kvm_mmu_prepare_zap_page ("free").
PAGE_TABLES = pa.schema(COMMON + [
    pa.field("kind", pa.string(), nullable=False),
    pa.field("gfn", pa.uint64(), nullable=False),
    pa.field("level", pa.uint8(), nullable=False),
    pa.field("role", pa.uint32()),
    pa.field("root_count", pa.int32()),
    pa.field("unsync", pa.int8()),
    pa.field("mmu_valid_gen", pa.int32()),
])

# Everything else worth keeping in time order: kvm_mmu_zap_all_fast, kvm_mmu_split_huge_page, calls of
# functions traced on entry only (kvm_tdp_mmu_zap_all, put_root...), unknown events. detail = the raw fields.
MARKERS = pa.schema(COMMON + [
    pa.field("event", pa.string(), nullable=False),
    pa.field("function", pa.string()),
    pa.field("detail", pa.string()),
])

# Where events were lost: one row per lost-event marker or per-CPU drop counter reading.
LOST = pa.schema([
    pa.field("ts", pa.int64()),
    pa.field("seq", pa.int64()),
    pa.field("cpu", pa.int16(), nullable=False),
    pa.field("count", pa.int64(), nullable=False),
])

# Waiters (record --waiters): one row per wait. kind "lock": a lock:contention_begin .. contention_end pair of
# one task (5.19+), lock = the keyed hash of the lock's address (a VM's mmu_lock is its struct kvm, so the
# hash equals spans.vm and yields.lock), mode "read"/"write" for rwlocks (flags SPIN|READ, SPIN|WRITE).
# kind "fault": kvm:kvm_page_fault .. the same vCPU thread's next kvm:kvm_entry, vcpu = its vcpu_id; a fault
# KVM retried on the same address is one wait up to the entry after the last retry (retries = how many).
# ts = start of the wait; end_ts/wait_ns null when it had not ended when the capture did.
WAITS = pa.schema(COMMON + [
    pa.field("kind", pa.string(), nullable=False),
    pa.field("end_ts", pa.int64()),
    pa.field("wait_ns", pa.int64()),
    pa.field("lock", pa.string()),
    pa.field("mode", pa.string()),
    pa.field("flags", pa.int32()),
    pa.field("vcpu", pa.int32()),
    pa.field("address", pa.uint64()),
    pa.field("error_code", pa.uint64()),
    pa.field("retries", pa.int32()),
])

# Kernel stacks kept with --stacks: one row per frame, stack_id matches spans.stack_id.
STACKS = pa.schema([
    pa.field("stack_id", pa.int64(), nullable=False),
    pa.field("depth", pa.int16(), nullable=False),
    pa.field("symbol", pa.string(), nullable=False),
])

TABLES: dict[str, pa.Schema] = {
    "sptes": SPTES,
    "spans": SPANS,
    "yields": YIELDS,
    "page_tables": PAGE_TABLES,
    "markers": MARKERS,
    "lost": LOST,
    "stacks": STACKS,
    "waits": WAITS,
}

# What one row of each table is, in a line (the docstrings of Capture, Frames and Batch attributes say it).
TITLES: dict[str, str] = {
    "sptes": "SPTE changes, one row each (live: recorded with sptes=True)",
    "spans": "Zap spans, one row per call of a zap function",
    "yields": "Yield points (cond_resched) called while zapping, one row per call",
    "page_tables": "Page-table allocations, lookups and frees",
    "markers": "Fast zaps, huge-page splits and other events, in time order",
    "lost": "Where the trace said events were lost",
    "stacks": "Kernel stacks of long spans (stacks=True), one row per frame",
    "waits": "mmu_lock contention and vCPU fault waits (waiters=True), one row per wait",
}

# Units of columns by name; times by their suffix (ts and *_ts are instants on the capture clock, *_ns are
# durations). Every other column is a plain value: an id, a name, a flag or a hash.
_GFN = "guest frame number (4 KiB pages)"
_UNITS: dict[str, str] = {
    "gfn": _GFN, "gfn_start": _GFN, "gfn_end": _GFN, "level": "1 = 4K, 2 = 2M, 3 = 1G, 4 = 512G, 5",
    "zap_level": "level", "yields": "count", "lock_drops": "count", "retained_after": "page tables",
    "root_count": "count", "retries": "count", "count": "events", "old_spte": "SPTE bits", "new_spte": "SPTE bits",
}


def unit(column: str) -> str:
    """The unit of a column ('' for plain values)."""
    if column == "ts" or column.endswith("_ts"):
        return "ns, capture clock"
    if column.endswith("_ns"):
        return "ns"
    if re.fullmatch(r"(non)?leaf_l\d", column):
        return "zaps"
    return _UNITS.get(column, "")
