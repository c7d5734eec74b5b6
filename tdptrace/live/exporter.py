"""Prometheus exporter for the in-kernel statistics (tdptrace/live/stats.py).

A background thread reads the BPF maps every `interval` seconds and publishes an immutable `Published`
value; a scrape only turns the latest one into metric families. Scrapes never touch the maps or take a lock
the reader holds, so a slow or frequent scraper cannot stall the reading, and a stuck reader shows up as a
growing time() - tdptrace_snapshot_timestamp_seconds instead of a hanging scrape. Families are built once per
snapshot and reused by every scrape of it.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from tdptrace import __version__
from tdptrace.live.stats import STATS_LEVELS, Snapshot

# Histogram buckets: log2 ns buckets 2^13 ns (8.2 us) .. 2^34 ns (17.2 s), covering 10 us .. 10 s.
FIRST_BUCKET_LOG2 = 13
LAST_BUCKET_LOG2 = 34
PREFIX = "tdptrace"
# The windowed maximum gauge: the longest hold in the last WINDOW_S seconds, whatever the scrape interval
# (up to the window) - the series alerts compare with round thresholds, exactly.
WINDOW_S = 60.0

# Short, stable reason codes for tdptrace_feature_available{reason=...} (prose stays in `doctor`).
NO_KPROBES = "no_kprobes"
NOT_ATTACHED = "not_attached"
NO_TDP_TRACEPOINT = "no_tdp_tracepoint"
TDP_MMU_OFF = "tdp_mmu_off"


def reason_code(feature: str, feat: Any) -> str:
    """Why `feature` cannot be measured here, as a code ('' when it can)."""
    if feature not in feat.unavailable():
        return ""
    if feature in ("spans", "yields", "gaps"):
        why = (feat.spans_reason or "").lower()
        return NO_KPROBES if "kprobe" in why or "fentry" in why else NOT_ATTACHED
    return NO_TDP_TRACEPOINT if not feat.tdp_tracepoint else TDP_MMU_OFF


@dataclass(frozen=True)
class Published:
    """What a scrape serves: the latest snapshot and where it came from."""

    snapshot: Snapshot
    kernel: str
    reads: int
    read_errors: int
    last_read_seconds: float
    window_max_gap_ns: dict[int, int] = field(default_factory=dict)  # per VM, over the last WINDOW_S seconds


def gap_histogram(hist: Any, sum_ns: int) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets (le in seconds) from log2 ns counts, and the sum in seconds."""
    import numpy as np

    h = np.asarray(hist, dtype=np.float64)
    cum = np.cumsum(h)
    # Bucket b holds [2^b, 2^(b+1)) ns, so everything below 2^k ns is buckets 0..k-1.
    buckets = [(_le(2.0 ** k / 1e9), float(cum[k - 1])) for k in range(FIRST_BUCKET_LOG2, LAST_BUCKET_LOG2 + 1)]
    buckets.append(("+Inf", float(cum[-1]) if len(cum) else 0.0))
    return buckets, sum_ns / 1e9


def _le(seconds: float) -> str:
    return repr(float(f"{seconds:.12g}"))


