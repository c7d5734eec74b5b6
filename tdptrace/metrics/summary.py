"""The `tdptrace summary --json` object (docs/metrics.md "Summary contract"), plus extra keys that keep meaning."""
from __future__ import annotations

from typing import Any

import pandas as pd

from tdptrace.capture import Capture
from tdptrace.capture.schema import LEVELS
from tdptrace.metrics.gaps import df_gaps, gap_quantiles
from tdptrace.metrics.retained import retained_summary
from tdptrace.metrics.waiters import waiters_summary
from tdptrace.metrics.zaps import spte_core, zaps_by_level

NO_SPANS = ("no zap spans in this capture: it holds no entry+return events of the TDP zap functions "
            "(kprobes/fentry unavailable or not attached), so yields and gaps cannot be measured")


def _int(v: Any) -> int | None:
    return None if v is None or pd.isna(v) else int(v)


def span_records(cap: Capture) -> list[dict[str, Any]]:
    """One dict per span, ordered by start, with the contract's keys first."""
    s = cap.spans.sort_values(["ts", "seq"], kind="stable")
    out = []
    cols = {c: s[c].to_numpy(dtype=object) for c in s.columns}
    for i in range(len(s)):  # one dict per span for JSON output: spans are few (aggregated records)
        zl = {}
        for lv in LEVELS:
            leaf, nonleaf = _int(cols[f"leaf_l{lv}"][i]), _int(cols[f"nonleaf_l{lv}"][i])
            if leaf or nonleaf:
                zl[str(lv)] = {"leaf": leaf, "nonleaf": nonleaf}
        out.append({
            "function": str(cols["function"][i]),
            "start_ns": int(cols["ts"][i]),
            "duration_ns": _int(cols["duration_ns"][i]),
            "yields": int(cols["yields"][i]),
            "max_gap_ns": _int(cols["max_gap_ns"][i]),
            "retained_nonleaf_after": _int(cols["retained_after"][i]),
            "span_id": int(cols["span_id"][i]),
            "complete": bool(cols["complete"][i]),
            "depth": int(cols["depth"][i]),
            "parent_id": _int(cols["parent_id"][i]),
            "tid": int(cols["tid"][i]),
            "pid": _int(cols["pid"][i]) if int(cols["pid"][i]) >= 0 else None,
            "comm": str(cols["comm"][i]),
            "cpu": int(cols["cpu"][i]),
            "caller": None if pd.isna(cols["caller"][i]) else str(cols["caller"][i]),
            "vm": None if pd.isna(cols["vm"][i]) else str(cols["vm"][i]),
            "gfn_start": _int(cols["gfn_start"][i]),
            "gfn_end": _int(cols["gfn_end"][i]),
            "zap_level": _int(cols["zap_level"][i]),
            "shared": _int(cols["shared"][i]),
            "can_yield": _int(cols["can_yield"][i]),
            "lock_drops": _int(cols["lock_drops"][i]),
            "away_ns": _int(cols["away_ns"][i]),
            "zaps_by_level": zl if bool(cols["zaps_known"][i]) else None,
        })
    return out


