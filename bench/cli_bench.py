"""Command-line start-up: `tdptrace --help` and every `tdptrace COMMAND --help`, beside `python -c 'import typer'`.

Help must answer at once: the command line imports only typer and its own small modules, and every heavy
module (pandas, pyarrow, matplotlib, rich, bcc) inside the command that needs it. The baseline is the floor any
typer program pays: the interpreter plus `import typer`. Rounds interleave the baseline and every command, so
load on a shared machine weighs on both; medians per invocation are compared.

Run: .venv/bin/python bench/cli_bench.py [--rounds N] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AIM_RATIO = 2.0    # slowest --help over the baseline
AIM_SECONDS = 0.25


def command_paths() -> list[list[str]]:
    """Every command and subcommand of the app, as argument lists ([] is the top level)."""
    import typer

    from tdptrace.cli import app

    out: list[list[str]] = []

    def walk(cmd, path: list[str]) -> None:
        out.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + [name])

    walk(typer.main.get_command(app), [])
    return out


def tdptrace_argv() -> list[str]:
    """The console script users run, next to this interpreter (python -m tdptrace.cli without one)."""
    script = Path(sys.executable).with_name("tdptrace")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tdptrace.cli"]


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="runs of each invocation (median kept; default 7)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()
    base_argv = [sys.executable, "-c", "import typer"]
    paths = command_paths()
    exe = tdptrace_argv()
    base: list[float] = []
    runs: dict[str, list[float]] = {" ".join(p) or "(top level)": [] for p in paths}
    for argv in [base_argv] + [exe + p + ["--help"] for p in paths]:
        timed(argv)  # warm the page cache and .pyc files once
    for _ in range(a.rounds):
        base.append(timed(base_argv))
        for p in paths:
            runs[" ".join(p) or "(top level)"].append(timed(exe + p + ["--help"]))
    baseline = statistics.median(base)
    medians = {k: statistics.median(v) for k, v in runs.items()}
    slowest = max(medians, key=medians.get)
    r = {"rounds": a.rounds, "baseline_s": round(baseline, 4), "top_level_s": round(medians["(top level)"], 4),
         "help_s": {k: round(v, 4) for k, v in medians.items()}, "slowest": slowest,
         "slowest_s": round(medians[slowest], 4), "ratio": round(medians[slowest] / baseline, 2),
         "top_level_ratio": round(medians["(top level)"] / baseline, 2), "aim_ratio": AIM_RATIO,
         "aim_seconds": AIM_SECONDS}
    r["met"] = r["ratio"] <= AIM_RATIO and r["slowest_s"] < AIM_SECONDS
    if a.json:
        print(json.dumps(r))
    else:
        print(f"python -c 'import typer': {baseline * 1000:.0f} ms (median of {a.rounds})")
        for k, v in medians.items():
            print(f"  tdptrace {k} --help: {v * 1000:4.0f} ms  {v / baseline:.2f}x")
        print(f"slowest: tdptrace {slowest} --help, {r['slowest_s'] * 1000:.0f} ms, {r['ratio']}x the baseline "
              f"(aim <= {AIM_RATIO}x and < {AIM_SECONDS} s): {'met' if r['met'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
