"""On-call triage of a capture: is there a stretch where KVM held mmu_lock longer than a threshold without
offering to yield, which zap was it, and what was the kernel log complaining about at that moment.

Builds dataclasses only (no typer, no matplotlib): `triage(cap, threshold_ns, reports)` -> Triage, whose
`to_dict()` is the `triage --json` object and whose `exit_code` is 0 (no risk), 1 (risk found).
A capture without zap spans cannot answer: MissingEvents (exit status 2).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tdptrace.capture import Capture
from tdptrace.capture.schema import LEVELS
from tdptrace.errors import MissingEvents
from tdptrace.kernel.functions import ZAP_CONTEXTS, ZAP_OPERATIONS
from tdptrace.kernel.spte import LEVEL_SIZE
from tdptrace.metrics.retained import retained_summary
from tdptrace.metrics.stretches import capture_bounds, df_stretches
from tdptrace.metrics.zaps import df_zaps, zaps_by_level
from tdptrace.oncall.clockmap import ClockMap
from tdptrace.oncall.kernel_log import KernelReport
from tdptrace.units import fmt_ns

EXIT_CLEAN = 0
EXIT_RISK = 1
DEFAULT_THRESHOLD_NS = 10_000_000

@dataclass
class Stretch:
    """One stretch of time a zap held mmu_lock without offering to yield (a gap, docs/metrics.md)."""

    span_id: int
    function: str
    operation: str
    context: str | None
    caller_path: list[str]
    path_source: str            # 'kernel stack' or 'span nesting'
    tid: int
    pid: int | None
    comm: str
    cpu: int
    vm: str | None
    start_ns: int
    gap_ns: int
    ends_at: str                # 'yield', 'return', or 'capture end' (a lower bound: the span never returned)
    lower_bound: bool
    above_threshold: bool
    span_start_ns: int
    span_duration_ns: int | None
    span_yields: int
    span_max_gap_ns: int | None
    gfn_start: int | None
    gfn_end: int | None
    zap_level: int | None
    zapped_gfn_min: int | None
    zapped_gfn_max: int | None
    sptes_zapped: dict[str, dict[str, int]]   # inside this stretch, by level
    page_tables_freed: int | None              # inside this stretch (kvm_mmu_prepare_zap_page), None if not traced
    span_sptes_zapped: dict[str, dict[str, int]] | None
    inner_spans: list[str] = field(default_factory=list)
    note: str | None = None


@dataclass
class LevelShare:
    """Zaps at one level and kind, and their share of all zaps."""

    level: int
    size: str
    kind: str
    count: int
    share: float


@dataclass
class ReportMatch:
    """A kernel log report placed on the capture's clock, with the zap spans running then."""

    kind: str
    text: str
    line_no: int
    log_time: str
    capture_ns: int | None
    stuck_since_ns: int | None
    cpu: int | None
    pid: int | None
    comm: str | None
    stack_zap_functions: list[str]
    running_span_ids: list[int]
    overlapping_span_ids: list[int]
    explanation: str


@dataclass
class Triage:
    """The triage answer: a verdict first, then the evidence."""

    risk: bool
    verdict: str
    exit_code: int
    threshold_ns: int
    max_gap_ns: int | None
    spans: int
    spans_above_threshold: int
    stretches: list[Stretch]
    levels: list[LevelShare]
    zaps_source: str
    retained: dict[str, Any] | None
    kernel_reports: list[ReportMatch]
    kernel_log_summary: str | None
    capture_start_ns: int
    capture_end_ns: int
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _short(sym: str) -> str:
    """'kvm_tdp_mmu_unmap_gfn_range+0x74/0x90 [kvm]' -> 'kvm_tdp_mmu_unmap_gfn_range'."""
    return re.split(r"[+\s]", sym.strip(), maxsplit=1)[0]


