"""Many captures as one dataset: find them under directories and total their summaries (fleet view)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from tdptrace.capture.schema import META_FILE, TABLES
from tdptrace.errors import BadInput


def find_captures(paths: Iterable[Path]) -> list[Path]:
    """Capture directories among `paths`: a capture itself, or every capture found below a plain directory."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        # A directory with table sub-directories is a capture, even if its meta.json is gone: Capture.open says so.
        if p.is_dir() and not (p / META_FILE).exists() and not any((p / t).is_dir() for t in TABLES):
            found = sorted(m.parent for m in p.rglob(META_FILE))
            if not found:
                raise BadInput(f"{p}: no captures in this directory",
                               "give capture directories (NAME.tdp) or a directory that holds some")
            out.extend(found)
        else:
            out.append(p)  # Capture.open reports a missing or damaged one
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


def _add_levels(into: dict[str, dict[str, int]], zbl: dict[str, dict[str, int]]) -> None:
    for lv, v in zbl.items():
        cur = into.setdefault(lv, {"leaf": 0, "nonleaf": 0})
        cur["leaf"] += v["leaf"]
        cur["nonleaf"] += v["nonleaf"]


def _max(a: Any, b: Any) -> Any:
    return b if a is None else (a if b is None else max(a, b))


def _sum(a: Any, b: Any) -> Any:
    return b if a is None else (a if b is None else a + b)


def fleet_total(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Totals over per-capture summaries (the `summary --json` objects), overall and per host.

    Counts add up; max_gap_ns is the maximum; a figure no capture could measure stays None (never 0).
    """

    def empty() -> dict[str, Any]:
        return {"captures": 0, "zaps_by_level": {}, "yields": {"count": None, "max_gap_ns": None, "spans": 0},
                "page_tables": {"allocated": None, "freed": None, "retained_nonleaf_at_end": None},
                "lost_events": 0}

    total = empty()
    by_host: dict[str, dict[str, Any]] = {}
    for s in summaries.values():
        host = str(s.get("capture", {}).get("host") or "unknown")
        for acc in (total, by_host.setdefault(host, empty())):
            acc["captures"] += 1
            _add_levels(acc["zaps_by_level"], s["zaps_by_level"])
            y = s["yields"]
            acc["yields"]["count"] = _sum(acc["yields"]["count"], y.get("count"))
            acc["yields"]["max_gap_ns"] = _max(acc["yields"]["max_gap_ns"], y.get("max_gap_ns"))
            acc["yields"]["spans"] += y.get("spans") or 0
            pt = s["page_tables"]
            acc["page_tables"]["allocated"] = _sum(acc["page_tables"]["allocated"], pt.get("allocated"))
            acc["page_tables"]["freed"] = _sum(acc["page_tables"]["freed"], pt.get("freed"))
            r = pt.get("retained_nonleaf")
            acc["page_tables"]["retained_nonleaf_at_end"] = _sum(acc["page_tables"]["retained_nonleaf_at_end"],
                                                                 r["at_end"] if r else None)
            acc["lost_events"] += s.get("lost_events", 0)
    for acc in [total, *by_host.values()]:
        acc["zaps_by_level"] = dict(sorted(acc["zaps_by_level"].items()))
        z = acc["zaps_by_level"].values()
        acc["zaps_total"] = {"leaf": sum(v["leaf"] for v in z), "nonleaf": sum(v["nonleaf"] for v in z)}
    total["hosts"] = sorted(by_host)
    total["by_host"] = dict(sorted(by_host.items()))
    return total
