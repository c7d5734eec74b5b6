"""tdptrace serve: the Prometheus text it serves, checked with the Prometheus parser, live and from fixed snapshots."""
from __future__ import annotations

import signal
import subprocess
import time
import urllib.request

import numpy as np
import pytest
from exporterfake import _scrape_text, _snapshot, families, samples
from livestats import REPO, TDPTRACE, TracefsCounter, free_port, require_live, run_exercise

from tdptrace.errors import BadInput
from tdptrace.live.exporter import Poller, Published, StatsCollector, gap_histogram, parse_listen
from tdptrace.live.stats import GAP_BUCKETS
from tdptrace.metrics.summary import summarize


def test_metrics_from_a_fixed_snapshot_parse_and_carry_the_counts():
    fams = families(_scrape_text(_snapshot(spans=True)))
    vm = {"vm": "4242", "comm": "qemu-system-x86"}
    assert samples(fams, "tdptrace_spte_zaps", "tdptrace_spte_zaps_total", level="1", kind="leaf", **vm)[0].value == 500
    assert samples(fams, "tdptrace_spte_zaps", "tdptrace_spte_zaps_total", level="2", kind="nonleaf")[0].value == 3
    assert samples(fams, "tdptrace_page_tables_allocated", "tdptrace_page_tables_allocated_total",
                   level="1")[0].value == 7
    assert samples(fams, "tdptrace_zap_all_fast", "tdptrace_zap_all_fast_total", **vm)[0].value == 4
    assert samples(fams, "tdptrace_retained_page_tables", "tdptrace_retained_page_tables", level="1")[0].value == 5
    assert samples(fams, "tdptrace_lost_events", "tdptrace_lost_events_total", reason="vm_map_full")[0].value == 1
    b = {s.labels["le"]: s.value for s in samples(fams, "tdptrace_mmu_lock_gap_seconds",
                                                  "tdptrace_mmu_lock_gap_seconds_bucket")}
    assert b["8.192e-06"] == 2 and b["6.5536e-05"] == 2 and b["0.000131072"] == 5
    assert b["0.134217728"] == 5 and b["0.268435456"] == 6 and b["+Inf"] == 6
    les = [float(k) for k in b if k != "+Inf"]
    assert min(les) < 10e-6 and max(les) >= 10
    assert samples(fams, "tdptrace_mmu_lock_gap_seconds", "tdptrace_mmu_lock_gap_seconds_sum")[0].value == 0.2
    assert samples(fams, "tdptrace_build_info", "tdptrace_build_info")[0].labels["kernel"] == "6.1.0-56-amd64"


def test_without_kprobes_span_metrics_are_absent_and_marked_unavailable():
    fams = families(_scrape_text(_snapshot(spans=False)))
    assert "tdptrace_mmu_lock_gap_seconds" not in fams and "tdptrace_zap_spans" not in fams
    s = samples(fams, "tdptrace_feature_available", "tdptrace_feature_available", feature="gaps")[0]
    assert s.value == 0 and s.labels["reason"] == "no_kprobes"


def test_gap_histogram_is_cumulative_over_log2_buckets():
    h = np.zeros(GAP_BUCKETS)
    h[13], h[33] = 4, 1
    buckets, total = gap_histogram(h, 3_000_000_000)
    d = dict(buckets)
    assert d["8.192e-06"] == 0 and d["1.6384e-05"] == 4 and d["8.589934592"] == 4 and d["17.179869184"] == 5
    assert total == 3.0


def test_poller_keeps_the_last_good_snapshot_when_a_read_fails():
    calls = iter([_snapshot(True), RuntimeError("map gone")])

    def read():
        v = next(calls)
        if isinstance(v, Exception):
            raise v
        return v

    p = Poller(read, "k", 1.0)
    p.poll_once()
    first = p.current()
    p.poll_once()
    assert p.current() is first and p.errors == 1 and p.reads == 1