def caller_path(cap: Capture, span_id: int) -> tuple[list[str], str]:
    """Outermost-first call path of a span: its kernel stack when recorded, otherwise the caller of its
    outermost enclosing span followed by the nesting of spans on that task."""
    sp = cap.spans.set_index("span_id")
    row = sp.loc[span_id]
    sid = row["stack_id"]
    if not pd.isna(sid):
        st = cap.table("stacks")
        frames = st[st["stack_id"] == int(sid)].sort_values("depth", ascending=False)  # depth 0 = innermost
        if len(frames):
            return [_short(s) for s in frames["symbol"].astype(str)], "kernel stack"
    chain = [span_id]
    while not pd.isna(sp.loc[chain[-1], "parent_id"]):
        chain.append(int(sp.loc[chain[-1], "parent_id"]))
    chain.reverse()
    path = [str(sp.loc[i, "function"]) for i in chain]
    top_caller = sp.loc[chain[0], "caller"]
    if not pd.isna(top_caller) and _short(str(top_caller)) != path[0]:
        path.insert(0, _short(str(top_caller)))
    return path, "span nesting"


def zap_context(path: list[str], comm: str) -> str | None:
    """Who asked for this zap, from the functions on its path (and the NX recovery thread's comm)."""
    if comm.startswith("kvm-nx-lpage-re"):
        return "NX huge page recovery"
    names = set(path)
    for fns, what in ZAP_CONTEXTS:
        if names.intersection(fns):
            return what
    return None


def _level_dict(levels: np.ndarray, leaf: np.ndarray) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for lv in LEVELS:
        m = levels == lv
        nl, nn = int((leaf & m).sum()), int((~leaf & m).sum())
        if nl or nn:
            out[str(lv)] = {"leaf": nl, "nonleaf": nn}
    return out


def _span_zaps(row: pd.Series) -> dict[str, dict[str, int]] | None:
    if not bool(row["zaps_known"]):
        return None
    out = {}
    for lv in LEVELS:
        leaf, nonleaf = row[f"leaf_l{lv}"], row[f"nonleaf_l{lv}"]
        leaf = 0 if pd.isna(leaf) else int(leaf)
        nonleaf = 0 if pd.isna(nonleaf) else int(nonleaf)
        if leaf or nonleaf:
            out[str(lv)] = {"leaf": leaf, "nonleaf": nonleaf}
    return out


def _opt(v: Any) -> int | None:
    return None if v is None or pd.isna(v) else int(v)


class _TaskEvents:
    """Zap and page-table-free events grouped per task and sorted by time, for window counts."""

    def __init__(self, cap: Capture) -> None:
        z = df_zaps(cap) if len(cap.sptes) else None
        self.zaps = {int(t): d.sort_values("ts") for t, d in z.groupby("tid")} if z is not None else {}
        pt = cap.page_tables
        self.frees_traced = bool(len(pt)) or bool((cap.meta.capabilities or {}).get("page_table_events"))
        f = pt[pt["kind"] == "free"]
        self.frees = {int(t): np.sort(d["ts"].to_numpy(np.int64)) for t, d in f.groupby("tid")}

    def window(self, tid: int, lo: int, hi: int) -> tuple[pd.DataFrame, int | None]:
        d = self.zaps.get(tid)
        if d is None:
            z = pd.DataFrame({"gfn": [], "level": [], "leaf": []})
        else:
            ts = d["ts"].to_numpy(np.int64)
            z = d.iloc[np.searchsorted(ts, lo, "left"):np.searchsorted(ts, hi, "right")]
        f = self.frees.get(tid, np.zeros(0, np.int64))
        freed = int(np.searchsorted(f, hi, "right") - np.searchsorted(f, lo, "left")) if self.frees_traced else None
        return z, freed


