"""The in-kernel aggregation of probes/record.bpf.c gives EXPECTED.md's figures for the reference traces.

This host has no TDP MMU and no kprobes, so the test replays each reference trace (the lab's 6.1 recordings)
event by event into the very BPF functions the kprobes and tracepoints call: the test process makes
getpid() syscalls carrying the event to probes/record_selftest.bpf.c, which holds nothing but that syscall's
handler around the recorder's own headers, and the kernel aggregates them - zaps by level, spans, yields,
max gaps, retained tables after each span - exactly as it would live.
"""
from __future__ import annotations

import ctypes
import json
import os

import numpy as np
import pandas as pd
import pytest
from refdata import SHARED_DATA, reference_trace

from tdptrace.live.records import (
    DROPS_SLOTS,
    SELFTEST_MAGIC,
    SELFTEST_OPS,
    STAT_RETAINED_PEAK,
    YIELD_FUNCTION,
    ZAP_COUNTERS,
)

SYS_GETPID = 39
OPS = SELFTEST_OPS
SPAN_FUNCTIONS = [("tdp_mmu_zap_leafs", ("kvm", "root", "start", "end", "can_yield", "flush")),
                  ("__tdp_mmu_zap_root", ("kvm", "root", "shared", "zap_level"))]
YIELD_FLAVOUR = {name: bit for bit, name in YIELD_FUNCTION.items()
                 if name in ("__cond_resched_rwlock_read", "__cond_resched_rwlock_write")}  # 6.1's yield points


def replay_ops(path) -> np.ndarray:
    """The trace as (op, a1, a2, a3, a4) rows in trace order: SPTE changes, span and yield entries/returns."""
    from tdptrace.importers import reader, tracefs
    from tdptrace.importers.decode import decode

    names = [n for n, _ in SPAN_FUNCTIONS]
    parts, seq = [], 0
    for block in reader.blocks(path):
        if not block.data:
            continue
        parsed = tracefs.parse_lines(tracefs.split_lines(block.data), seq)
        seq += parsed.events.num_rows
        chunk = decode(parsed.events)
        s = chunk.sptes
        a4 = s["level"].to_numpy(np.uint64) | (s["as_id"].to_numpy(np.uint64) << np.uint64(8)) \
            | (s["tid"].to_numpy(np.uint64) << np.uint64(16))
        parts.append(pd.DataFrame({"seq": s["seq"], "op": OPS["spte"], "a1": s["gfn"].to_numpy(np.uint64),
                                   "a2": s["old_spte"].to_numpy(np.uint64), "a3": s["new_spte"].to_numpy(np.uint64),
                                   "a4": a4}))
        c = chunk.calls
        z = c[c["function"].isin(names)]
        fid = z["function"].map({n: i for i, n in enumerate(names)}).to_numpy(np.uint64)
        ret = z["is_return"].to_numpy()
        parts.append(pd.DataFrame({
            "seq": z["seq"], "op": np.where(ret, OPS["span_return"], OPS["span_entry"]),
            "a1": z["tid"].to_numpy(np.uint64), "a2": z["ts"].to_numpy(np.uint64), "a3": fid,
            "a4": np.where(ret, z["arg_ret"].fillna(0).to_numpy(np.int64), z["arg_zap_level"].fillna(0)
                           .to_numpy(np.int64)).astype(np.uint64)}))
        y = c[c["function"].isin(list(YIELD_FLAVOUR))]
        yret = y["is_return"].to_numpy()
        parts.append(pd.DataFrame({
            "seq": y["seq"], "op": np.where(yret, OPS["yield_return"], OPS["yield_entry"]),
            "a1": y["tid"].to_numpy(np.uint64), "a2": y["ts"].to_numpy(np.uint64),
            "a3": np.where(yret, y["arg_ret"].fillna(0).to_numpy(np.int64), y["arg_lock"].fillna(0)
                           .to_numpy(np.int64)).astype(np.uint64),
            "a4": y["function"].map(YIELD_FLAVOUR).to_numpy(np.uint64)}))
    ops = pd.concat(parts, ignore_index=True).sort_values("seq", kind="stable")
    return ops[["op", "a1", "a2", "a3", "a4"]].to_numpy(np.uint64)


def _replay(b, ops: np.ndarray) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    call = libc.syscall
    call.argtypes = [ctypes.c_long] + [ctypes.c_uint64] * 6
    for op, a1, a2, a3, a4 in ops.tolist():  # one syscall per event: the events are the test's input
        call(SYS_GETPID, op, a1, a2, a3, a4, SELFTEST_MAGIC)


