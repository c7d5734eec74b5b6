"""Metrics benchmark: tdptrace's vectorised zap and retained-table figures over a large synthetic capture,
beside a straightforward pandas baseline (per-table groupby-apply with a Python loop inside), same data,
each side in a process of its own, timed cold (first run after loading) and warm (second run). Prints seconds
for each, their ratios, and checks both give the same numbers.

Run: .venv/bin/python bench/metrics_bench.py [--events 10000000]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tdptrace.capture import CaptureMeta, CaptureWriter
from tdptrace.capture.pagetables import classify, retained_series
from tdptrace.metrics.zaps import zap_counts
from tdptrace.kernel.spte import Encoding

P = 1 << 11


def synthetic_sptes(n: int, seed: int = 1) -> pd.DataFrame:
    """n SPTE changes: each level-1 table gets 512 installs then a partial zap; parents link every table."""
    rng = np.random.default_rng(seed)
    per_table = 1024
    tables = max(1, n // per_table)
    t = np.repeat(np.arange(tables, dtype=np.uint64), per_table)
    i = np.tile(np.arange(per_table, dtype=np.uint64), tables)
    install = i < 512
    slot = np.where(install, i, i - 512)
    gfn = t * np.uint64(512) + slot
    leaf = (gfn << np.uint64(12)) | np.uint64(P | 0xE07)
    zap_all = rng.random(tables) < 0.5  # half the tables are emptied completely, half keep one entry
    keep = ~install & ~zap_all[t.astype(np.int64)] & (slot == 0)
    old = np.where(install, 0, np.where(keep, leaf, leaf)).astype(np.uint64)
    new = np.where(install, leaf, np.where(keep, leaf | np.uint64(0x40), 0)).astype(np.uint64)
    m = len(t)
    return pd.DataFrame({"ts": np.arange(m, dtype=np.int64) * 100, "seq": np.arange(m, dtype=np.int64),
                         "cpu": np.zeros(m, np.int16), "tid": np.ones(m, np.int32), "pid": -np.ones(m, np.int32),
                         "comm": pd.array(["vm"] * m, dtype=pd.StringDtype("pyarrow")), "as_id": np.zeros(m, np.uint8),
                         "gfn": gfn, "level": np.ones(m, np.uint8), "old_spte": old, "new_spte": new})


def baseline(sptes: pd.DataFrame) -> tuple[dict, int]:
    """The straightforward way: classify per row with Python ints, then walk each table's rows in a loop."""
    present = lambda v: (int(v) >> 11) & 1 == 1  # noqa: E731
    df = sptes.copy()
    df["po"] = df["old_spte"].map(present)
    df["pn"] = df["new_spte"].map(present)
    zaps = df[df["po"] & ~df["pn"]]
    by_level = zaps.groupby("level").size().to_dict()
    df["table"] = df["gfn"] // 512

    def walk(g: pd.DataFrame) -> int:
        count, ever = 0, False
        for po, pn in zip(g["po"], g["pn"]):
            count += int(pn) - int(po)
            ever = ever or count > 0
        return int(ever and count == 0)

    retained = int(df.groupby("table")[["po", "pn"]].apply(walk).sum())
    return {int(k): int(v) for k, v in by_level.items()}, retained


def tdptrace_way(sptes: pd.DataFrame) -> tuple[dict, int]:
    """What `summary` computes for these figures: classify once, zaps by level and leaf, retained tables."""
    cls = classify(sptes, Encoding.PRESENT_BIT)
    counts = zap_counts(sptes["level"].to_numpy(), cls)
    by_level: dict[int, int] = {}
    for (lv, _leaf), n in counts.items():
        by_level[lv] = by_level.get(lv, 0) + n
    rs = retained_series(sptes, cls)
    return by_level, int(rs.by_level_at_end().get(1, 0))


SIDES = {"tdptrace": tdptrace_way, "baseline": baseline}


def child(side: str, capture: str) -> None:
    """One side in a process of its own: load the capture, then time the metrics twice (cold: the first touch of
    everything after the load; warm: the same again), printing one JSON line."""
    from tdptrace.capture import Capture

    t = time.perf_counter()
    loaded = Capture.open(Path(capture)).sptes
    load = time.perf_counter() - t
    times, answer = [], None
    for _ in range(2):
        t = time.perf_counter()
        answer = SIDES[side](loaded)
        times.append(time.perf_counter() - t)
    print(json.dumps({"load_s": load, "cold_s": times[0], "warm_s": times[1], "events": len(loaded),
                      "answer": [{str(k): v for k, v in answer[0].items()}, answer[1]]}))


def run_side(side: str, capture: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", side, str(capture)], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "CAPTURE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    sptes = synthetic_sptes(a.events)
    with tempfile.TemporaryDirectory() as d:  # round-trip through a real capture, as analysis would read it
        cap = Path(d) / "m.tdp"
        with CaptureWriter(cap, CaptureMeta(source={"kind": "bench"})) as w:
            w.append("sptes", sptes)
        del sptes
        ours = run_side("tdptrace", cap)
        base = run_side("baseline", cap)
    assert ours["answer"] == base["answer"], (ours["answer"], base["answer"])
    res = {"events": ours["events"], "load_s": round(ours["load_s"], 2),
           "tdptrace_s": round(ours["cold_s"], 3), "baseline_s": round(base["cold_s"], 2),
           "speedup": round(base["cold_s"] / ours["cold_s"], 1),
           "tdptrace_warm_s": round(ours["warm_s"], 3), "baseline_warm_s": round(base["warm_s"], 2),
           "speedup_warm": round(base["warm_s"] / ours["warm_s"], 1),
           "zaps_by_level": ours["answer"][0], "retained": ours["answer"][1]}
    if a.json:
        print(json.dumps(res))
        return
    print(f"metrics over {res['events']:,} SPTE changes read back from Parquet (load {res['load_s']} s, not timed)")
    print(f"  {'':28}{'pandas baseline':>16}{'tdptrace':>10}{'ratio':>8}")
    print(f"  {'cold (first run), s':28}{res['baseline_s']:>16}{res['tdptrace_s']:>10}{res['speedup']:>7}x")
    print(f"  {'warm (second run), s':28}{res['baseline_warm_s']:>16}{res['tdptrace_warm_s']:>10}"
          f"{res['speedup_warm']:>7}x")
    print(f"  same answer: zaps {res['zaps_by_level']}, retained tables {res['retained']:,}")


if __name__ == "__main__":
    main()
