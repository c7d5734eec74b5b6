"""The records of probes/record.h as numpy sees them, their decoding, the ring-buffer transport (drops
included, through probes/record_bench.bpf.c) and the settings that reach the BPF compiler. Tests that compile
BPF need root and bcc; the header's layout and every program's settings are checked in test_probe_headers.py."""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

from tdptrace.capture.hashing import PointerHasher
from tdptrace.capture.schema import SPANS
from tdptrace.live.bcc_recorder import cflag
from tdptrace.live.records import DROPS_SLOTS, EVENT, EVENT_PAGE, EVENT_YIELD, KIND, SPAN, decode_events, decode_spans
from tdptrace.metrics.summary import summarize

GETPPID_NR = 110  # x86-64


def _bpf():
    if os.geteuid() != 0:
        pytest.skip("compiling and loading BPF needs root")
    try:
        from bcc import BPF
    except ImportError:
        pytest.skip("bcc (python3-bpfcc) is not installed")
    from tdptrace.live.bcc_recorder import bcc_compat

    bcc_compat(BPF)
    return BPF


def test_defines_accept_only_integers_under_tdp_names():
    assert cflag("TDP_WITH_SPTES", True) == "-DTDP_WITH_SPTES=1"
    assert cflag("TDP_STACK_MIN_GAP_NS", 1_000_000) == "-DTDP_STACK_MIN_GAP_NS=1000000"
    with pytest.raises(TypeError):
        cflag("TDP_STACK_MIN_GAP_NS", "1; int evil")
    with pytest.raises(ValueError):
        cflag("TDP_X -DOTHER", 1)
    with pytest.raises(ValueError):
        cflag("KBUILD_MODNAME", 1)


def _events(rows: list[dict]) -> np.ndarray:
    a = np.zeros(len(rows), dtype=EVENT)
    for i, r in enumerate(rows):
        for k, v in r.items():
            a[k][i] = v
    return a


def test_decode_events_splits_kinds_into_capture_tables():
    a = _events([
        {"ts": 10, "tid": 7, "pid": 5, "kind": KIND["spte"], "level": 1, "gfn": 0x4000, "old_spte": 0x800 | 1,
         "new_spte": 0, "comm": b"qemu"},
        {"ts": 11, "tid": 7, "pid": 5, "kind": KIND["get_page"], "level": 2, "gfn": 0x200, "flags": 1,
         "comm": b"qemu"},
        {"ts": 12, "tid": 8, "pid": 5, "kind": KIND["prepare_zap"], "level": 4, "comm": b"qemu"},
        {"ts": 13, "tid": 8, "pid": 5, "kind": KIND["zap_all_fast"], "comm": b"qemu"},
    ])
    pg = a.view(EVENT_PAGE)
    pg["role"][1] = 0x2
    pg["role"][2] = 0x4
    pg["mmu_valid_gen"][3] = 3
    pg["used_pages"][3] = 0x11
    out = decode_events(a, 100, PointerHasher(b"k" * 16))
    assert set(out) == {"sptes", "page_tables", "markers"}
    assert out["sptes"]["seq"].tolist() == [100]
    assert out["sptes"]["gfn"].tolist() == [0x4000]
    assert out["page_tables"]["kind"].tolist() == ["alloc", "free"]
    assert out["page_tables"]["level"].tolist() == [2, 4]
    assert out["page_tables"]["seq"].tolist() == [101, 102]
    assert out["markers"]["event"].tolist() == ["kvm_mmu_zap_all_fast"]
    assert out["markers"]["detail"].tolist() == ["kvm-mmu-valid-gen 3 used_pages 11"]
    assert out["markers"]["comm"].tolist() == ["qemu"]


def test_decode_yields_and_spans_hash_pointers_and_keep_nulls():
    y = np.zeros(2, dtype=EVENT_YIELD)
    y["kind"] = KIND["yield"]
    y["flags"] = [0x20 | 4, 0x10]
    y["ts"] = [100, 200]
    y["ret_ts"] = [150, 0]
    y["ret"] = [1, 0]
    y["lock"] = 0xFFFF888012345678
    y["span_id"] = [3, -1]
    h = PointerHasher(b"k" * 16)
    out = decode_events(y.view(EVENT), 0, h)["yields"]
    assert out["function"].tolist() == ["__cond_resched_rwlock_write", "__cond_resched_rwlock_read"]
    assert out["ret_ts"].tolist() == [150, None] or out["ret_ts"].isna().tolist() == [False, True]
    assert out["span_id"].isna().tolist() == [False, True]
    assert out["lock"].tolist() == [h.one(0xFFFF888012345678)] * 2
    s = np.zeros(1, dtype=SPAN)
    s["start_ts"], s["end_ts"], s["span_id"], s["parent_id"] = 1000, 5000, 3, -1
    s["kvm"] = 0xFFFFC90000001000
    s["zaps"][0, 0] = 512
    s["zap_level"], s["shared"], s["can_yield"], s["flush"] = 3, 1, -1, -1
    s["max_gap_ns"], s["yields"], s["retained_after"] = 4000, 0, 32
    sp = decode_spans(s, np.array([9]), ["__tdp_mmu_zap_root"], h, zaps_known=True)
    assert list(sp.columns) == SPANS.names
    row = sp.iloc[0]
    assert (row["function"], row["duration_ns"], row["leaf_l1"], row["retained_after"]) == \
        ("__tdp_mmu_zap_root", 4000, 512, 32)
    assert row["vm"] == h.one(0xFFFFC90000001000)
    assert row["zap_level"] == 3 and sp["can_yield"].isna().all() and sp["parent_id"].isna().all()
    unknown = decode_spans(s, np.array([9]), ["__tdp_mmu_zap_root"], h, zaps_known=False)
    assert unknown["leaf_l1"].isna().all() and unknown["retained_after"].isna().all()


