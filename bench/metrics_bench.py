"""Metrics benchmark: tdptrace's vectorised zap and retained-table figures over a large synthetic capture,
beside a straightforward pandas baseline (per-table groupby-apply with a Python loop inside), same data,
same process. Prints seconds for each, their ratio, and checks both give the same numbers.

Run: .venv/bin/python bench/metrics_bench.py [--events 10000000]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tdptrace.capture import CaptureMeta, CaptureWriter
from tdptrace.capture.pagetables import classify, retained_series
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
    cls = classify(sptes, Encoding.PRESENT_BIT)
    z = cls["zap"].to_numpy()
    lv, cnt = np.unique(sptes["level"].to_numpy()[z], return_counts=True)
    rs = retained_series(sptes, cls)
    return {int(a): int(b) for a, b in zip(lv, cnt)}, int(rs.by_level_at_end().get(1, 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    sptes = synthetic_sptes(a.events)
    with tempfile.TemporaryDirectory() as d:  # round-trip through a real capture, as analysis would read it
        with CaptureWriter(Path(d) / "m.tdp", CaptureMeta(source={"kind": "bench"})) as w:
            w.append("sptes", sptes)
        from tdptrace.capture import Capture

        t = time.perf_counter()
        loaded = Capture.open(Path(d) / "m.tdp").sptes
        t_load = time.perf_counter() - t
    t = time.perf_counter()
    ours = tdptrace_way(loaded)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    base = baseline(loaded)
    t_base = time.perf_counter() - t
    assert ours == base, (ours, base)
    res = {"events": len(loaded), "load_s": round(t_load, 2), "tdptrace_s": round(t_ours, 2),
           "baseline_s": round(t_base, 2), "speedup": round(t_base / t_ours, 1), "zaps_by_level": ours[0],
           "retained": ours[1]}
    if a.json:
        print(json.dumps(res))
        return
    print(f"metrics over {res['events']:,} SPTE changes (capture load {res['load_s']} s)")
    print(f"  {'':28}{'pandas baseline':>16}{'tdptrace':>10}{'ratio':>8}")
    print(f"  {'zaps by level + retained, s':28}{res['baseline_s']:>16}{res['tdptrace_s']:>10}{res['speedup']:>7}x")
    print(f"  same answer: zaps {ours[0]}, retained tables {ours[1]:,}")


if __name__ == "__main__":
    main()