def _stretch(cap: Capture, g: pd.Series, ev: _TaskEvents, threshold_ns: int) -> Stretch:
    sp = cap.spans.set_index("span_id")
    outer = sp.loc[int(g["span_id"])]
    start, gap = int(g["start"]), int(g["gap_ns"])
    # Name the stretch after the deepest span covering nearly all of it (the pass inside a teardown, say);
    # a stretch that crosses from one nested span into the next stays with the span around both.
    end_ts = sp["end_ts"].fillna(np.iinfo(np.int64).max)
    overlap = np.minimum(end_ts, start + gap) - np.maximum(sp["ts"], start)
    holders = sp[(sp["tid"] == outer["tid"]) & (sp["depth"] >= outer["depth"]) & (overlap >= 0.9 * gap)
                 & (overlap >= 0)]
    sid = int(holders["depth"].idxmax()) if len(holders) else int(g["span_id"])
    row = sp.loc[sid]
    path, source = caller_path(cap, sid)
    z, freed = ev.window(int(row["tid"]), start, start + gap)
    lv = z["level"].to_numpy(np.int64)
    leaf = z["leaf"].to_numpy(bool)
    gfn = z["gfn"].to_numpy(np.uint64)
    inner = sp[(sp["tid"] == row["tid"]) & (sp["depth"] > row["depth"]) & (sp["ts"] < start + gap)
               & (end_ts > start)]
    inner_desc = [f"{f}" + (f" zap_level={int(zl)}" if not pd.isna(zl) else "")
                  for f, zl in zip(inner["function"], inner["zap_level"])]
    note = None
    y = cap.yields
    after_blind_yield = ((y["tid"] == row["tid"]) & (y["ts"] == start) & y["ret_ts"].isna()).any()
    if after_blind_yield and len(z) == 0:
        note = ("nothing was zapped in this stretch: it starts at a yield whose return was not traced, so it "
                "likely includes time spent away in the yield")
    fn = str(row["function"])
    op = ZAP_OPERATIONS.get(fn, "zap")
    if not pd.isna(row["zap_level"]):
        op += f" (pass down to level {int(row['zap_level'])})"
    return Stretch(
        span_id=sid, function=fn, operation=op, context=zap_context(path, str(row["comm"])), caller_path=path,
        path_source=source, tid=int(row["tid"]), pid=int(row["pid"]) if int(row["pid"]) >= 0 else None,
        comm=str(row["comm"]), cpu=int(row["cpu"]), vm=None if pd.isna(row["vm"]) else str(row["vm"]),
        start_ns=start, gap_ns=gap, ends_at=str(g["ends_at"]), lower_bound=bool(g["lower_bound"]),
        above_threshold=gap > threshold_ns, span_start_ns=int(row["ts"]),
        span_duration_ns=_opt(row["duration_ns"]), span_yields=int(row["yields"]),
        span_max_gap_ns=_opt(row["max_gap_ns"]), gfn_start=_opt(row["gfn_start"]), gfn_end=_opt(row["gfn_end"]),
        zap_level=_opt(row["zap_level"]),
        zapped_gfn_min=int(gfn.min()) if len(gfn) else None, zapped_gfn_max=int(gfn.max()) if len(gfn) else None,
        sptes_zapped=_level_dict(lv, leaf), page_tables_freed=freed, span_sptes_zapped=_span_zaps(row),
        inner_spans=inner_desc, note=note,
    )


def level_shares(zbl: dict[str, dict[str, int]]) -> list[LevelShare]:
    """Zaps per (level, leaf/non-leaf), largest first, with their share of all zaps."""
    total = sum(v["leaf"] + v["nonleaf"] for v in zbl.values())
    out = [LevelShare(int(lv), LEVEL_SIZE.get(int(lv), "?"), kind, n, n / total if total else 0.0)
           for lv, v in zbl.items() for kind, n in (("leaf", v["leaf"]), ("non-leaf", v["nonleaf"])) if n]
    return sorted(out, key=lambda s: (-s.count, s.level))


