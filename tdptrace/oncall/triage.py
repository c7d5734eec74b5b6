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
from tdptrace.kernel.mmu_lock import era_behaviour, lock_mode
from tdptrace.kernel.spte import LEVEL_SIZE
from tdptrace.metrics.holds import HOLD, INCLUDES_AWAY, above, df_holds
from tdptrace.metrics.limits import Limits, distance, resolve
from tdptrace.metrics.retained import retained_summary
from tdptrace.metrics.stretches import capture_bounds, df_stretches
from tdptrace.metrics.zaps import df_zaps, zaps_by_level
from tdptrace.oncall.actions import Finding, actions_for, overall
from tdptrace.oncall.clockmap import ClockMap
from tdptrace.oncall.extrapolate import Extrapolator
from tdptrace.oncall.kernel_log import HARD_LOCKUP, RCU_STALL, SOFT_LOCKUP, KernelReport
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
    kind: str = HOLD                           # 'hold', or 'includes_away' (starts at a yield whose return
    #                                            was not traced: never above the threshold)
    lock_mode: str | None = None               # 'read' / 'write' / None (cannot tell)
    lock_mode_source: str = "unknown"          # 'yield function', 'shared argument', 'function', ...
    blocks: str = ""                           # who a hold in this mode keeps waiting
    limits: dict[str, Any] = field(default_factory=dict)
    era: dict[str, Any] | None = None          # what this kernel era's zap code is known to do
    extrapolation: dict[str, Any] | None = None  # the same operation on --guest-size (a model)
    actions: list[dict[str, Any]] = field(default_factory=list)
    waiters: dict[str, Any] | None = None      # who waited for mmu_lock during the stretch (None: not recorded)


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
    consistent: bool = False        # False when this capture cannot explain the report
    covered: bool = False           # the capture spans the whole stuck period: unexplained = a contradiction
    stuck_ns: int | None = None
    longest_hold_ns: int | None = None  # the longest hold of mmu_lock in the stuck period
    explained_by: list[int] = field(default_factory=list)


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
    time_base: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    era: dict[str, Any] | None = None
    kernel: str | None = None
    guest_size: str | None = None
    stretches_including_away: int = 0
    contradictions: int = 0
    actions: list[dict[str, Any]] = field(default_factory=list)
    waiters: dict[str, Any] | None = None

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


@dataclass
class _Context:
    """Per-capture facts every stretch is judged with."""

    threshold_ns: int
    release: str | None
    limits: Limits
    extrapolator: Extrapolator | None
    imported: bool
    waiters_recorded: bool
    backing: str
    guest_pages: int | None


def _yield_functions(cap: Capture, span_ids: list[int]) -> tuple[str, ...]:
    y = cap.yields
    return tuple(sorted(set(y.loc[y["span_id"].isin(span_ids), "function"].astype(str))))