class StatsCollector:
    """A prometheus_client collector over the latest Published value."""

    def __init__(self, current: Callable[[], Optional[Published]]) -> None:
        self.current = current
        self._cache: tuple[Optional[Published], list] = (None, [])

    def describe(self) -> list:
        return []  # families depend on what the kernel supports; skip registry-time collection

    def collect(self) -> Iterator[Any]:
        """The families of the latest snapshot, built once per snapshot however often it is scraped."""
        pub = self.current()
        cached_pub, fams = self._cache
        if pub is None or pub is not cached_pub:
            fams = list(self._families(pub))
            self._cache = (pub, fams)  # one tuple assignment: concurrent scrapes see old or new, never half
        return iter(fams)

    def _families(self, pub: Optional[Published]) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        info = InfoMetricFamily(f"{PREFIX}_build", "tdptrace version and the kernel it watches",
                                labels=["version", "kernel", "tdp_mmu", "spans"])
        if pub is None:
            info.add_metric([__version__, "", "", ""], {})
            yield info
            return
        snap, feat = pub.snapshot, pub.snapshot.features
        tdp = "" if feat.tdp_mmu is None else ("Y" if feat.tdp_mmu else "N")
        info.add_metric([__version__, pub.kernel, tdp, "1" if feat.spans else "0"], {})
        yield info
        unavailable = feat.unavailable()
        avail = GaugeMetricFamily(f"{PREFIX}_feature_available",
                                  "1 when this host lets tdptrace measure the feature, else 0 (reason: a code, "
                                  "see docs/oncall.md); unmeasurable figures have no series at all",
                                  labels=["feature", "reason"])
        for f in ("zaps", "page_tables", "zap_all_fast", "spans", "yields", "gaps", "retained"):
            avail.add_metric([f, reason_code(f, feat)], 0.0 if f in unavailable else 1.0)
        yield avail
        vm_labels = ["vm", "comm"]
        zaps = CounterMetricFamily(f"{PREFIX}_spte_zaps", "SPTEs zapped (present -> not present) by level and kind",
                                   labels=vm_labels + ["level", "kind"])
        alloc = CounterMetricFamily(f"{PREFIX}_page_tables_allocated", "page tables created (kvm_mmu_get_page)",
                                    labels=vm_labels + ["level"])
        freed = CounterMetricFamily(f"{PREFIX}_page_tables_freed", "page tables zapped (kvm_mmu_prepare_zap_page)",
                                    labels=vm_labels + ["level"])
        fast = CounterMetricFamily(f"{PREFIX}_zap_all_fast", "fast zaps of all roots (memslot delete/move)",
                                   labels=vm_labels)
        changes = CounterMetricFamily(f"{PREFIX}_spte_changes", "every kvm_tdp_mmu_spte_changed event",
                                      labels=vm_labels)
        retained = GaugeMetricFamily(f"{PREFIX}_retained_page_tables",
                                     "non-leaf page tables still linked with no present entries, by level",
                                     labels=vm_labels + ["level"])
        spans = CounterMetricFamily(f"{PREFIX}_zap_spans", "outermost calls of the TDP zap loops", labels=vm_labels)
        yields = CounterMetricFamily(f"{PREFIX}_yield_points", "cond_resched calls inside zap spans",
                                     labels=vm_labels)
        gaps = HistogramMetricFamily(f"{PREFIX}_mmu_lock_gap_seconds",
                                     "time mmu_lock was held without offering to yield (span start or yield "
                                     "return to the next yield or the span end)", labels=vm_labels)
        gmax = GaugeMetricFamily(f"{PREFIX}_mmu_lock_gap_max_seconds", "longest gap since the exporter started",
                                 labels=vm_labels)
        gwin = GaugeMetricFamily(f"{PREFIX}_mmu_lock_gap_max_1m_seconds",
                                 f"longest gap in the last {WINDOW_S:g} s (exact: the alerts' series)", labels=vm_labels)
        for vm, t in sorted(snap.vms.items()):
            lab = [str(vm), t.comm]
            zl, zn = t.get("zap_leaf"), t.get("zap_nonleaf")
            pa, pf, rt = t.get("pt_alloc"), t.get("pt_free"), t.retained
            for lv in range(1, STATS_LEVELS):
                if zl[lv]:
                    zaps.add_metric(lab + [str(lv), "leaf"], float(zl[lv]))
                if zn[lv]:
                    zaps.add_metric(lab + [str(lv), "nonleaf"], float(zn[lv]))
                if pa[lv]:
                    alloc.add_metric(lab + [str(lv)], float(pa[lv]))
                if pf[lv]:
                    freed.add_metric(lab + [str(lv)], float(pf[lv]))
                if "retained" not in unavailable:
                    retained.add_metric(lab + [str(lv)], float(rt[lv]))
            fast.add_metric(lab, float(t.scalar("zap_all_fast")))
            changes.add_metric(lab, float(t.scalar("spte_changes")))
            if feat.spans:
                spans.add_metric(lab, float(t.scalar("spans")))
                yields.add_metric(lab, float(t.scalar("yields")))
                b, s = gap_histogram(t.get("gap_hist"), t.scalar("gap_sum_ns"))
                gaps.add_metric(lab, b, s)
                gmax.add_metric(lab, t.scalar("gap_max_ns") / 1e9)
                gwin.add_metric(lab, pub.window_max_gap_ns.get(vm, t.interval_max_gap_ns) / 1e9)
        yield from (alloc, freed, fast)
        if "zaps" not in unavailable:  # a figure the host cannot measure has no series, rather than a 0
            yield from (zaps, changes)
        if "retained" not in unavailable:
            yield retained
        if feat.spans:
            yield from (spans, yields, gaps, gmax, gwin)
        lost = CounterMetricFamily(f"{PREFIX}_lost_events", "updates the BPF side could not count (maps full)",
                                   labels=["reason"])
        for reason, n in snap.lost.items():
            lost.add_metric([reason], float(n))
        yield lost
        yield GaugeMetricFamily(f"{PREFIX}_vms", "VMs (processes) with counters", value=len(snap.vms))
        yield GaugeMetricFamily(f"{PREFIX}_snapshot_timestamp_seconds", "unix time of the last read of the maps "
                                "(time() minus this = staleness)", value=snap.unix_s)
        yield CounterMetricFamily(f"{PREFIX}_map_reads", "times the BPF maps were read", value=pub.reads)
        yield CounterMetricFamily(f"{PREFIX}_map_read_errors", "failed reads of the BPF maps",
                                  value=pub.read_errors)
        yield GaugeMetricFamily(f"{PREFIX}_map_read_duration_seconds", "how long the last read of the maps took",
                                value=pub.last_read_seconds)


