"""Import cost per text format: the same events as tracefs text (the baseline), trace-cmd report text and perf
script text, imported side by side in one command.

Prints, for each format, CPU seconds, lines/s, peak RSS and the ratio to tracefs. The trace-cmd and perf texts
are rendered from the tracefs text the way those tools print it (tests/support/traceformats.py), with a kallsyms that
names their kprobe addresses. Each import runs in its own process so peak RSS is its own.
Run: .venv/bin/python bench/import_formats_bench.py [TRACE.txt.xz] (default: the largest shared reference trace).
"""
from __future__ import annotations

import argparse
import json
import lzma
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared" / "data" / "k61-512m-hog.trace.txt.xz"

ONE = r'''
import json, resource, sys, time
from tdptrace.importers import import_file
kw = {"kallsyms": sys.argv[3]} if sys.argv[3] != "-" else {}
t, c = time.perf_counter(), time.process_time()
r = import_file(sys.argv[1], sys.argv[2], kernel_release="6.1.0-56-amd64", **kw)
print(json.dumps({"lines": r.lines, "events": r.events, "spans": r.spans, "wall": time.perf_counter() - t,
                  "cpu": time.process_time() - c, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", nargs="?", type=Path, default=DEFAULT)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from traceformats import render

    text = lzma.open(args.trace, "rt").read() if args.trace.suffix == ".xz" else args.trace.read_text()
    with tempfile.TemporaryDirectory() as d:
        dd = Path(d)
        (dd / "tracefs.txt").write_text(text)
        tc, syms = render(text, "trace-cmd")
        (dd / "trace-cmd.txt").write_text(tc)
        (dd / "perf.txt").write_text(render(text, "perf")[0])
        (dd / "kallsyms").write_text(syms)
        del text, tc
        results = {}
        for fmt in ("tracefs", "trace-cmd", "perf"):
            ks = "-" if fmt == "tracefs" else str(dd / "kallsyms")
            out = subprocess.run([sys.executable, "-c", ONE, str(dd / f"{fmt}.txt"), str(dd / f"{fmt}.tdp"), ks],
                                 capture_output=True, text=True, check=True).stdout
            results[fmt] = json.loads(out)
    base = results["tracefs"]
    print(f"{args.trace.name}: {base['lines']:,} lines, {base['events']:,} events, {base['spans']} spans each")
    print(f"{'format':<10} {'cpu s':>7} {'lines/s':>11} {'peak MB':>8} {'cpu vs tracefs':>15}")
    for fmt, r in results.items():
        assert (r["events"], r["spans"]) == (base["events"], base["spans"]), (fmt, r)
        print(f"{fmt:<10} {r['cpu']:>7.2f} {r['lines'] / r['wall']:>11,.0f} {r['rss_mb']:>8.0f} "
              f"{r['cpu'] / base['cpu']:>14.2f}x")


if __name__ == "__main__":
    main()