def _stretch(cap: Capture, g: pd.Series, ev: _TaskEvents, ctx: _Context) -> Stretch:
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
    kind = str(g.get("kind", HOLD))
    note = None
    if kind == INCLUDES_AWAY:
        note = ("not a hold: it starts at a yield whose return was not traced, so it includes the time spent "
                "away from mmu_lock in the yield" + ("; nothing was zapped in it" if len(z) == 0 else ""))
    fn = str(row["function"])
    op = ZAP_OPERATIONS.get(fn, "zap")
    if not pd.isna(row["zap_level"]):
        op += f" (pass down to level {int(row['zap_level'])})"
    context = zap_context(path, str(row["comm"]))
    lm = lock_mode(fn, _opt(row["shared"]), _yield_functions(cap, [sid, *inner.index.tolist()]), ctx.release)
    lower = bool(g["lower_bound"])
    is_above = kind == HOLD and gap > ctx.threshold_ns
    era = era_behaviour(ctx.release)
    pid = int(row["pid"]) if int(row["pid"]) >= 0 else None
    yields = int(row["yields"])
    finding = Finding(function=fn, context=context, kind=kind, above_threshold=is_above, lower_bound=lower,
                      lock_mode=lm.mode, span_yields=yields, can_yield=_opt(row["can_yield"]), path_source=source,
                      tid=int(row["tid"]), pid=pid, release=ctx.release, preempt=ctx.limits.preempt,
                      preempt_dynamic=ctx.limits.preempt_dynamic,
                      imported=ctx.imported, waiters_recorded=ctx.waiters_recorded, capture=str(cap.path),
                      guest_size=ctx.extrapolator.guest_size if ctx.extrapolator else None)
    extra = None
    if ctx.extrapolator is not None and kind == HOLD:
        frac = 1.0
        gs, ge = _opt(row["gfn_start"]), _opt(row["gfn_end"])
        if gs is not None and ge is not None and ctx.guest_pages:
            frac = (ge - gs) / ctx.guest_pages
        e = ctx.extrapolator.run(fn, context, frac, ctx.backing, yields > 0)
        extra = e.to_dict() if e is not None else {"unavailable": ctx.extrapolator.why_not or
                                                   f"the simulator has no model of {fn}"}
    waiters = None
    if ctx.waiters_recorded:
        from tdptrace.metrics.waiters import waiters_between

        waiters = waiters_between(cap, start, start + gap, None if pd.isna(row["vm"]) else str(row["vm"]),
                                  exclude_tid=int(row["tid"]))
    return Stretch(
        span_id=sid, function=fn, operation=op, context=context, caller_path=path,
        path_source=source, tid=int(row["tid"]), pid=pid,
        comm=str(row["comm"]), cpu=int(row["cpu"]), vm=None if pd.isna(row["vm"]) else str(row["vm"]),
        start_ns=start, gap_ns=gap, ends_at=str(g["ends_at"]), lower_bound=lower,
        above_threshold=is_above, span_start_ns=int(row["ts"]),
        span_duration_ns=_opt(row["duration_ns"]), span_yields=yields,
        span_max_gap_ns=_opt(row["max_gap_ns"]), gfn_start=_opt(row["gfn_start"]), gfn_end=_opt(row["gfn_end"]),
        zap_level=_opt(row["zap_level"]),
        zapped_gfn_min=int(gfn.min()) if len(gfn) else None, zapped_gfn_max=int(gfn.max()) if len(gfn) else None,
        sptes_zapped=_level_dict(lv, leaf), page_tables_freed=freed, span_sptes_zapped=_span_zaps(row),
        inner_spans=inner_desc, note=note, kind=kind, lock_mode=lm.mode, lock_mode_source=lm.source,
        blocks=lm.blocks, limits=distance(gap, ctx.limits) if kind == HOLD else {"source": ctx.limits.source,
                                                                                "not_a_hold": True},
        era=None if era is None else {"era": era.era, "root_teardown": era.root_teardown,
                                      "range_zap": era.range_zap},
        extrapolation=extra, actions=[a.to_dict() for a in actions_for(finding)], waiters=waiters,
    )


def level_shares(zbl: dict[str, dict[str, int]]) -> list[LevelShare]:
    """Zaps per (level, leaf/non-leaf), largest first, with their share of all zaps."""
    total = sum(v["leaf"] + v["nonleaf"] for v in zbl.values())
    out = [LevelShare(int(lv), LEVEL_SIZE.get(int(lv), "?"), kind, n, n / total if total else 0.0)
           for lv, v in zbl.items() for kind, n in (("leaf", v["leaf"]), ("non-leaf", v["nonleaf"])) if n]
    return sorted(out, key=lambda s: (-s.count, s.level))


def _report_need_ns(r: KernelReport, lim: Limits) -> int | None:
    """How long the kernel says something was stuck, or the limit that report kind fires at."""
    if r.stuck_ns:
        return int(r.stuck_ns)
    if r.kind == RCU_STALL:
        return lim.rcu_stall_ns
    if r.kind == SOFT_LOCKUP:
        return lim.soft_lockup_ns
    if r.kind == HARD_LOCKUP and lim.soft_lockup_ns:
        return lim.soft_lockup_ns // 2
    return None