def match_reports(cap: Capture, reports: list[KernelReport], clock: ClockMap) -> list[ReportMatch]:
    """Place each kernel report on the capture clock and find the zap spans running when it was printed and
    those overlapping the time the kernel says it was stuck."""
    spans = cap.spans
    start = spans["ts"].to_numpy(np.int64)
    _, cap_end = capture_bounds(cap)
    end = spans["end_ts"].fillna(cap_end).to_numpy(np.int64)
    ids = spans["span_id"].to_numpy(np.int64)
    zap_fns = set(ZAP_OPERATIONS) | {f for fns, _ in ZAP_CONTEXTS for f in fns}
    out = []
    for r in reports:  # a handful of kernel reports, not event data
        t = clock.to_capture_ns(r.uptime_ns, r.wall_ns)
        since = t - r.stuck_ns if t is not None and r.stuck_ns else None
        stack_fns = [s for s in dict.fromkeys(r.symbols) if s in zap_fns]  # '? ' frames are guesses: left out
        running: list[int] = []
        overlapping: list[int] = []
        if t is not None:
            running = ids[(start <= t) & (end >= t)].tolist()
            lo = since if since is not None else t
            overlapping = ids[(start <= t) & (end >= lo)].tolist()
        stamp = (f"[{r.uptime_ns / 1e9:.6f}]" if r.uptime_ns is not None else
                 pd.Timestamp(r.wall_ns, unit="ns", tz="UTC").isoformat() if r.wall_ns is not None else "no stamp")
        out.append(ReportMatch(
            kind=r.kind, text=r.text, line_no=r.line_no, log_time=stamp, capture_ns=t, stuck_since_ns=since,
            cpu=r.cpu, pid=r.pid, comm=r.comm, stack_zap_functions=stack_fns, running_span_ids=running,
            overlapping_span_ids=overlapping, explanation=_explain(r, t, running, overlapping, stack_fns, clock,
                                                                   spans),
        ))
    return out


def _related(r: KernelReport, ids: list[int], spans: pd.DataFrame) -> tuple[list[int], str]:
    """Narrow time-matched spans to the complaining task, else its CPU; say which rule matched."""
    if not ids:
        return ids, ""
    sp = spans.set_index("span_id").loc[ids]
    if r.pid is not None and (sp["tid"] == r.pid).any():
        return sp.index[sp["tid"] == r.pid].tolist(), "the same task"
    if r.cpus and sp["cpu"].isin(r.cpus).any():
        return sp.index[sp["cpu"].isin(r.cpus)].tolist(), "the same CPU"
    return ids, "another task and CPU (a waiter on mmu_lock?)"


def _names(ids: list[int], spans: pd.DataFrame) -> str:
    sp = spans.set_index("span_id")
    names = [f"span {i} {sp.loc[i, 'function']}" for i in ids[:3]]
    return ", ".join(names) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")


def _explain(r: KernelReport, t: int | None, running: list[int], overlapping: list[int], stack_fns: list[str],
             clock: ClockMap, spans: pd.DataFrame) -> str:
    extra = f"; its backtrace shows {', '.join(stack_fns)}" if stack_fns else ""
    if t is None:
        why = "the line has no time stamp" if r.uptime_ns is None and r.wall_ns is None else clock.note
        return f"not placed on the capture clock ({why})" + extra
    if running:
        ids, rel = _related(r, running, spans)
        return f"printed while {_names(ids, spans)} was running, on {rel}" + extra
    if overlapping:
        ids, rel = _related(r, overlapping, spans)
        return f"printed after a stuck period that overlaps {_names(ids, spans)}, on {rel}" + extra
    return "printed when no zap span was running, nor during the stuck period it reports" + extra


