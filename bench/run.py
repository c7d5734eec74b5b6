"""Every benchmark, one after the other, each in its own process; then one table of tdptrace's figure beside
the baseline measured in the same command, their ratio, the aim and whether it was met.

Run: sudo .venv/bin/python bench/run.py [--quick] [--json]
--quick takes a minute or two (smaller inputs, shorter runs). Exit status 1 when an aim is missed. Without
root the benchmarks that load BPF are skipped, each with its reason in the table. Ratios are "how many times better tdptrace is" (throughput over
the baseline's, the baseline's time or size over tdptrace's), except memory growth (the recorder's RSS busy over
idle and late over early) and --help time over the bare `import typer`, where the aim is a ceiling.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
SHARED = REPO.parent / "shared" / "data"  # the lab's reference traces, beside the repository


@dataclass
class Row:
    """One line of the table."""

    benchmark: str
    tdptrace: str
    baseline: str
    ratio: Optional[float]
    aim: str
    met: Optional[bool]
    note: str = ""


@dataclass
class Bench:
    """A benchmark script, its arguments (full and quick), and how its JSON becomes rows."""

    name: str
    script: str
    args: list[str]
    quick_args: list[str]
    rows: Callable[[dict], list[Row]]
    needs_root: bool = False
    needs_file: Optional[Path] = None  # input data that a bare clone may lack


def _fmt(x: float, unit: str = "") -> str:
    return f"{x:,.0f}{unit}" if abs(x) >= 100 else f"{x:,.2f}{unit}"


def transport_rows(r: dict) -> list[Row]:
    cap = r["capacity_batched"] / r["capacity_naive"]
    rows = [Row("transport: drain capacity, events per consumer CPU-s (vs naive per-event BCC callback)",
                _fmt(r["capacity_batched"]), _fmt(r["capacity_naive"]), round(cap, 1), ">= 10x", cap >= 10)]
    if r["lossless_naive"]:
        ll = r["lossless_batched"] / r["lossless_naive"]
        rows.append(Row("transport: highest lossless rate offered, events/s (vs naive)", _fmt(r["lossless_batched"]),
                        _fmt(r["lossless_naive"]), round(ll, 1), "> 1x (bounded by the producer)", ll > 1))
    return rows


def import_rows(r: dict) -> list[Row]:
    return [Row(f"import: lines/s of {r['trace']} (vs a plain per-line regex loop)", _fmt(r["tdptrace_lines_per_s"]),
                _fmt(r["baseline_lines_per_s"]), r["speedup"], ">= 10x (floor 5x)", r["speedup"] >= 10,
                f"native scanner {'on' if r.get('native', True) else 'OFF'}")]


def sptes_rows(r: dict) -> list[Row]:
    runs = r["runs"]
    stream = [x for x in runs if x["mode"] == "sptes"]
    top = max(stream, key=lambda x: x["events_per_s"])
    note = (f"stand-in tracepoint into record.bpf.c's spte_change(); at the highest rate reached "
            f"({top['events_per_s']:,}/s) {top['drops']:,} dropped (counted) at {top['cpu_cores']:.3f} core")
    ev = r["lossless_events_per_s"]
    return [Row("record --sptes: highest rate with 0 drops, SPTE changes/s into Parquet, recorder CPU (vs the "
                "counting default at that rate)", f"{ev:,}/s, {r['lossless_cpu_cores'] or 0:.3f} core" if ev else "none",
                f"{r['counting_cpu_cores'] or 0:.3f} core", None, "0 drops, counting exact",
                bool(ev) and r["counting_exact"], note)]


def metrics_rows(r: dict) -> list[Row]:
    rows = []
    for when, ours, base, ratio in (("cold", "tdptrace_s", "baseline_s", "speedup"),
                                    ("warm", "tdptrace_warm_s", "baseline_warm_s", "speedup_warm")):
        rows.append(Row(f"metrics: zaps by level + retained over {r['events']:,} SPTE changes read back from "
                        f"Parquet, {when}, s (vs pandas groupby-apply)", _fmt(r[ours], " s"), _fmt(r[base], " s"),
                        r[ratio], ">= 10x (floor 5x)", r[ratio] >= 10))
    return rows


def size_rows(r: dict) -> list[Row]:
    ref = r["reference"]
    rows = [Row("capture size: bytes/event of the reference trace's capture (vs its tracefs text)",
                _fmt(ref["imported"]["bytes_per_event"], " B"), _fmt(ref["text"]["bytes_per_event"], " B"),
                ref["text_vs_capture"], ">= 10x", ref["text_vs_capture"] >= 10)]
    live = r.get("live")
    if live:
        rows.append(Row(f"capture size: bytes/event, same exercise, record capture ({live['capture']['events']} "
                        "events; vs trace-cmd .dat)", _fmt(live["capture"]["bytes_per_event"], " B"),
                        _fmt(live["dat"]["bytes_per_event"], " B"), live["dat_vs_capture"], "> 1x",
                        live["dat_vs_capture"] > 1, "few events here (tdp_mmu=N): per-file overhead dominates"))
    else:
        rows.append(Row("capture size: same exercise vs trace-cmd .dat", "-", "-", None, "> 1x", None,
                        f"skipped: {r.get('live_skipped', '')}"))
    return rows


def rss_rows(r: dict) -> list[Row]:
    return [
        Row(f"recorder peak RSS, {r['seconds']:.0f} s at {r['rate']:,} ev/s offered (vs the same recorder idle)",
            _fmt(r["busy_peak_mib"], " MiB"), _fmt(r["idle_peak_mib"], " MiB"), r["peak_ratio"], "< 2x (growth)",
            r["peak_ratio"] < 2, f"{r['events']:,} recorded, {r['drops']:,} dropped"),
        Row("recorder RSS, mean of the last quarter of the run (vs its first quarter)", f"{r['growth']}x", "1x",
            r["growth"], "<= 1.2x (flat)", r["growth"] <= 1.2),
    ]


def cli_rows(r: dict) -> list[Row]:
    return [Row(f"cli: slowest --help (tdptrace {r['slowest']}), ms (vs python -c 'import typer')",
                f"{r['slowest_s'] * 1000:.0f} ms", f"{r['baseline_s'] * 1000:.0f} ms", r["ratio"],
                f"<= {r['aim_ratio']}x and < {r['aim_seconds']} s (ceiling)", r["met"],
                f"tdptrace --help {r['top_level_s'] * 1000:.0f} ms, {r['top_level_ratio']}x")]


BENCHES = [
    Bench("transport", "transport_bench.py", ["--json"], ["--json", "--seconds", "1", "--rates", "100000,1000000"],
          transport_rows, needs_root=True),
    Bench("import", "import_bench.py", ["--json"], ["--json", str(SHARED / "k61-128m.trace.txt.xz")],
          import_rows, needs_file=SHARED / "k61-512m-hog.trace.txt.xz"),
    Bench("metrics", "metrics_bench.py", ["--json", "--events", "10000000"], ["--json", "--events", "1000000"],
          metrics_rows),
    Bench("capture size", "capture_size_bench.py", ["--json", "--mib", "256"], ["--json", "--mib", "64"], size_rows,
          needs_file=SHARED / "k61-512m-hog.trace.txt.xz"),
    Bench("recorder RSS", "recorder_rss_bench.py", ["--json", "--seconds", "120"],
          ["--json", "--seconds", "15"], rss_rows, needs_root=True),
    Bench("cli", "cli_bench.py", ["--json"], ["--json", "--rounds", "3"], cli_rows),
    Bench("record --sptes", "record_sptes_bench.py", ["--json", "--seconds", "5", "--rates", "100000,300000,1000000"],
          ["--json", "--seconds", "2", "--rates", "100000,300000"], sptes_rows, needs_root=True),
]


def run_one(b: Bench, quick: bool) -> tuple[list[Row], float]:
    """Run one benchmark script in its own process and turn its JSON line into rows."""
    if b.needs_root and os.geteuid() != 0:
        return [Row(b.name, "-", "-", None, "-", None, "skipped: needs root (it loads BPF)")], 0.0
    if b.needs_file is not None and not b.needs_file.exists():
        return [Row(b.name, "-", "-", None, "-", None, f"skipped: {b.needs_file} is not here")], 0.0
    t = time.monotonic()
    p = subprocess.run([sys.executable, str(BENCH / b.script), *(b.quick_args if quick else b.args)],
                       capture_output=True, text=True, cwd=REPO)
    dt = time.monotonic() - t
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        why = (p.stderr.strip().splitlines() or ["no output"])[-1][:100]
        return [Row(b.name, "-", "-", None, "-", False, f"failed: {why}")], dt
    return b.rows(json.loads(lines[-1])), dt


def machine() -> dict:
    """What the figures were measured on."""
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "nproc": os.cpu_count(), "cpu": cpu,
            "memory_gib": round(mem / 2**20, 1), "kernel": platform.release(), "python": platform.python_version(),
            "load_1min_at_start": round(os.getloadavg()[0], 2)}


def table(rows: list[Row]) -> str:
    head = ("benchmark", "tdptrace", "baseline", "ratio", "aim", "met?")
    cells = [head] + [(r.benchmark, r.tdptrace, r.baseline, "-" if r.ratio is None else f"{r.ratio}x", r.aim,
                       {True: "yes", False: "NO", None: "-"}[r.met] + (f"  ({r.note})" if r.note else ""))
                      for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head) - 1)]
    out = []
    for i, c in enumerate(cells):
        out.append(" | ".join(x.ljust(w) for x, w in zip(c, widths)) + " | " + c[-1])
        if i == 0:
            out.append("-+-".join("-" * w for w in widths) + "-+-" + "-" * 4)
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes: smaller inputs, shorter runs")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES], help="run only these")
    a = ap.parse_args()
    info = machine()
    rows: list[Row] = []
    for b in BENCHES:
        if a.only and b.name not in a.only:
            continue
        print(f"running {b.name} ...", file=sys.stderr, flush=True)
        got, dt = run_one(b, a.quick)
        print(f"  {dt:.0f} s", file=sys.stderr, flush=True)
        rows += got
    if a.json:
        print(json.dumps({"machine": info, "quick": a.quick, "rows": [asdict(r) for r in rows]}))
    else:
        print(f"{info['date']}, {info['nproc']} CPUs ({info['cpu']}), {info['memory_gib']} GiB, kernel "
              f"{info['kernel']}, load {info['load_1min_at_start']}{', --quick' if a.quick else ''}")
        print(table(rows))
    return 1 if any(r.met is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