class Poller(threading.Thread):
    """Reads the maps every `interval` seconds and publishes the result; scrapes read `current()` only."""

    def __init__(self, read: Callable[[], Snapshot], kernel: str, interval: float) -> None:
        super().__init__(name="tdptrace-poller", daemon=True)
        self._read = read
        self.kernel = kernel
        self.interval = interval
        self._halt = threading.Event()
        self._published: Optional[Published] = None
        self.reads = 0
        self.errors = 0
        self.last_error: Optional[BaseException] = None
        self._recent: deque[tuple[float, dict[int, int]]] = deque()

    def current(self) -> Optional[Published]:
        return self._published  # one reference read: atomic, never blocks

    def poll_once(self) -> None:
        t0 = time.perf_counter()
        try:
            snap = self._read()
        except Exception as exc:  # keep serving the last good snapshot; the error counter says so
            self.errors += 1
            self.last_error = exc
            return
        self.reads += 1
        now = time.monotonic()
        self._recent.append((now, {vm: int(t.interval_max_gap_ns) for vm, t in snap.vms.items()}))
        while self._recent and self._recent[0][0] < now - WINDOW_S:
            self._recent.popleft()
        window: dict[int, int] = {}
        for _, per_vm in self._recent:  # one entry per read in the window (60 at the default interval)
            for vm, ns in per_vm.items():
                window[vm] = max(window.get(vm, 0), ns)
        self._published = Published(snap, self.kernel, self.reads, self.errors, time.perf_counter() - t0, window)

    def run(self) -> None:
        while not self._halt.is_set():
            start = time.monotonic()
            self.poll_once()
            self._halt.wait(max(0.0, self.interval - (time.monotonic() - start)))

    def stop(self) -> None:
        self._halt.set()


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:9464', '[::1]:9464' or ':9464' (all addresses) -> (host, port)."""
    from tdptrace.errors import BadInput

    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInput(f"--listen {text!r} is not HOST:PORT", "e.g. --listen 127.0.0.1:9464")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


# The HTTP side: scrapes are cheap (families are cached per snapshot), so a few workers serve any scraper; what
# must be bounded is what a client can hold. A connection gets IDLE_TIMEOUT_S per read or write, at most
# MAX_CONNECTIONS are served at once, and the rest wait in a listen backlog deep enough for a burst of scrapers
# (the kernel caps it at net.core.somaxconn) instead of being refused.
IDLE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64
LISTEN_BACKLOG = 4096
SLOT_WAIT_S = 10.0  # a connection accepted while every worker is busy waits this long, then gets 503


def _server_class(family: int):
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIServer

    class BoundedServer(ThreadingMixIn, WSGIServer):
        """Thread per connection, but never more than `max_connections` threads; errors of one connection (a
        client that went away or idled out) are counted, not printed."""

        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = LISTEN_BACKLOG
        address_family = family

        def __init__(self, addr, handler, max_connections: int = MAX_CONNECTIONS) -> None:
            self.slots = threading.BoundedSemaphore(max_connections)
            self.busy_rejects = 0
            self.connection_errors = 0
            super().__init__(addr, handler)

        def process_request(self, request, client_address) -> None:
            if not self.slots.acquire(timeout=SLOT_WAIT_S):
                self.busy_rejects += 1
                try:
                    request.settimeout(1.0)
                    request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                    b"Retry-After: 1\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass
                self.shutdown_request(request)
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.slots.release()
                raise

        def process_request_thread(self, request, client_address) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

        def handle_error(self, request, client_address) -> None:
            self.connection_errors += 1

    return BoundedServer


def start_http(collector: StatsCollector, host: str, port: int, *, idle_timeout: float = IDLE_TIMEOUT_S,
               max_connections: int = MAX_CONNECTIONS) -> Any:
    """Serve /metrics on host:port from a fresh registry holding only our collector, in a daemon thread;
    returns the server (call shutdown() to stop it)."""
    import socket
    from wsgiref.simple_server import WSGIRequestHandler

    from prometheus_client import CollectorRegistry, make_wsgi_app

    from tdptrace.errors import TdpError

    class Handler(WSGIRequestHandler):
        timeout = idle_timeout  # applied to the connection's socket: an idle client is dropped after this

        def log_message(self, format, *args) -> None:  # no access log on stderr
            pass

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, addr = infos[0][0], infos[0][4][:2]
        server = _server_class(family)(addr, Handler, max_connections=max_connections)
    except (OSError, socket.gaierror) as exc:
        raise TdpError(f"cannot listen on {host}:{port} ({getattr(exc, 'strerror', None) or exc})",
                       "choose another --listen address or stop what holds the port")
    server.set_app(make_wsgi_app(registry))
    threading.Thread(target=server.serve_forever, name="tdptrace-http", daemon=True).start()
    return server


__all__ = ["Poller", "Published", "StatsCollector", "gap_histogram", "parse_listen", "start_http"]
