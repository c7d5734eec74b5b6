"""Recorder memory benchmark: the BCC recorder's RSS over a long run at a high event rate, beside the same
recorder idle for as long, each in its own process, one after the other.

The events come from the recorder's stand-in high-rate tracepoint (probes/record_bench.bpf.c: raw_syscalls:sys_enter of
bench/syscall_producer.c calling getppid() at a set rate) through the real BccRecorder: ring buffer drain,
decoding, chunk writing, meta updates. The recorder aggregates nothing per event in user space, so its memory
should not grow with the rate or the length of the run: the aim is a peak under 2x the idle recorder's and a
last quarter no higher than 1.2x the first. Compile-time memory (clang inside BCC) is excluded: RSS is sampled
from the first poll on. Needs root and gcc.
Run: sudo .venv/bin/python bench/recorder_rss_bench.py [--seconds 60] [--rate 100000] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

WORKER = r'''
import json, os, subprocess, sys, time
from pathlib import Path
rate, seconds, exe, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
producer = subprocess.Popen([exe, str(rate), str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
from tdptrace.live.attach import ProbePlan
from tdptrace.live.bcc_recorder import BccRecorder, program_defines
from tdptrace.live.recording import RecordOptions
plan = ProbePlan(release=os.uname().release, tracefs=None, tracepoints=[], kprobes=False, fentry=False)
rec = BccRecorder(plan, RecordOptions(output=out))
rec.defines = program_defines(plan, rec.opts, bench_tgid=producer.pid)
rec.start()
def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
samples = []
producer.stdin.write("g"); producer.stdin.flush()
t0 = time.monotonic()
while time.monotonic() - t0 < seconds + 0.5:
    time.sleep(0.1)
    st = rec.poll()
    samples.append(rss_kib())
produced = int(producer.communicate()[0].strip() or 0)
rec.finish("duration")
samples.append(rss_kib())
q = max(1, len(samples) // 4)
print(json.dumps({"produced": produced, "events": rec.status.events, "drops": st.drops,
                  "peak_mib": max(samples) / 1024, "first_quarter_mib": sum(samples[:q]) / q / 1024,
                  "last_quarter_mib": sum(samples[-q:]) / q / 1024,
                  "capture_bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file())}))
'''


def measure(rate: int, seconds: float, producer: Path, out: Path) -> dict:
    """One recorder run in its own process (so its RSS is its own)."""
    p = subprocess.run([sys.executable, "-c", WORKER, str(rate), str(seconds), str(producer), str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=seconds * 10 + 180)
    if p.returncode != 0:
        raise SystemExit(f"recorder at {rate}/s failed: {p.stderr.strip().splitlines()[-1:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=int, default=100_000, help="events offered per second")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (it loads BPF)")
    from transport_bench import build_producer

    with tempfile.TemporaryDirectory(prefix="tdptrace-rss-") as d:
        producer = build_producer(Path(d))
        idle = measure(1, a.seconds, producer, Path(d) / "idle.tdp")
        busy = measure(a.rate, a.seconds, producer, Path(d) / "busy.tdp")
    res = {"seconds": a.seconds, "rate": a.rate, "idle_peak_mib": round(idle["peak_mib"], 1),
           "busy_peak_mib": round(busy["peak_mib"], 1), "peak_ratio": round(busy["peak_mib"] / idle["peak_mib"], 2),
           "growth": round(busy["last_quarter_mib"] / busy["first_quarter_mib"], 2),
           "events": busy["events"], "produced": busy["produced"], "drops": busy["drops"],
           "capture_bytes_per_event": round(busy["capture_bytes"] / max(busy["events"], 1), 2)}
    if a.json:
        print(json.dumps(res))
        return
    print(f"recorder over {a.seconds:.0f} s: {res['events']:,} events recorded of {res['produced']:,} offered "
          f"({a.rate:,}/s), {res['drops']:,} dropped")
    print(f"  {'':28}{'idle':>10}{'high rate':>11}{'ratio':>8}")
    print(f"  {'peak RSS MiB':28}{res['idle_peak_mib']:>10}{res['busy_peak_mib']:>11}{res['peak_ratio']:>7}x  (aim < 2x)")
    print(f"  {'last / first quarter RSS':28}{'':>10}{'':>11}{res['growth']:>7}x  (aim <= 1.2x)")


if __name__ == "__main__":
    main()
