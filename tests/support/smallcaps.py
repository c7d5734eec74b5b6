"""Hand-made small captures written with CaptureWriter: spans, yields and SPTE changes given as plain dicts,
every other column filled with its neutral value. For edge cases the reference traces do not have."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tdptrace.capture import CaptureMeta, CaptureWriter
from tdptrace.capture.schema import TABLES, ZAP_COUNT_COLUMNS

P = 1 << 11  # present bit (5.13+)

_DEFAULTS: dict[str, dict[str, Any]] = {
    "common": {"cpu": 0, "tid": 100, "pid": 100, "comm": "qemu-kvm"},
    "spans": {"parent_id": None, "depth": 0, "caller": None, "vm": "vm0", "root": "r0", "gfn_start": None,
              "gfn_end": None, "zap_level": None, "shared": None, "can_yield": None, "flush": None, "ret": None,
              "yields": 0, "lock_drops": None, "away_ns": None, "max_gap_ns": None, "zaps_known": True,
              "retained_after": 0, "stack_id": None, "complete": True, "end_ts": None, "duration_ns": None},
    "yields": {"function": "__cond_resched_rwlock_write", "ret_ts": None, "ret": None, "span_id": None,
               "lock": "l0"},
    "sptes": {"as_id": 0, "level": 1},
    "page_tables": {"kind": "free", "gfn": 0, "level": 1, "role": None, "root_count": None, "unsync": None,
                    "mmu_valid_gen": None},
    "markers": {"function": None, "detail": None},
}


def _frame(table: str, rows: list[dict[str, Any]], seq0: int) -> pd.DataFrame:
    schema = TABLES[table]
    full = []
    for i, r in enumerate(rows):
        d = dict(_DEFAULTS["common"]) | dict(_DEFAULTS.get(table, {}))
        if table == "spans":
            d |= {c: 0 for c in ZAP_COUNT_COLUMNS}
        d["seq"] = seq0 + i
        d |= r
        full.append({k: d.get(k) for k in schema.names})
    return pd.DataFrame(full, columns=schema.names)


def span(span_id: int, ts: int, end_ts: int | None, function: str = "tdp_mmu_zap_leafs", yields: int = 0,
         max_gap_ns: int | None = None, **kw: Any) -> dict[str, Any]:
    """One span row; duration and max gap default from ts/end_ts."""
    complete = end_ts is not None
    d = {"span_id": span_id, "ts": ts, "end_ts": end_ts, "duration_ns": (end_ts - ts) if complete else None,
         "complete": complete, "function": function, "yields": yields,
         "max_gap_ns": max_gap_ns if max_gap_ns is not None else ((end_ts - ts) if complete and not yields else None)}
    return d | kw


def write_capture(path: Path, *, spans: list[dict] = (), yields: list[dict] = (), sptes: list[dict] = (),
                  page_tables: list[dict] = (), markers: list[dict] = (), stacks: list[dict] = (),
                  clock: dict | None = None,
                  kernel: str = "6.1.0-56-amd64") -> Path:
    """Write a complete capture holding the given rows."""
    meta = CaptureMeta(source={"kind": "test"}, kernel={"release": kernel},
                       clock=clock or {"name": "trace (as printed)", "unit": "ns"})
    meta.capabilities = {"spans": bool(spans), "sptes": bool(sptes), "page_table_events": bool(page_tables)}
    with CaptureWriter(path, meta) as w:
        seq = 0
        for table, rows in (("sptes", sptes), ("spans", spans), ("yields", yields), ("page_tables", page_tables),
                            ("markers", markers), ("stacks", stacks)):
            if rows:
                w.append(table, _frame(table, list(rows), seq))
                seq += len(rows)
    return path
