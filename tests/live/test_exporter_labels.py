"""Exporter series and labels: reason codes, not prose; figures the host cannot measure have no series (never
0); the windowed maximum gauge the alerts use holds the longest gap of the last minute, across reads."""
from __future__ import annotations

import time

from exporterfake import _scrape_text, _snapshot, families, samples

from tdptrace.live.exporter import NO_KPROBES, Poller, StatsCollector
from tdptrace.live.stats import Features, Snapshot, VmTotals


def test_reason_labels_are_codes():
    fams = families(_scrape_text(_snapshot(spans=False)))
    reasons = {s.labels["feature"]: s.labels["reason"] for s in fams["tdptrace_feature_available"].samples}
    assert reasons["gaps"] == reasons["spans"] == NO_KPROBES and reasons["zaps"] == ""
    assert all(r == "" or r.replace("_", "").isalpha() and len(r) <= 20 for r in reasons.values())


def test_unmeasurable_zaps_have_no_series():
    snap = _snapshot(spans=True)
    snap = Snapshot(snap.mono_ns, snap.unix_s, snap.vms, snap.lost,
                    Features(spans=True, spans_reason="", tdp_tracepoint=True, tdp_mmu=False))
    fams = families(_scrape_text(snap))
    assert "tdptrace_spte_zaps" not in fams and "tdptrace_spte_changes" not in fams
    assert "tdptrace_retained_page_tables" not in fams
    z = {s.labels["feature"]: (s.value, s.labels["reason"]) for s in fams["tdptrace_feature_available"].samples}
    assert z["zaps"] == (0.0, "tdp_mmu_off") and z["page_tables"] == (1.0, "")
    assert samples(fams, "tdptrace_page_tables_allocated", "tdptrace_page_tables_allocated_total")  # still served


def test_window_max_keeps_the_longest_gap_of_the_last_minute():
    base = _snapshot(spans=True)
    gaps = iter([150_000_000, 2_000_000, 0, 1_000_000])

    def read():
        v = VmTotals(4242, "qemu-system-x86", base.vms[4242].words.copy(), interval_max_gap_ns=next(gaps))
        return Snapshot(time.monotonic_ns(), time.time(), {4242: v}, {}, base.features)

    p = Poller(read, "6.1.0-56-amd64", 1.0)
    for _ in range(3):
        p.poll_once()

    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatsCollector(p.current))
    fams = families(generate_latest(reg).decode())
    (s,) = samples(fams, "tdptrace_mmu_lock_gap_max_1m_seconds", "tdptrace_mmu_lock_gap_max_1m_seconds", vm="4242")
    assert s.value == 0.15  # the 150 ms gap two reads ago, though the last read saw none
    p._recent = type(p._recent)((t - 120, v) for t, v in p._recent)  # those reads are now two minutes old
    p.poll_once()
    assert p.current().window_max_gap_ns == {4242: 1_000_000}
