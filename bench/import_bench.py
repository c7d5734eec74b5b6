"""Importer benchmark: tdptrace's vectorised importer beside a plain per-line regex loop over the same file.

Prints lines/s for both and their ratio, the importer's peak RSS, and the capture's bytes per event beside the
text's. Run: .venv/bin/python bench/import_bench.py [TRACE] (default: the largest shared reference trace).
Both sides read the same decompressed text file; each runs in its own process so peak RSS is its own.
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

# The baseline: what a straightforward importer does: one regex per line, a tuple per event.
BASELINE = r'''
import re, sys, time
rx = re.compile(r"^\s*(.*)-(\d+)\s+\[(\d+)\]\s+\S+\s+(\d+)\.(\d+):\s+([^:]+):\s?(.*)$")
spte = re.compile(r"as id (\d+) gfn ([0-9a-f]+) level (\d+) old_spte ([0-9a-f]+) new_spte ([0-9a-f]+)")
t = time.perf_counter(); rows = []; n = 0
with open(sys.argv[1]) as f:
    for line in f:
        n += 1
        m = rx.match(line)
        if not m:
            continue
        ev = m.group(6)
        if ev == "kvm_tdp_mmu_spte_changed":
            s = spte.match(m.group(7))
            rows.append((int(m.group(4)) * 10**9 + int(m.group(5)) * 1000, int(m.group(2)), int(m.group(3)),
                         int(s.group(2), 16), int(s.group(3)), int(s.group(4), 16), int(s.group(5), 16)))
        else:
            rows.append((int(m.group(4)) * 10**9 + int(m.group(5)) * 1000, int(m.group(2)), ev, m.group(7)))
import resource
print(n, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
'''

TDPTRACE = r'''
import sys, time, resource
from tdptrace import arrowmem
arrowmem.configure()
from tdptrace.importers import fastscan, import_file
t = time.perf_counter()
r = import_file(sys.argv[1], sys.argv[2], kernel_release="6.1.0-56-amd64")
print(r.lines, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, int(fastscan.available()))
'''


def run(code: str, *args: str) -> tuple[int, float, int, bool]:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True).stdout
    n, secs, rss_kb, *native = out.split()
    return int(n), float(secs), int(rss_kb), bool(int(native[0])) if native else False


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", nargs="?", default=str(DEFAULT))
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        text = Path(d) / "trace.txt"
        src = Path(a.trace)
        text.write_bytes(lzma.decompress(src.read_bytes()) if src.suffix == ".xz" else src.read_bytes())
        n_base, t_base, rss_base, _ = run(BASELINE, str(text))
        n_tdp, t_tdp, rss_tdp, native = run(TDPTRACE, str(text), str(Path(d) / "cap.tdp"))
        events = sum(1 for ln in text.open() if not ln.startswith("#"))
        cap_bytes, text_bytes = du(Path(d) / "cap.tdp"), text.stat().st_size
    res = {
        "trace": src.name, "lines": n_tdp, "events": events, "native": native,
        "baseline_lines_per_s": round(n_base / t_base), "tdptrace_lines_per_s": round(n_tdp / t_tdp),
        "speedup": round((n_tdp / t_tdp) / (n_base / t_base), 2),
        "baseline_peak_rss_mb": round(rss_base / 1024), "tdptrace_peak_rss_mb": round(rss_tdp / 1024),
        "text_bytes_per_event": round(text_bytes / events, 1), "capture_bytes_per_event": round(cap_bytes / events, 2),
        "capture_vs_text": f"1/{text_bytes / cap_bytes:.0f}",
    }
    if a.json:
        print(json.dumps(res))
        return
    print(f"import of {res['trace']}: {res['lines']:,} lines, {events:,} events")
    print(f"  {'':24}{'baseline loop':>16}{'tdptrace':>14}{'ratio':>9}")
    print(f"  {'lines/s':24}{res['baseline_lines_per_s']:>16,}{res['tdptrace_lines_per_s']:>14,}"
          f"{res['speedup']:>8}x")
    print(f"  {'peak RSS MB':24}{res['baseline_peak_rss_mb']:>16}{res['tdptrace_peak_rss_mb']:>14}")
    print(f"  {'bytes/event':24}{res['text_bytes_per_event']:>16} (text){res['capture_bytes_per_event']:>8}"
          f"  capture = {res['capture_vs_text']} of text")


if __name__ == "__main__":
    main()
