"""Stream `tdptrace exercise` live into pandas and tally SPTE zaps by level as the batches arrive, while the
same recording writes its capture; then check the tally against `tdptrace summary --json` of that capture.

    sudo python analysis/live-stream/stream_zaps.py -o ex.tdp [--runs 3] [--sptes] [--backend bcc]

Prints a line per batch that brought rows (what it brought, events lost, zaps by level so far), then the two
tables and, last, one JSON line {"stream": ..., "summary": ..., "batches": n}. Exit status 0 when they are
equal, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

import tdptrace

TDPTRACE = [sys.executable, "-m", "tdptrace.cli"]


def exercise_command(runs: int) -> list[str]:
    """`tdptrace exercise` `runs` times, a second apart, each VM kept a little before it closes: a workload that
    spans several batches."""
    one = " ".join(shlex.quote(a) for a in TDPTRACE + ["exercise", "--hold", "500ms", "--json"]) + " >/dev/null"
    return ["sh", "-c", " && sleep 1 && ".join([one] * runs)]


def frees_by_level(page_tables: pd.DataFrame) -> pd.Series:
    """Page tables freed per level in one batch (a shadow MMU's zaps: kvm_mmu_prepare_zap_page)."""
    frees = page_tables[page_tables["kind"] == "free"]
    return frees.groupby(frees["level"].astype(int)).size()


def as_table(zbl: dict[str, dict[str, int]]) -> pd.DataFrame:
    rows = [(int(lv), v["leaf"], v["nonleaf"]) for lv, v in sorted(zbl.items(), key=lambda kv: int(kv[0]))]
    return pd.DataFrame(rows, columns=["level", "leaf", "nonleaf"]).set_index("level")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, required=True, help="capture to write alongside the stream")
    ap.add_argument("--runs", type=int, default=3, help="exercise runs while recording (default 3)")
    ap.add_argument("--sptes", action="store_true", help="also stream every SPTE change")
    ap.add_argument("--backend", default="auto", help="auto, bcc or ftrace")
    ap.add_argument("--force", action="store_true", help="replace an earlier capture at -o")
    args = ap.parse_args(argv)

    frees = pd.Series(dtype="int64")  # this script's own tally, batch by batch
    batches = 0
    with tdptrace.record(args.output, command=exercise_command(args.runs), sptes=args.sptes,
                         backend=args.backend, batch_seconds=0.5, force=args.force) as live:
        for batch in live:
            batches += 1
            frees = frees.add(frees_by_level(batch.page_tables), fill_value=0)
            zbl, source = tdptrace.zaps_by_level(live.frames)  # the metric on the frames accumulated so far
            got = {t: batch.rows(t) for t in ("sptes", "spans", "yields", "page_tables", "markers") if batch.rows(t)}
            if not (got or batch.lost_events or batch.final):
                continue  # a quiet beat: nothing was written
            print(f"batch {batch.index}{' (last)' if batch.final else ''} at {batch.elapsed_s:5.2f}s: {got or 'nothing'}"
                  f", lost {batch.lost_events}; zaps so far {zbl or '-'} ({source})", flush=True)
    streamed, source = tdptrace.zaps_by_level(live.frames)
    if source.startswith("kvm_mmu_prepare_zap_page"):  # the page-table rule: the batches' own tally agrees
        tally = {str(lv): {"leaf": 0, "nonleaf": int(n)} for lv, n in frees.items() if n}
        assert tally == streamed, (tally, streamed)
    out = subprocess.run(TDPTRACE + ["summary", "--json", str(args.output)], capture_output=True, text=True,
                         check=True)
    summary = json.loads(out.stdout)
    print(f"\nstreamed ({source}), {batches} batches, {live.backend} backend:\n{as_table(streamed)}")
    print(f"\ntdptrace summary of {args.output} ({summary['zaps_source']}):\n{as_table(summary['zaps_by_level'])}")
    same = streamed == summary["zaps_by_level"] and source == summary["zaps_source"]
    print("\nequal" if same else "\nDIFFERENT")
    print(json.dumps({"stream": streamed, "stream_source": source, "summary": summary["zaps_by_level"],
                      "summary_source": summary["zaps_source"], "batches": batches, "backend": live.backend,
                      "lost_events": summary["lost_events"]}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
