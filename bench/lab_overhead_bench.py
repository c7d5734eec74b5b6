"""What `tdptrace record` costs the host it watches, on a real TDP MMU: one lab guest boot runs the same zap
workload (kvmtouch: madvise(MADV_DONTNEED) of half of a populated VM, then the root teardown of the whole VM by
deleting its memslot), timed by the workload itself, without tdptrace and under each recording configuration
(tracepoints only `--no-spans`, the default with kprobes, `--sptes`), side by side in that one boot.

Prints per configuration the median phase times over the runs, their ratio to the runs without tdptrace, the
cost per SPTE change (the extra time divided by the SPTEs the phase zaps) and the recorder's resident memory
once attached. Under TCG everything runs 30-100x slower than on hardware: the ratios are the figures to read.
fentry/fexit has no row: the recorder attaches kprobes only.
Run as root: .venv/bin/python bench/lab_overhead_bench.py [--kernel 6.12] [--mib 128] [--reps 3] [--json]
             .venv/bin/python bench/lab_overhead_bench.py --run-dir DIR   (the table of an earlier run)
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOOK = REPO / "bench" / "lab_overhead_hook.sh"
# Order in the boot: a baseline at each end shows drift over the boot.
CONFIGS = ("none", "tracepoints", "kprobes", "sptes", "none_after")
LABELS = {"none": "without tdptrace", "tracepoints": "tracepoints only (--no-spans)",
          "kprobes": "default (tracepoints + kprobes)", "sptes": "default + --sptes",
          "none_after": "without tdptrace, again"}
_PHASE = {"madvise": re.compile(r"phase2-madvise-dontneed upper half: ([\d.]+) s"),
          "teardown": re.compile(r"phase4-delete-memslot: ([\d.]+) s")}


def run_lab(kernel: str, mib: int, reps: int) -> Path:
    from tdptrace.lab import kernels, rootfs
    from tdptrace.lab.run import run, source_tree
    from tdptrace.lab.scenario import Scenario

    text = HOOK.read_text().replace("@MIB@", str(mib)).replace("@REPS@", str(reps)) \
        .replace("@CONFIGS@", " ".join(CONFIGS))
    hook = Path(tempfile.mkdtemp(prefix="tdptrace-bench-")) / "hook.sh"
    hook.write_text(text)
    root = rootfs.build(kernels.fetch(kernel), project=source_tree())
    sc = Scenario(kernel=kernel, mib=16, hook=hook, rootfs=root, hook_ready=True, hook_settle_s=3600)
    return Path(run(sc).out)


def _kvmtouch(text: str) -> dict[str, float]:
    out = {k: float(m.group(1)) for k, p in _PHASE.items() if (m := p.search(text))}
    line = next((ln for ln in text.splitlines() if ln.startswith("KVMTOUCH ")), "")
    out.update({k: float(v) for k, v in re.findall(r"(\w+)=(\d+)", line)})
    return out


def _rss_kib(status: Path) -> dict[str, int]:
    if not status.exists():
        return {}
    return {k: int(v) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status.read_text(), re.M)}


def table(run_dir: Path) -> dict:
    """Median phase times per configuration, ratios to the baseline, ns per SPTE change, recorder RSS."""
    d = run_dir / "share" / "out" / "bench"
    rows = {}
    for c in CONFIGS:
        runs = [_kvmtouch(f.read_text()) for f in sorted(d.glob(f"{c}.run*.txt"))]
        runs = [r for r in runs if "madvise" in r and "teardown" in r]
        if not runs:
            continue
        rows[c] = {"runs": len(runs), "madvise_s": statistics.median(r["madvise"] for r in runs),
                   "teardown_s": statistics.median(r["teardown"] for r in runs),
                   # SPTEs each phase zaps: the madvised pages, then every page mapped again (4 KiB leaves)
                   "madvise_sptes": runs[0]["pages_phase3"], "teardown_sptes": runs[0]["pages_phase1"],
                   **{f"recorder_{k}_kib": v for k, v in _rss_kib(d / f"{c}.status").items()}}
    base = [rows[c] for c in ("none", "none_after") if c in rows]
    if not base:
        raise SystemExit(f"{d}: no baseline runs")
    for phase in ("madvise", "teardown"):
        b = statistics.mean(r[f"{phase}_s"] for r in base)
        for r in rows.values():
            r[f"{phase}_ratio"] = round(r[f"{phase}_s"] / b, 3)
            r[f"{phase}_ns_per_spte"] = round((r[f"{phase}_s"] - b) * 1e9 / r[f"{phase}_sptes"], 1)
    run = json.loads((run_dir / "run.json").read_text())
    return {"kernel": run["release"], "run_dir": str(run_dir), "configs": rows}


def show(t: dict) -> None:
    print(f"kernel {t['kernel']} (TCG guest; run {t['run_dir']})")
    head = (f"{'configuration':34} {'runs':>4} {'madvise s':>9} {'ratio':>6} {'ns/SPTE':>8} "
            f"{'teardown s':>10} {'ratio':>6} {'ns/SPTE':>8} {'RSS MiB':>8}")
    print(head)
    for c, r in t["configs"].items():
        rss = f"{r['recorder_VmRSS_kib'] / 1024:8.0f}" if "recorder_VmRSS_kib" in r else f"{'-':>8}"
        print(f"{LABELS[c]:34} {r['runs']:>4} {r['madvise_s']:9.3f} {r['madvise_ratio']:6.2f} "
              f"{r['madvise_ns_per_spte']:8.0f} {r['teardown_s']:10.3f} {r['teardown_ratio']:6.2f} "
              f"{r['teardown_ns_per_spte']:8.0f} {rss}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default="6.12")
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--run-dir", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t = table(args.run_dir or run_lab(args.kernel, args.mib, args.reps))
    if args.json:
        json.dump(t, sys.stdout, indent=1)
        print()
    else:
        show(t)


if __name__ == "__main__":
    main()