def _bench_program(BPF, pages: int):
    from tdptrace.live.attach import ProbePlan
    from tdptrace.live.bcc_recorder import compile_program, program_defines, program_for
    from tdptrace.live.recording import RecordOptions

    plan = ProbePlan(release=os.uname().release, tracefs=None, tracepoints=[], kprobes=False, fentry=False)
    opts = RecordOptions(output=None, event_pages=pages, span_pages=1)  # type: ignore[arg-type]
    defines = program_defines(plan, opts, bench_tgid=os.getpid())
    assert program_for(defines) == "record_bench.bpf.c"
    return compile_program(defines)


def _drops(b) -> int:
    return sum(int(n) for i in DROPS_SLOTS for n in b[b"drops"][ctypes.c_int(i)])


@pytest.mark.live
def test_ring_reader_delivers_every_record_in_order():
    BPF = _bpf()
    from tdptrace.live.transport import PAGE_SIZE, RingReader

    b = _bench_program(BPF, 256)
    try:
        r = RingReader(b[b"events"].map_fd, 256 * PAGE_SIZE, EVENT)
        got = []
        for _ in range(5):
            for _ in range(5000):
                os.getppid()
            got.append(r.drain())
        a = np.concatenate(got)
        mine = a[a["gfn"] == GETPPID_NR]
        assert len(mine) == 25_000
        assert (mine["kind"] == KIND["syscall"]).all() and (mine["pid"] == os.getpid()).all()
        assert (np.diff(a["ts"].astype(np.int64)) >= 0).all()
        assert _drops(b) == 0
        assert r.pending_bytes() >= 0
        r.close()
    finally:
        b.cleanup()


@pytest.mark.live
def test_a_full_ring_buffer_counts_every_lost_record():
    BPF = _bpf()
    from tdptrace.live.transport import PAGE_SIZE, RingReader

    b = _bench_program(BPF, 1)  # one page: 56 records of 72 bytes
    try:
        r = RingReader(b[b"events"].map_fd, PAGE_SIZE, EVENT)
        n0 = len(r.drain())
        for _ in range(1000):
            os.getppid()
        kept = r.drain()
        assert len(kept) == PAGE_SIZE // 72
        # every syscall of this process since the first drain was either delivered or counted as dropped
        assert 1000 <= len(kept) + _drops(b) <= 1000 + 16
        assert n0 < PAGE_SIZE // 72
    finally:
        b.cleanup()


def test_summary_reads_the_recorders_in_kernel_counters_without_spte_rows(tmp_path):
    from tdptrace.capture import Capture, CaptureMeta, CaptureWriter

    meta = CaptureMeta(source={"kind": "bcc"}, kernel={"release": "6.1.0-56-amd64"})
    meta.events = {"counts": {}, "unknown": {}, "zap_totals": {"1": {"leaf": 48644, "nonleaf": 0},
                                                               "2": {"leaf": 0, "nonleaf": 64}},
                   "retained_at_end": {"1": 32}, "retained_peak": 40}
    with CaptureWriter(tmp_path / "c.tdp", meta):
        pass
    s = summarize(Capture.open(tmp_path / "c.tdp"))
    assert s["zaps_by_level"] == {"1": {"leaf": 48644, "nonleaf": 0}, "2": {"leaf": 0, "nonleaf": 64}}
    r = s["page_tables"]["retained_nonleaf"]
    assert (r["at_end"], r["by_level_at_end"], r["bytes_at_end"], r["peak"], r["source"]) == \
        (32, {"1": 32}, 32 * 4096, 40, "in-kernel counters")


@pytest.mark.live
def test_perf_buffer_fallback_delivers_every_record():
    """Kernels before 5.8 get the perf buffer; this kernel has both, so the fallback is checked here."""
    _bpf()
    from tdptrace.live.attach import ProbePlan
    from tdptrace.live.bcc_recorder import compile_program, program_defines
    from tdptrace.live.recording import RecordOptions
    from tdptrace.live.transport import PerfReader

    plan = ProbePlan(release="5.4.0", tracefs=None, tracepoints=[], kprobes=False, fentry=False)
    d = program_defines(plan, RecordOptions(output=None, event_pages=64, span_pages=1),  # type: ignore[arg-type]
                        bench_tgid=os.getpid())
    assert d["TDP_PERF_BUFFER"] == 1
    b = compile_program(d)
    try:
        r = PerfReader(b[b"events"], EVENT, 64)
        b[b"drops"].clear()  # submits before the buffer was open failed (as the recorder does)
        got = []
        for _ in range(4):
            for _ in range(1000):
                os.getppid()
            got.append(r.drain())
        a = np.concatenate(got)
        assert int((a["gfn"] == GETPPID_NR).sum()) == 4000
        assert r.lost == 0 and _drops(b) == 0
    finally:
        b.cleanup()


def test_recorder_modules_import_neither_ui_nor_bcc():
    import subprocess
    import sys

    mods = ["tdptrace.live.attach", "tdptrace.live.bcc_recorder", "tdptrace.live.ftrace_backend",
            "tdptrace.live.records", "tdptrace.live.recording", "tdptrace.live.transport"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods) +
            "print(','.join(m for m in ('typer', 'matplotlib', 'rich', 'bcc') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
