"""Write a simulation as a capture (schema.py), so summary, triage, plots and compare read it like any other.

Every row gets the common columns (ts, seq, cpu, tid, pid, comm); seq orders all tables together by time,
generation order breaking ties. Per-level zap totals go to meta.events["zap_totals"] (the figure big VMs
rely on, since per-SPTE rows would be too many); meta.source.kind = "simulation" with every parameter.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from tdptrace.capture import CaptureMeta, CaptureWriter, default_host
from tdptrace.capture.schema import LEVELS, SPANS, TABLES
from tdptrace.sim.engine import Identity, SimResult


def _assign_seq(frames: dict[str, pd.DataFrame]) -> None:
    """seq over all tables: by ts, then generation order."""
    keys = [(name, f["ts"].to_numpy(np.int64), f["order"].to_numpy(np.int64)) for name, f in frames.items() if len(f)]
    if not keys:
        return
    ts = np.concatenate([k[1] for k in keys])
    order = np.concatenate([k[2] for k in keys])
    rank = np.empty(len(ts), dtype=np.int64)
    rank[np.lexsort((order, ts))] = np.arange(len(ts), dtype=np.int64)
    i = 0
    for name, t, _ in keys:
        frames[name]["seq"] = rank[i:i + len(t)]
        i += len(t)


def _common(df: pd.DataFrame, ident: Identity) -> pd.DataFrame:
    return df.assign(cpu=np.int16(ident.cpu), tid=np.int32(ident.tid), pid=np.int32(ident.pid))


def _strings(values: np.ndarray) -> pa.Array:
    """A string column from few distinct values, built through a dictionary (fast for millions of rows)."""
    uniq, codes = np.unique(values.astype(str), return_inverse=True)
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(uniq)).cast(pa.string())


def _typed(df: pd.DataFrame, table: str, comm: str) -> pa.Table:
    """The rows as an Arrow table of the schema: missing columns null, comm constant."""
    schema = TABLES[table]
    n = len(df)
    cols = []
    for f in schema:
        if f.name == "comm":
            cols.append(_strings(np.full(n, comm, dtype=object)))
        elif f.name not in df.columns:
            cols.append(pa.nulls(n, f.type))
        elif pa.types.is_string(f.type):
            v = df[f.name]
            mask = v.isna().to_numpy()
            arr = _strings(v.fillna("").to_numpy(dtype=object))
            cols.append(pa.compute.if_else(pa.array(mask), pa.nulls(n, pa.string()), arr) if mask.any() else arr)
        else:
            cols.append(pa.array(df[f.name], type=f.type, from_pandas=True))
    return pa.Table.from_arrays(cols, schema=schema)


def write_capture(res: SimResult, path: str | Path, source: dict[str, Any], release: str,
                  ident: Identity | None = None, overwrite: bool = False) -> Path:
    """Write the simulated rows as a capture directory; returns its path."""
    ident = ident or Identity()
    frames = {"spans": res.spans, "yields": res.yields, "page_tables": res.page_tables, "markers": res.markers}
    if res.sptes is not None:
        frames["sptes"] = res.sptes
    frames = {k: v for k, v in frames.items() if len(v)}
    _assign_seq(frames)
    totals = {str(lv): {"leaf": int(res.zap_totals[lv, 0]), "nonleaf": int(res.zap_totals[lv, 1])}
              for lv in LEVELS if res.zap_totals[lv].any()}
    counts = {k: int(len(v)) for k, v in frames.items()}
    meta = CaptureMeta(
        source=source,
        kernel={"release": release, "simulated": True},
        kvm={"tdp_mmu": True},
        host={**default_host(), "simulated": True},
        clock={"name": "simulated", "unit": "ns"},
        probes={"attached": sorted(set(res.spans["function"])) if len(res.spans) else [], "missing": []},
        capabilities={"sptes": res.sptes is not None and len(res.sptes) > 0, "spans": len(res.spans) > 0,
                      "yield_points": len(res.spans) > 0, "yield_returns": len(res.yields) > 0,
                      "page_table_events": len(res.page_tables) > 0,
                      "retained_tables": res.sptes is not None and len(res.sptes) > 0},
        events={"counts": counts, "unknown": {}, "zap_totals": totals,
                "retained_at_end": {str(k): v for k, v in sorted(res.retained_at_end.items())},
                # Retained tables only change inside zap spans here, so the peak is at the end of one of them.
                "retained_peak": int(max(res.spans["retained_after"].max() if len(res.spans) else 0,
                                         sum(res.retained_at_end.values()))),
                "phases": res.phases},
        spte_encoding="present-bit",
        notes=["simulated capture: figures come from the zap model (tdptrace.sim), not from a kernel"] + res.notes,
    )
    with CaptureWriter(path, meta, overwrite=overwrite) as w:
        for table in ("sptes", "spans", "yields", "page_tables", "markers"):
            if table not in frames:
                continue
            df = _common(frames[table], ident)
            if table == "spans":
                df = df.assign(complete=True, zaps_known=True, vm=ident.vm, root=ident.root)
            elif table == "yields":
                df = df.assign(lock=ident.vm)
            if table != "sptes":
                df = df.sort_values("seq", kind="stable", ignore_index=True)
            if table == "spans":  # object columns holding ints and None: nullable ints for Arrow
                for c in df.columns:
                    if df[c].dtype == object and c in SPANS.names and not pa.types.is_string(SPANS.field(c).type):
                        df[c] = pd.array(df[c].to_numpy(dtype=object), dtype=_nullable(SPANS.field(c).type))
            w.append(table, _typed(df, table, ident.comm))
    return Path(path)


def _nullable(t) -> str:
    return {pa.int8(): "Int8", pa.int16(): "Int16", pa.int32(): "Int32", pa.int64(): "Int64",
            pa.uint64(): "UInt64", pa.bool_(): "boolean"}[t]
