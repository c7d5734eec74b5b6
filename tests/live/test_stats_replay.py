"""The in-kernel counting of probes/stats.bpf.c, fed the SPTE changes of real 6.1 traces through
BPF_PROG_TEST_RUN (probes/stats_replay.bpf.c: an XDP program around the same counting header): zaps by level
and retained tables must equal EXPECTED.md and tdptrace's own analysis.

This host's KVM has no TDP MMU (kvm.tdp_mmu=N), so the kvm_tdp_mmu_spte_changed handler never fires here;
replaying recorded changes through the same C function is how its arithmetic is checked on real data.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest
from refdata import expected

from tdptrace.kernel.spte import Encoding
from tdptrace.live.stats import _SLICES, REPLAY_EVENT, REPLAY_PROGRAM, STATS_H, STATS_WORDS, stats_defines
from tdptrace.metrics.summary import summarize

REPLAY_VM = 0xFFFFFFF0  # above any pid
SYS_BPF = 321  # x86-64
BPF_PROG_TEST_RUN = 10
PAD = STATS_H["STATS_REPLAY_PAD"]
EVENT = REPLAY_EVENT


class ProgTestRunAttr(ctypes.Structure):
    """union bpf_attr, the BPF_PROG_TEST_RUN member (include/uapi/linux/bpf.h)."""

    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32), ("data_size_in", ctypes.c_uint32),
                ("data_size_out", ctypes.c_uint32), ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32), ("ctx_size_in", ctypes.c_uint32),
                ("ctx_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32)]


class Replayer:
    """probes/stats_replay.bpf.c with the settings `top` uses on a 6.1 host; feeds SPTE changes one test run
    each."""

    def __init__(self) -> None:
        from bcc import BPF

        from tdptrace.live.programs import load

        self.bpf = load(REPLAY_PROGRAM, stats_defines(Encoding.PRESENT_BIT, spans=False, tdp_tracepoint=True), BPF)
        self.fd = self.bpf.load_func(b"replay", BPF.XDP).fd
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.out = ctypes.create_string_buffer(256)

    def feed(self, events: np.ndarray) -> None:
        pkts = np.zeros((len(events), PAD + EVENT.itemsize), dtype=np.uint8)
        pkts[:, PAD:] = events.view(np.uint8).reshape(len(events), EVENT.itemsize)
        base = pkts.ctypes.data
        size = pkts.shape[1]
        attr = ProgTestRunAttr(prog_fd=self.fd, data_size_in=size, data_out=ctypes.addressof(self.out),
                        data_size_out=len(self.out), repeat=1)
        for i in range(len(events)):  # one test run per SPTE change, in capture order (this is the kernel's loop)
            attr.data_in = base + i * size
            attr.data_size_out = len(self.out)
            if self.libc.syscall(SYS_BPF, BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            assert attr.retval == 2, f"replay rejected event {i}"  # XDP_PASS

    def words(self) -> np.ndarray:
        t = self.bpf[b"stats"]
        per_cpu = t[t.Key(REPLAY_VM)]
        raw = np.frombuffer(b"".join(bytes(v) for v in per_cpu), dtype=np.uint64).reshape(-1, STATS_WORDS)
        return raw.sum(axis=0, dtype=np.uint64)

    def close(self) -> None:
        self.bpf.cleanup()


def _events(sptes) -> np.ndarray:
    s = sptes.sort_values("seq", kind="stable")
    ev = np.zeros(len(s), dtype=EVENT)
    for col in ("gfn", "old_spte", "new_spte", "level", "as_id"):
        ev[col] = s[col].to_numpy()
    ev["vm"] = REPLAY_VM
    return ev


@pytest.mark.live
@pytest.mark.parametrize("name,from_first_span", [("k61-128m", False), ("k61-256m-thp", False), ("k61-128m", True)])
def test_in_kernel_counts_match_the_reference_trace(name, from_first_span, reference_captures):
    """from_first_span: attached after the guest populated its memory, as `serve` on a running host is; the
    tables then exist before the program looked, and must still be counted right."""
    if os.geteuid() != 0:
        pytest.skip("needs root to load BPF programs")
    pytest.importorskip("bcc", reason="bcc (python3-bpfcc) is not importable")
    import tdptrace

    cap = tdptrace.open(reference_captures[name])
    summary = summarize(cap)
    sptes = cap.sptes.sort_values("seq", kind="stable")
    if from_first_span:
        sptes = sptes[sptes["ts"] >= summary["spans"][0]["start_ns"]]
    ts = sptes["ts"].to_numpy()
    events = _events(sptes)
    ends = [sp["start_ns"] + sp["duration_ns"] for sp in summary["spans"]]
    r = Replayer()
    try:
        done = 0
        retained_after = []
        for end in ends:  # replay up to each span's end and read the retained gauge there
            upto = int(np.searchsorted(ts, end, side="right"))
            r.feed(events[done:upto])
            done = upto
            retained_after.append(int(r.words()[_SLICES["retained"]].view(np.int64).sum()))
        r.feed(events[done:])
        w = r.words()
    finally:
        r.close()
    assert retained_after == [sp["retained_nonleaf_after"] for sp in expected(name)["spans"]]
    zl, zn = w[_SLICES["zap_leaf"]], w[_SLICES["zap_nonleaf"]]
    got = {str(lv): {"leaf": int(zl[lv]), "nonleaf": int(zn[lv])} for lv in range(1, 6) if zl[lv] or zn[lv]}
    assert got == expected(name)["zaps_by_level"]  # populating zaps nothing: all zaps are inside the spans
    assert int(w[_SLICES["spte_changes"]][0]) == len(events)
    end_by_level = {str(lv): int(n) for lv, n in enumerate(w[_SLICES["retained"]].view(np.int64)) if n}
    assert end_by_level == summary["page_tables"]["retained_nonleaf"]["by_level_at_end"]