@pytest.mark.parametrize("text,expect", [("127.0.0.1:9464", ("127.0.0.1", 9464)), (":9464", ("0.0.0.0", 9464)),
                                          ("[::1]:80", ("::1", 80))])
def test_parse_listen(text, expect):
    assert parse_listen(text) == expect


@pytest.mark.parametrize("text", ["9464", "host:", "host:0", "h:99999", "h:x"])
def test_parse_listen_rejects(text):
    with pytest.raises(BadInput):
        parse_listen(text)


def test_serve_bad_listen_is_one_line_error():
    out = subprocess.run(TDPTRACE + ["serve", "--listen", "nonsense"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("tdptrace: error: --listen 'nonsense' is not HOST:PORT")


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


@pytest.mark.live
def test_exporter_counts_what_the_exercise_did_as_tracefs_saw_it():
    require_live()
    port = free_port()
    serve = subprocess.Popen(TDPTRACE + ["serve", "--listen", f"127.0.0.1:{port}", "200ms"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert serve.poll() is None, serve.stderr.read()
            try:
                fams = families(_scrape(port))
                break
            except OSError:
                assert time.monotonic() < deadline, "exporter did not come up"
                time.sleep(0.2)
        assert samples(fams, "tdptrace_build_info", "tdptrace_build_info")
        with TracefsCounter("tdptrace-test-serve") as truth:
            report = run_exercise(32)
            ended = time.time()
            pid = str(report["pid"])
            truth.stop()
            want = truth.counts(report["pid"])
        assert want["lost"] == 0
        assert want["zap_all_fast"] == 1  # the exercise deletes its one memslot once
        vm = {"vm": pid}
        deadline = time.monotonic() + 10
        while True:  # the poller publishes every 0.2 s; wait for a snapshot taken after the exercise ended
            fams = families(_scrape(port))
            taken = fams["tdptrace_snapshot_timestamp_seconds"].samples[0].value
            if taken > ended:
                break
            assert time.monotonic() < deadline, "no fresh snapshot"
            time.sleep(0.2)
        fast = samples(fams, "tdptrace_zap_all_fast", "tdptrace_zap_all_fast_total", **vm)
        assert fast and fast[0].value == want["zap_all_fast"]
        alloc = sum(s.value for s in samples(fams, "tdptrace_page_tables_allocated",
                                             "tdptrace_page_tables_allocated_total", **vm))
        freed = sum(s.value for s in samples(fams, "tdptrace_page_tables_freed", "tdptrace_page_tables_freed_total",
                                             **vm))
        assert alloc == want["alloc"] > 0
        assert freed == want["free"] > 0
        assert samples(fams, "tdptrace_lost_events", "tdptrace_lost_events_total", reason="vm_map_full")[0].value == 0
        avail = {s.labels["feature"]: s.value for s in fams["tdptrace_feature_available"].samples}
        assert avail["page_tables"] == 1 and avail["zap_all_fast"] == 1
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            rc = serve.wait(timeout=20)
        except subprocess.TimeoutExpired:
            serve.kill()
            raise
    assert rc == 0, serve.stderr.read()


def test_families_are_built_once_per_snapshot():
    pubs = [Published(_snapshot(True), "k", 1, 0, 0.0)]
    col = StatsCollector(lambda: pubs[-1])
    first = list(col.collect())
    assert list(col.collect())[0] is first[0]
    pubs.append(Published(_snapshot(True), "k", 2, 0, 0.0))
    again = list(col.collect())
    assert again[0] is not first[0]
    reads = [s.value for f in again if f.name == "tdptrace_map_reads" for s in f.samples]
    assert reads == [2]


def test_python_layout_matches_probes_stats_h():
    """STATS_FIELDS and LOST_REASONS mirror probes/stats.h (the BPF side); a drift would mislabel counters."""
    import re

    from tdptrace.live.stats import LOST_REASONS, STATS_FIELDS, STATS_LEVELS, probes_dir

    h = (probes_dir() / "stats.h").read_text()
    defines = {k: int(v) for k, v in re.findall(r"#define (\w+) (\d+)", h)}
    body = h.split("struct vm_stats {", 1)[1].split("};", 1)[0]
    fields = [(name, defines[n] if n in defines else int(n or 1))
              for name, n in re.findall(r"__u64 (\w+)(?:\[(\w+)\])?;", body)]
    assert fields == list(STATS_FIELDS)
    assert defines["STATS_LEVELS"] == STATS_LEVELS and defines["GAP_BUCKETS"] == GAP_BUCKETS
    lost = {v: k for k, v in re.findall(r"#define LOST_(\w+) (\d+)", h) if k != "SLOTS"}
    assert {int(k): v.lower() for k, v in lost.items()} == LOST_REASONS


def test_live_modules_stay_free_of_ui_libraries():
    import subprocess
    import sys

    code = ("import sys\nimport tdptrace.live.exporter, tdptrace.live.stats, tdptrace.live.rolling, tdptrace.metrics.fleet\n"
            "print(','.join(m for m in ('typer', 'matplotlib', 'rich', 'bcc') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_scrape_completes_while_the_reader_is_stuck_in_a_read():
    """Scrapes serve the last published snapshot; they never wait for (or hold up) the map reader."""
    import threading

    release = threading.Event()
    entered = threading.Event()
    snaps = iter([_snapshot(True)])

    def read():
        try:
            return next(snaps)
        except StopIteration:
            entered.set()
            release.wait(30)  # a read stuck in the kernel
            return _snapshot(True)

    p = Poller(read, "k", 0.01)
    p.poll_once()
    col = StatsCollector(p.current)
    p.start()
    try:
        assert entered.wait(10)
        done = threading.Event()
        t = threading.Thread(target=lambda: (list(col.collect()), done.set()), daemon=True)
        t.start()
        assert done.wait(10), "a scrape waited for the reader"
        assert p.reads == 1
    finally:
        release.set()
        p.stop()
        p.join(10)


@pytest.mark.live
def test_record_dir_rolls_complete_captures_with_the_exercise_in_them(tmp_path):
    require_live()
    port = free_port()
    serve = subprocess.Popen(TDPTRACE + ["serve", "--listen", f"127.0.0.1:{port}", "--record-dir", str(tmp_path),
                                         "--roll", "10s", "--duration", "30s"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        import json

        def attached() -> bool:  # the recorder rewrites meta.json with its probes once they are attached
            for m in tmp_path.glob("*.tdp/meta.json"):
                try:
                    if json.loads(m.read_text())["probes"]["attached"]:
                        return True
                except (OSError, ValueError, KeyError):
                    pass
            return False

        deadline = time.monotonic() + 60
        while not attached():  # the first recorder is recording (the overlap covers later start-ups)
            assert serve.poll() is None and time.monotonic() < deadline, serve.stderr.read()
            time.sleep(0.2)
        report = run_exercise(32)
        _, err = serve.communicate(timeout=90)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    assert serve.returncode == 0, err
    import tdptrace

    caps = sorted(tmp_path.glob("*.tdp"))
    assert len(caps) >= 2  # rolled at least once in 30 s with 10 s captures
    summaries = [summarize(tdptrace.open(c)) for c in caps]
    assert all(s["capture"]["status"] == "complete" for s in summaries), [s["capture"] for s in summaries]
    mine = [m for c in caps for m in [tdptrace.open(c).markers]
            if len(m[(m["event"] == "kvm_mmu_zap_all_fast") & (m["pid"] == report["pid"])])]
    seen = {c.name: (s["capture"]["status"], s["markers"]) for c, s in zip(caps, summaries)}
    assert 1 <= len(mine) <= 2, (report["pid"], seen, err)  # its memslot deletion; twice if in an overlap
    assert "failed" not in err, err