def triage(cap: Capture, threshold_ns: int = DEFAULT_THRESHOLD_NS, reports: list[KernelReport] | None = None,
           top: int = 5) -> Triage:
    """The verdict and its evidence for one capture (MissingEvents when it has no zap spans)."""
    spans = cap.spans
    if spans.empty:
        raise MissingEvents(f"{cap.path}: no zap spans, so the time KVM held mmu_lock cannot be measured",
                            "record with kprobes (or import a trace with the tdp/* kprobe events); "
                            "'tdptrace summary' still shows zaps by level")
    lo, hi = capture_bounds(cap)
    st = df_stretches(cap, hi)
    ev = _TaskEvents(cap)
    stretches = [_stretch(cap, g, ev, threshold_ns) for _, g in st.head(top).iterrows()]
    above = st[st["gap_ns"] > threshold_ns]
    per_span_max = st.groupby("span_id")["gap_ns"].max() if len(st) else pd.Series(dtype="int64")
    max_gap = int(st["gap_ns"].max()) if len(st) else None
    zbl, zsrc = zaps_by_level(cap)
    retained = retained_summary(cap) if len(cap.sptes) else None
    matches = match_reports(cap, reports or [], ClockMap.from_meta(cap.meta.clock)) if reports else []
    during_zap = [m for m in matches if m.running_span_ids or m.overlapping_span_ids]
    risk = len(above) > 0 or bool(during_zap)
    notes = list(cap.meta.notes)
    if int(cap.meta.lost_events.get("total", 0)):
        notes.append(f"{cap.meta.lost_events['total']} events were lost: a yield may be missing, so a gap may "
                     "be overstated")
    if not cap.complete:
        notes.append("the capture is incomplete (recording stopped abruptly)")
    if reports and matches and all(m.capture_ns is None for m in matches):
        notes.append("no kernel report could be placed on the capture clock")
    verdict = _verdict(stretches, above, per_span_max, threshold_ns, len(spans), during_zap)
    return Triage(
        risk=risk, verdict=verdict, exit_code=EXIT_RISK if risk else EXIT_CLEAN, threshold_ns=threshold_ns,
        max_gap_ns=max_gap, spans=int(len(spans)),
        spans_above_threshold=int((per_span_max > threshold_ns).sum()), stretches=stretches,
        levels=level_shares(zbl), zaps_source=zsrc, retained=retained, kernel_reports=matches,
        kernel_log_summary=_log_summary(matches) if reports is not None else None,
        capture_start_ns=lo, capture_end_ns=hi, notes=notes,
    )


def _log_summary(matches: list[ReportMatch]) -> str:
    """One sentence on what the kernel log adds."""
    if not matches:
        return "The kernel log has no RCU stall, lockup or hung task report."
    during = [m for m in matches if m.running_span_ids or m.overlapping_span_ids]
    if not during:
        placed = sum(m.capture_ns is not None for m in matches)
        return (f"The kernel log has {len(matches)} stall/lockup report(s); {placed} placed on the capture clock, "
                "none while a zap was running.")
    m = during[0]
    return f"Kernel log line {m.line_no} ({m.kind.replace('_', ' ')}) was {m.explanation}."


def _verdict(stretches: list[Stretch], above: pd.DataFrame, per_span_max: pd.Series, threshold_ns: int,
             n_spans: int, during_zap: list[ReportMatch]) -> str:
    if not stretches:
        return f"Cannot tell: none of the {n_spans} zap spans has a measurable gap."
    w = stretches[0]
    who = f"{w.function} (span {w.span_id}, {w.comm} tid {w.tid}" + (f", {w.context}" if w.context else "") + ")"
    held = ("at least " if w.lower_bound else "") + fmt_ns(w.gap_ns)
    if len(above):
        n = int((per_span_max > threshold_ns).sum())
        s = (f"RISK: KVM held mmu_lock for {held} without offering to yield in {who}, above the "
             f"{fmt_ns(threshold_ns)} threshold ({len(above)} stretch{'es' if len(above) > 1 else ''} "
             f"in {n} of {n_spans} zap spans).")
    elif during_zap:
        s = (f"RISK: the kernel log reports a stall during a zap, although the longest hold of mmu_lock "
             f"without a yield, {held} in {who}, is under the {fmt_ns(threshold_ns)} threshold.")
    else:
        s = (f"No risk above {fmt_ns(threshold_ns)}: the longest hold of mmu_lock without a yield was {held} "
             f"in {who}, over {n_spans} zap spans.")
    return s