def match_reports(cap: Capture, reports: list[KernelReport], clock: ClockMap,
                  holds: pd.DataFrame | None = None, lim: Limits | None = None,
                  hz: int | None = None) -> list[ReportMatch]:
    """Place each kernel report on the capture clock, find the zap spans running when it was printed and
    those overlapping the time the kernel says it was stuck, and say whether the capture explains it: a hold
    of mmu_lock (or a zap still running at the capture's end) covering the stuck period."""
    spans = cap.spans
    start = spans["ts"].to_numpy(np.int64)
    cap_lo, cap_end = capture_bounds(cap)
    end = spans["end_ts"].fillna(cap_end).to_numpy(np.int64)
    ids = spans["span_id"].to_numpy(np.int64)
    zap_fns = set(ZAP_OPERATIONS) | {f for fns, _ in ZAP_CONTEXTS for f in fns}
    lim = lim or resolve(None)
    if holds is None:
        holds = df_holds(cap, df_stretches(cap, cap_end))
    h = holds[holds["kind"] == HOLD]
    h_lo = h["start"].to_numpy(np.int64)
    h_hi = h_lo + h["gap_ns"].to_numpy(np.int64)
    h_open = h["lower_bound"].to_numpy(bool)
    h_span = h["span_id"].to_numpy(np.int64)
    tick = 10**9 // (hz or lim.hz or 250)
    out = []
    for r in reports:  # a handful of kernel reports, not event data
        t = clock.to_capture_ns(r.uptime_ns, r.wall_ns)
        since = t - r.stuck_ns if t is not None and r.stuck_ns else None
        stack_fns = [s for s in dict.fromkeys(r.symbols) if s in zap_fns]  # '? ' frames are guesses: left out
        running: list[int] = []
        overlapping: list[int] = []
        need = _report_need_ns(r, lim)
        consistent, longest, explained, covered = False, None, [], False
        if t is not None:
            covered = need is not None and t - need >= cap_lo and t <= cap_end + 4 * tick
            running = ids[(start <= t) & (end >= t)].tolist()
            lo = since if since is not None else t
            overlapping = ids[(start <= t) & (end >= lo)].tolist()
            win_lo = t - (need or 0)
            ov = (h_lo <= t) & (h_hi >= win_lo)
            if ov.any():
                longest = int((np.minimum(h_hi[ov], t) - np.maximum(h_lo[ov], win_lo)).max())
            # Explained: one hold covers the stuck period, give or take a few ticks (RCU counts from the grace
            # period's start, a little before the hold) and 5 %; a zap still running at the capture's end may.
            tol = max(4 * tick, (need or 0) // 20)
            cover = (h_lo <= win_lo + tol) & ((h_hi >= t - tol) | (h_open & (h_hi >= cap_end)))
            if need is not None and cover.any():
                consistent, explained = True, sorted(set(h_span[cover].tolist()))
        stamp = (f"[{r.uptime_ns / 1e9:.6f}]" if r.uptime_ns is not None else
                 pd.Timestamp(r.wall_ns, unit="ns", tz="UTC").isoformat() if r.wall_ns is not None else "no stamp")
        why = _explain(r, t, running, overlapping, stack_fns, clock, spans)
        if t is not None and not consistent:
            why = _contradiction(r, t, need, longest, cap_lo, cap_end, spans, h_span, h_lo, h_hi) + " " + why
        out.append(ReportMatch(
            kind=r.kind, text=r.text, line_no=r.line_no, log_time=stamp, capture_ns=t, stuck_since_ns=since,
            cpu=r.cpu, pid=r.pid, comm=r.comm, stack_zap_functions=stack_fns, running_span_ids=running,
            overlapping_span_ids=overlapping, explanation=why, consistent=consistent, covered=covered, stuck_ns=need,
            longest_hold_ns=longest, explained_by=explained,
        ))
    return out


def _contradiction(r: KernelReport, t: int, need: int | None, longest: int | None, cap_lo: int, cap_hi: int,
                   spans: pd.DataFrame, h_span: np.ndarray, h_lo: np.ndarray, h_hi: np.ndarray) -> str:
    """Why this capture does not explain a report, in one sentence."""
    what = r.kind.replace("_", " ")
    if need is None:
        return (f"This capture cannot explain the {what}: the report does not say how long it was stuck and "
                "the host's limit for it is unknown (give --limits; the kernel's default RCU stall timeout is "
                "21 s).")
    if t - need < cap_lo:
        return (f"This capture cannot explain the {what}: the report says stuck for {fmt_ns(need)}, since "
                f"{(t - need) / 1e9:.6f} s, before the capture began ({cap_lo / 1e9:.6f} s).")
    if longest is None and t > cap_hi:
        return (f"This capture cannot explain the {what}: it was printed at {t / 1e9:.6f} s, after the capture "
                f"ended ({cap_hi / 1e9:.6f} s), and no zap was still running then.")
    if longest is None:
        return (f"CONTRADICTION: the report says stuck for {fmt_ns(need)}, but no zap held mmu_lock during "
                "that time: this capture does not explain it.")
    ov = (h_lo <= t) & (h_hi >= t - need)
    k = int(np.argmax(np.minimum(h_hi, t) - np.maximum(h_lo, t - need) + np.where(ov, 0, -(1 << 62))))
    sid = int(h_span[k])
    fn = spans.set_index("span_id").loc[sid, "function"]
    return (f"CONTRADICTION: the report says stuck for {fmt_ns(need)}, but the longest hold of mmu_lock in that "
            f"time is {fmt_ns(longest)} (span {sid} {fn}): this capture does not explain it.")


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
        return f"Not placed on the capture clock ({why})" + extra + "."
    if running:
        ids, rel = _related(r, running, spans)
        return f"It was printed while {_names(ids, spans)} was running, on {rel}" + extra + "."
    if overlapping:
        ids, rel = _related(r, overlapping, spans)
        return f"It was printed after a stuck period that overlaps {_names(ids, spans)}, on {rel}" + extra + "."
    return "It was printed when no zap span was running, nor during the stuck period it reports" + extra + "."


def _backing(cap: Capture) -> str:
    """The host page size that backed the guest, from which level held most leaf zaps."""
    zbl, _ = zaps_by_level(cap)
    leaf = {int(lv): v["leaf"] for lv, v in zbl.items() if v["leaf"]}
    if not leaf:
        return "4k"
    return {1: "4k", 2: "2m", 3: "1g"}.get(max(leaf, key=leaf.get), "4k")


def _guest_pages(cap: Capture) -> int | None:
    """The guest's size in 4 KiB pages as far as the capture shows it (highest gfn mapped, plus one)."""
    s = cap.sptes
    if not len(s):
        return None
    old = s["old_spte"].to_numpy(np.uint64)
    # Entries that were present (a teardown also overwrites never-used entries with the removed marker).
    present = (old & np.uint64(1 << 11)) != 0 if cap.meta.spte_encoding == "present-bit" else old != 0
    if not present.any():
        return None
    s = s[present]
    i = int(np.argmax(s["gfn"].to_numpy(np.uint64)))
    return int(s["gfn"].iloc[i]) + int(512 ** (int(s["level"].iloc[i]) - 1))


def triage(cap: Capture, threshold_ns: int = DEFAULT_THRESHOLD_NS, reports: list[KernelReport] | None = None,
           top: int = 5, limits: dict[str, int] | None = None, guest_size: str | None = None) -> Triage:
    """The verdict and its evidence for one capture (MissingEvents when it has no zap spans).

    `limits` overrides the host limits recorded in meta (keys of meta.host.limits); `guest_size` (e.g.
    '512G') adds, for each hold, what the simulator says the same operation would cost on that guest."""
    spans = cap.spans
    if spans.empty:
        raise MissingEvents(f"{cap.path}: no zap spans, so the time KVM held mmu_lock cannot be measured",
                            "record with kprobes (or import a trace with the tdp/* kprobe events); "
                            "'tdptrace summary' still shows zaps by level")
    lo, hi = capture_bounds(cap)
    st = df_holds(cap, df_stretches(cap, hi))
    release = (cap.meta.kernel or {}).get("release")
    lim = resolve((cap.meta.host or {}).get("limits"), limits)
    from tdptrace.metrics.waiters import has_waiters

    ctx = _Context(threshold_ns=threshold_ns, release=release, limits=lim,
                   extrapolator=Extrapolator(guest_size, release) if guest_size else None,
                   imported=(cap.meta.source or {}).get("kind") == "import", waiters_recorded=has_waiters(cap),
                   backing=_backing(cap) if guest_size else "4k", guest_pages=_guest_pages(cap) if guest_size else None)
    ev = _TaskEvents(cap)
    stretches = [_stretch(cap, g, ev, ctx) for _, g in st.head(top).iterrows()]
    is_above = above(st, threshold_ns)
    holds = st[st["kind"] == HOLD]
    per_span_max = holds[is_above[holds.index]].groupby("span_id")["gap_ns"].max() if len(holds) else \
        pd.Series(dtype="int64")
    max_gap = int(holds["gap_ns"].max()) if len(holds) else None
    zbl, zsrc = zaps_by_level(cap)
    retained = retained_summary(cap) if len(cap.sptes) else None
    clock = ClockMap.from_meta(cap.meta.clock)
    matches = match_reports(cap, reports or [], clock, st, lim) if reports else []
    during_zap = [m for m in matches if (m.running_span_ids or m.overlapping_span_ids) and m.consistent]
    contradictions = [m for m in matches if not m.consistent and m.covered]
    n_above = int(is_above.sum())
    risk = n_above > 0 or bool(during_zap)
    notes = list(cap.meta.notes)
    if int(cap.meta.lost_events.get("total", 0)):
        notes.append(f"{cap.meta.lost_events['total']} events were lost: a yield may be missing, so a gap may "
                     "be overstated")
    if not cap.complete:
        notes.append("the capture is incomplete (recording stopped abruptly)")
    if reports and matches and all(m.capture_ns is None for m in matches):
        notes.append("no kernel report could be placed on the capture clock")
    n_away = int((st["kind"] == INCLUDES_AWAY).sum())
    if n_away:
        notes.append(f"{n_away} stretch{'es start' if n_away > 1 else ' starts'} at a yield whose return was not traced: "
                     "time away from mmu_lock is inside, so they are kept apart from holds and never count as above "
                     "the threshold")
    if not lim.known:
        notes.append("the host's RCU stall and soft-lockup limits are unknown for this capture (not recorded): "
                     "give them with --limits rcu_cpu_stall_timeout=S,watchdog_thresh=S; kernel defaults are 21 s "
                     "and 2 x 10 s")
    hold_stretches = [s for s in stretches if s.kind == HOLD]
    verdict = _verdict(hold_stretches, n_above, per_span_max, threshold_ns, len(spans), during_zap, contradictions,
                       lim)
    era = era_behaviour(release)
    acts = [a for s in stretches if s.above_threshold or s.lower_bound for a in s.actions]
    acts = list({a["text"]: a for a in acts}.values()) + [a.to_dict() for a in overall(str(cap.path))]
    waiters = None
    if ctx.waiters_recorded:
        from tdptrace.metrics.waiters import waiters_summary

        waiters = waiters_summary(cap)
    return Triage(
        risk=risk, verdict=verdict, exit_code=EXIT_RISK if risk else EXIT_CLEAN, threshold_ns=threshold_ns,
        max_gap_ns=max_gap, spans=int(len(spans)),
        spans_above_threshold=int(len(per_span_max)), stretches=stretches,
        levels=level_shares(zbl), zaps_source=zsrc, retained=retained, kernel_reports=matches,
        kernel_log_summary=_log_summary(matches) if reports is not None else None,
        capture_start_ns=lo, capture_end_ns=hi, notes=notes, time_base=clock.describe(),
        limits=lim.to_dict(), era=None if era is None else {"era": era.era, "root_teardown": era.root_teardown,
                                                             "range_zap": era.range_zap,
                                                             "simulator_strategy": era.strategy},
        kernel=release, guest_size=guest_size, stretches_including_away=n_away,
        contradictions=len(contradictions), actions=acts, waiters=waiters,
    )


def _log_summary(matches: list[ReportMatch]) -> str:
    """One sentence on what the kernel log adds."""
    if not matches:
        return "The kernel log has no RCU stall, lockup or hung task report."
    bad = [m for m in matches if not m.consistent and m.covered]
    during = [m for m in matches if (m.running_span_ids or m.overlapping_span_ids) and m.consistent]
    if bad:
        m = bad[0]
        more = f" ({len(bad) - 1} more reports are not explained either)" if len(bad) > 1 else ""
        return f"Kernel log line {m.line_no} ({m.kind.replace('_', ' ')}): {m.explanation}{more}"
    if not during:
        placed = [m for m in matches if m.capture_ns is not None]
        first = f" Line {placed[0].line_no}: {placed[0].explanation}" if placed else ""
        return (f"The kernel log has {len(matches)} stall/lockup report(s); {len(placed)} placed on the capture "
                f"clock, none explained by a zap.{first}")
    m = during[0]
    return f"Kernel log line {m.line_no} ({m.kind.replace('_', ' ')}) is explained by this capture: {m.explanation}"


def _limit_phrase(s: Stretch, lim: Limits) -> str:
    """'0.5 % of the host's 21 s RCU stall timeout' (or the defaults, said as such)."""
    d = s.limits.get("rcu_stall") or {}
    if d.get("limit_ns"):
        return f"{d['share']:.1%} of this host's {fmt_ns(d['limit_ns'])} RCU stall timeout"
    return "host limits unknown (kernel default RCU stall timeout 21 s)"


def _verdict(stretches: list[Stretch], n_above: int, per_span_max: pd.Series, threshold_ns: int,
             n_spans: int, during_zap: list[ReportMatch], contradictions: list[ReportMatch], lim: Limits) -> str:
    if not stretches:
        return f"Cannot tell: none of the {n_spans} zap spans has a measurable hold of mmu_lock."
    w = stretches[0]
    who = f"{w.function} (span {w.span_id}, {w.comm} tid {w.tid}" + (f", {w.context}" if w.context else "") + ")"
    held = ("at least " if w.lower_bound else "") + fmt_ns(w.gap_ns)
    mode = f" in {w.lock_mode} mode" if w.lock_mode else ""
    if n_above:
        n = len(per_span_max)
        s = (f"RISK: KVM held mmu_lock{mode} for {held} without offering to yield in {who}, above the "
             f"{fmt_ns(threshold_ns)} threshold ({n_above} hold{'s' if n_above > 1 else ''} "
             f"in {n} of {n_spans} zap spans); {_limit_phrase(w, lim)}.")
    elif during_zap:
        s = (f"RISK: the kernel log reports a stall during a zap, although the longest hold of mmu_lock "
             f"without a yield, {held} in {who}, is under the {fmt_ns(threshold_ns)} threshold.")
    else:
        s = (f"No risk above {fmt_ns(threshold_ns)}: the longest hold of mmu_lock without a yield was {held} "
             f"in {who}, over {n_spans} zap spans.")
    if contradictions:
        m = contradictions[0]
        s += (f" The kernel log's {m.kind.replace('_', ' ')} (line {m.line_no}, stuck {fmt_ns(m.stuck_ns)}) is not "
              "explained by this capture.")
    return s