def summarize(cap: Capture) -> dict[str, Any]:
    """Everything `summary` prints, as one JSON-ready dict."""
    meta = cap.meta
    caps = meta.capabilities or {}
    zbl, zsrc = zaps_by_level(cap)
    out: dict[str, Any] = {
        "capture": {"path": str(cap.path), "status": meta.status, "source": meta.source,
                    "kernel": meta.kernel, "host": meta.host.get("hostname"), "spte_encoding": meta.spte_encoding},
        "zaps_by_level": zbl,
        "zaps_source": zsrc,
    }
    if zbl:
        out["zaps_total"] = {"leaf": sum(v["leaf"] for v in zbl.values()),
                             "nonleaf": sum(v["nonleaf"] for v in zbl.values())}
    spans = cap.spans
    y = cap.yields
    if len(spans):
        recs = span_records(cap)
        gaps = df_gaps(cap)
        in_span = y[y["span_id"].notna()] if len(y) else y
        max_gap = spans["max_gap_ns"].dropna()
        ylds: dict[str, Any] = {
            "count": int(len(in_span)),
            "max_gap_ns": int(max_gap.max()) if len(max_gap) else None,
            "spans": int(len(spans)),
            "outside_spans": int(len(y) - len(in_span)),
            "lock_drops": int(in_span["ret"].eq(1).sum()) if len(in_span) and in_span["ret"].notna().all() else None,
            "gaps": gap_quantiles(gaps["gap_ns"]) if len(gaps) else {},
            "incomplete_spans": int((~spans["complete"]).sum()),
        }
        out["yields"] = ylds
        out["spans"] = recs
    else:
        out["yields"] = {"count": None, "max_gap_ns": None, "spans": 0, "unavailable": NO_SPANS,
                         "outside_spans": int(len(y))}
        out["spans"] = []
        out["spans_unavailable"] = NO_SPANS
    pt = cap.page_tables
    pts: dict[str, Any] = {}
    if len(pt) or caps.get("page_table_events"):
        pts["allocated"] = int((pt["kind"] == "alloc").sum())
        pts["freed"] = int((pt["kind"] == "free").sum())
        if pts["freed"] == 0 and meta.spte_encoding == "legacy" and len(spte_core(cap)):
            # Before 5.11 kvm_mmu_prepare_zap_page never fires for TDP MMU tables: 0 would be a false figure.
            pts["freed"] = None
            pts["freed_unavailable"] = "this kernel's TDP MMU does not trace page-table frees"
        pts["lookups"] = int((pt["kind"] == "lookup").sum())
        by = pt.groupby(["kind", "level"]).size()
        pts["by_level"] = {k: {str(int(lv)): int(n) for (kk, lv), n in by.items() if kk == k}
                           for k in ("alloc", "free")}
    else:
        pts["allocated"] = None
        pts["freed"] = None
        pts["unavailable"] = "no kvm_mmu_get_page / kvm_mmu_prepare_zap_page events in this capture"
    counters = (meta.events or {}).get("retained_at_end")
    if len(spte_core(cap)):
        pts["retained_nonleaf"] = retained_summary(cap)
    elif counters is not None:  # the live recorder's in-kernel counters (SPTE events not streamed)
        at_end = int(sum(counters.values()))
        # Without a recorded peak, the best lower bound is the largest value seen after any span.
        after = cap.spans["retained_after"].dropna() if len(cap.spans) else []
        lower_bound = max([at_end] + ([int(after.max())] if len(after) else []))
        peak = int(meta.events.get("retained_peak", lower_bound))
        pts["retained_nonleaf"] = {"at_end": at_end, "by_level_at_end": counters, "bytes_at_end": at_end * 4096,
                                   "peak": peak, "peak_ts_ns": None, "peak_bytes": peak * 4096,
                                   "source": "in-kernel counters"}
    else:
        pts["retained_nonleaf"] = None
        pts["retained_unavailable"] = "no SPTE change events in this capture"
    out["page_tables"] = pts
    m = cap.table("markers", ["event", "function"])  # counts only: the details are not read
    out["markers"] = {str(k): int(v) for k, v in m["event"].value_counts().sort_index().items()} if len(m) else {}
    if len(m) and m["function"].notna().any():
        calls = m[m["function"].notna()]
        out["calls"] = {str(k): int(v) for k, v in calls["function"].value_counts().sort_index().items()}
    out["lost_events"] = int(meta.lost_events.get("total", 0))
    out["lost_events_per_cpu"] = meta.lost_events.get("per_cpu", {})
    out["unknown_events"] = meta.events.get("unknown", {})
    out["capabilities"] = caps
    out["waiters"] = waiters_summary(cap)
    out["notes"] = list(meta.notes) + ([] if cap.complete else
                                       ["the capture is incomplete (recording stopped abruptly); the last chunk may be missing"])
    return out


def page_table_lines(s: dict[str, Any]) -> list[str]:
    """The page-table and retained-table sentences every renderer prints (summary tables, HTML report)."""
    pt = s["page_tables"]
    out = []
    if pt.get("allocated") is not None:
        freed = f"{pt['freed']:,} freed" if pt.get("freed") is not None else \
            f"frees unknown ({pt.get('freed_unavailable', 'not traced')})"
        out.append(f"page tables: {pt['allocated']:,} allocated, {freed}")
    r = pt.get("retained_nonleaf")
    if r:
        out.append(f"retained non-leaf tables: {r['at_end']} at end ({r['bytes_at_end'] // 1024} KiB), "
                   f"peak {r['peak']} ({r['peak_bytes'] // 1024} KiB)")
    else:
        out.append(pt.get("retained_unavailable", "retained tables unknown"))
    return out
