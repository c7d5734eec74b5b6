"""Fixed snapshots of the in-kernel counters and their Prometheus text, for exporter and deploy tests."""
from __future__ import annotations

import time

import numpy as np

from tdptrace.live.exporter import Published, StatsCollector
from tdptrace.live.stats import _SLICES, STATS_WORDS, Features, Snapshot, VmTotals


def families(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fams: dict, family: str, sample: str, **labels) -> list:
    return [s for s in fams[family].samples if s.name == sample
            and all(s.labels.get(k) == v for k, v in labels.items())] if family in fams else []


def _snapshot(spans: bool) -> Snapshot:
    w = np.zeros(STATS_WORDS, dtype=np.uint64)
    w[_SLICES["zap_leaf"]][1] = 500
    w[_SLICES["zap_nonleaf"]][2] = 3
    w[_SLICES["pt_alloc"]][1] = 7
    w[_SLICES["pt_free"]][4] = 2
    w[_SLICES["zap_all_fast"]] = 4
    w[_SLICES["retained"]][1] = 5
    w[_SLICES["spans"]] = 9
    w[_SLICES["yields"]] = 6
    hist = w[_SLICES["gap_hist"]]
    hist[10] = 2   # [1024, 2048) ns: below the first bucket (8.192 us)
    hist[16] = 3   # [65.5, 131) us
    hist[27] = 1   # [134, 268) ms
    w[_SLICES["gap_sum_ns"]] = 200_000_000
    w[_SLICES["gap_max_ns"]] = 150_000_000
    feats = Features(spans=spans, spans_reason="" if spans else "no kprobes here", tdp_tracepoint=True, tdp_mmu=True)
    return Snapshot(1, time.time(), {4242: VmTotals(4242, "qemu-system-x86", w)}, {"vm_map_full": 1}, feats)


def _scrape_text(snap: Snapshot) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatsCollector(lambda: Published(snap, "6.1.0-56-amd64", 3, 0, 0.001)))
    return generate_latest(reg).decode()