@pytest.mark.live
@pytest.mark.parametrize("name", ["k61-128m", "k61-256m-thp", "k61-512m-hog"])
def test_kernel_aggregation_of_a_replayed_trace_gives_expected(name, reference_captures):
    if os.geteuid() != 0:
        pytest.skip("loading BPF needs root")
    try:
        from bcc import BPF  # noqa: F401
    except ImportError:
        pytest.skip("bcc (python3-bpfcc) is not installed")
    from tdptrace.capture.hashing import PointerHasher
    from tdptrace.live.attach import ProbePlan, SpanFunction
    from tdptrace.live.bcc_recorder import compile_program, program_defines, program_for
    from tdptrace.live.recording import RecordOptions
    from tdptrace.live.records import EVENT, SPAN, decode_events, decode_spans
    from tdptrace.live.transport import PAGE_SIZE, RingReader

    ops = replay_ops(reference_trace(name))
    plan = ProbePlan(release="6.1.0-56-amd64", tracefs=None, tracepoints=["kvm_tdp_mmu_spte_changed"],
                     kprobes=True, fentry=False,
                     span_functions=[SpanFunction(n, n, p) for n, p in SPAN_FUNCTIONS],
                     yield_functions=list(YIELD_FLAVOUR))
    opts = RecordOptions(output=None, event_pages=64, span_pages=16)  # type: ignore[arg-type]
    defines = program_defines(plan, opts, selftest_tgid=os.getpid())
    assert program_for(defines) == "record_selftest.bpf.c"
    b = compile_program(defines)
    try:
        args = b[b"func_args"]
        for i, f in enumerate(plan.span_functions):
            args[ctypes.c_int(i)] = args.Leaf.from_buffer_copy(f.args_record().tobytes())
        spans_rb = RingReader(b[b"spans"].map_fd, 16 * PAGE_SIZE, SPAN)
        events_rb = RingReader(b[b"events"].map_fd, 64 * PAGE_SIZE, EVENT)
        _replay(b, ops)
        raw = spans_rb.drain()
        yields = decode_events(events_rb.drain(), 0, PointerHasher()).get("yields")
        ret = b[b"retained"]
        retained_end = {str(lv): int(ret[ctypes.c_int(lv)].value) for lv in range(1, 6)
                        if int(ret[ctypes.c_int(lv)].value)}
        peak = int(b[b"stats"][ctypes.c_int(STAT_RETAINED_PEAK)].value)
        zt = b[b"zap_totals"]
        totals = [sum(int(v) for v in zt[ctypes.c_int(i)]) for i in range(ZAP_COUNTERS)]
        drops = sum(int(n) for i in DROPS_SLOTS for n in b[b"drops"][ctypes.c_int(i)])
    finally:
        b.cleanup()
    want = json.loads((SHARED_DATA / "expected" / f"{name}.json").read_text())
    assert drops == 0
    got_zaps = {str(lv): {"leaf": totals[2 * (lv - 1)], "nonleaf": totals[2 * (lv - 1) + 1]} for lv in range(1, 6)
                if totals[2 * (lv - 1)] or totals[2 * (lv - 1) + 1]}
    assert got_zaps == want["zaps_by_level"]
    spans = decode_spans(raw, np.arange(len(raw)), [n for n, _ in SPAN_FUNCTIONS], PointerHasher(), True)
    spans = spans.sort_values("ts", kind="stable")
    got = [{"function": r.function, "start_ns": int(r.ts), "duration_ns": int(r.duration_ns),
            "yields": int(r.yields), "max_gap_ns": int(r.max_gap_ns), "retained_nonleaf_after": int(r.retained_after)}
           for r in spans.itertuples()]
    assert got == want["spans"]
    assert int(spans["yields"].sum()) == want["yields"]["count"]
    assert (0 if yields is None else len(yields)) == want["yields"]["count"]
    # zaps by level inside each span: the same as tdptrace.capture.spans derives from the imported trace
    import tdptrace
    from tdptrace.capture.schema import ZAP_COUNT_COLUMNS

    imported = tdptrace.open(reference_captures[name]).spans.sort_values("ts", kind="stable")
    assert spans[ZAP_COUNT_COLUMNS].to_numpy(np.int64).tolist() == \
        imported[ZAP_COUNT_COLUMNS].to_numpy(np.int64).tolist()
    assert spans[ZAP_COUNT_COLUMNS].to_numpy(np.int64).sum() > 0
    # retained tables at the end and at their peak: as tdptrace.metrics.retained finds them in the SPTE rows
    from tdptrace.metrics.retained import retained_summary

    r = retained_summary(tdptrace.open(reference_captures[name]))
    assert retained_end == r["by_level_at_end"]
    assert peak == r["peak"] > 0
