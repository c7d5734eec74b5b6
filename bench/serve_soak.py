"""Exporter soak: `tdptrace serve` memory over time under VM churn and events, and whether scrapes slow reading.

Runs as root. Starts `tdptrace serve`, keeps `tdptrace exercise` VMs coming and going (every VM is a new
series set, the exporter's only growth risk: events themselves are aggregated in the kernel), and prints
side by side, from the same run:
  - memory: the exporter's RSS after warm-up (baseline) beside its RSS at the end and its peak (ratios);
  - reading: BPF map reads per second in a window without scrapes (baseline) beside a window in which a
    client scrapes /metrics as fast as it can (ratio; 1.0 = scrapes never hold the reader back);
  - scrape latency percentiles, events and VMs counted, series at the end.
Run: sudo .venv/bin/python bench/serve_soak.py            (about 1 minute)
     sudo .venv/bin/python bench/serve_soak.py --ten-minutes
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TDPTRACE = [sys.executable, "-m", "tdptrace.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of `name` (any labels) in Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def churn(stop: threading.Event, mib: int, counter: list[int]) -> None:
    """Start exercise VMs back to back until stopped."""
    while not stop.is_set():
        subprocess.run(TDPTRACE + ["exercise", "--mib", str(mib)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, cwd=REPO)
        counter[0] += 1


def hammer(stop: threading.Event, port: int, latencies: list[float]) -> None:
    """Scrape as fast as possible until stopped, recording each scrape's latency."""
    while not stop.is_set():
        t = time.perf_counter()
        scrape(port)
        latencies.append(time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="soak seconds (default 60)")
    ap.add_argument("--ten-minutes", action="store_true", help="soak for 600 s")
    ap.add_argument("--workers", type=int, default=2, help="parallel exercise loops")
    ap.add_argument("--mib", type=int, default=8, help="guest memory per exercise VM")
    ap.add_argument("--interval", type=float, default=0.25, help="serve INTERVAL, seconds (map reads)")
    ap.add_argument("--forget-after", type=float, default=5.0, help="serve --forget-after")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("serve_soak: needs root (BPF)", file=sys.stderr)
        return 1
    duration = 600.0 if args.ten_minutes else args.duration
    port = free_port()
    serve = subprocess.Popen(TDPTRACE + ["serve", "--listen", f"127.0.0.1:{port}", "--forget-after",
                                         str(args.forget_after), "--", str(args.interval)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                scrape(port)
                break
            except OSError:
                if serve.poll() is not None or time.monotonic() > deadline:
                    print(serve.stderr.read(), file=sys.stderr)
                    return 1
                time.sleep(0.2)
        stop = threading.Event()
        vms = [0]
        workers = [threading.Thread(target=churn, args=(stop, args.mib, vms), daemon=True)
                   for _ in range(args.workers)]
        for w in workers:
            w.start()
        samples: list[tuple[float, int]] = []
        t0 = time.monotonic()
        warm = min(15.0, duration * 0.2)
        window = (duration - warm) / 2
        events = 0.0

        def sample_until(t_end: float) -> None:
            while time.monotonic() < t_end:
                samples.append((time.monotonic() - t0, rss_kib(serve.pid)))
                time.sleep(1.0)

        sample_until(t0 + warm)
        base_rss = samples[-1][1]
        # Window A: no scrapes except at its edges.
        a0 = scrape(port)
        ta = time.monotonic()
        sample_until(ta + window)
        a1 = scrape(port)
        reads_a = (metric_sum(a1, "tdptrace_map_reads_total") - metric_sum(a0, "tdptrace_map_reads_total")) / \
            (time.monotonic() - ta)
        # Window B: a client scraping back to back.
        lat: list[float] = []
        hstop = threading.Event()
        h = threading.Thread(target=hammer, args=(hstop, port, lat), daemon=True)
        b0 = scrape(port)
        tb = time.monotonic()
        h.start()
        sample_until(tb + window)
        hstop.set()
        h.join()
        b1 = scrape(port)
        reads_b = (metric_sum(b1, "tdptrace_map_reads_total") - metric_sum(b0, "tdptrace_map_reads_total")) / \
            (time.monotonic() - tb)
        stop.set()
        for w in workers:
            w.join(timeout=60)
        for name in ("tdptrace_page_tables_allocated_total", "tdptrace_page_tables_freed_total",
                     "tdptrace_zap_all_fast_total", "tdptrace_spte_changes_total"):
            events += metric_sum(b1, name)
        series = sum(1 for ln in b1.splitlines() if ln and not ln.startswith("#"))
        end_rss = samples[-1][1]
        peak = max(r for t, r in samples if t >= warm)
        lat_ms = sorted(x * 1e3 for x in lat)
        print(f"serve soak: {duration:.0f} s, {args.workers} exercise loops ({args.mib} MiB), {vms[0]} VMs started, "
              f"events counted in kernel {events:.0f} (still-tracked VMs), series at end {series}")
        print(f"{'':28}{'baseline':>12}{'measured':>12}{'ratio':>8}")
        print(f"{'exporter RSS MiB (end)':28}{base_rss / 1024:12.1f}{end_rss / 1024:12.1f}{end_rss / base_rss:8.3f}")
        print(f"{'exporter RSS MiB (peak)':28}{base_rss / 1024:12.1f}{peak / 1024:12.1f}{peak / base_rss:8.3f}")
        print(f"{'map reads/s (scraped)':28}{reads_a:12.2f}{reads_b:12.2f}{reads_b / reads_a:8.3f}")
        if lat_ms:
            q = statistics.quantiles(lat_ms, n=100)
            print(f"scrapes during window B: {len(lat_ms)} ({len(lat_ms) / window:.0f}/s), latency ms "
                  f"p50 {q[49]:.2f} p99 {q[98]:.2f} max {lat_ms[-1]:.2f}")
        mid = [r for t, r in samples if t >= warm]
        half = len(mid) // 2
        if half:
            print(f"RSS trend: first half mean {statistics.mean(mid[:half]) / 1024:.1f} MiB, second half mean "
                  f"{statistics.mean(mid[half:]) / 1024:.1f} MiB")
        return 0
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()


if __name__ == "__main__":
    sys.exit(main())
