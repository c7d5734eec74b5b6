"""Run a workload under one era's strategy: the tree changes, the work is timed by the cost model, yields
are placed by the scheduler model, and the result is the rows of a capture (spans, yields, page-table
events, markers, and for small VMs every SPTE change)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tdptrace.capture.schema import LEVELS
from tdptrace.errors import BadInput
from tdptrace.kernel.signatures import signature
from tdptrace.sim.costs import CostModel
from tdptrace.sim.layout import Phase, Workload
from tdptrace.sim.scheduler import SchedulerModel, Timeline, find_yields
from tdptrace.sim.strategies import ALL, Call, Strategy
from tdptrace.sim.tree import TdpTree, Work, entry_pages

# Emit per-SPTE rows ("auto") when the guest maps at most this many leaf SPTEs: beyond it the capture keeps
# the aggregated figures only (spans, meta.events.zap_totals), as the live recorder does for busy hosts.
AUTO_SPTE_LIMIT = 1_000_000
PHASE_GAP_NS = 1_000_000
RCU_STALL_NS = 21_000_000_000  # CONFIG_RCU_CPU_STALL_TIMEOUT default


@dataclass
class Identity:
    """Who does the zapping in the simulated capture."""

    comm: str = "sim-vmm"
    tid: int = 1000
    pid: int = 1000
    cpu: int = 0
    vm: str = "sim:vm0"
    root: str = "sim:root0"


@dataclass
class SimResult:
    """Rows for each capture table, each with ts and `order` (generation order, breaks ts ties)."""

    spans: pd.DataFrame
    yields: pd.DataFrame
    sptes: pd.DataFrame | None
    page_tables: pd.DataFrame
    markers: pd.DataFrame
    zap_totals: np.ndarray
    phases: list[dict[str, Any]] = field(default_factory=list)
    retained_at_end: dict[int, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class _Rows:
    """Collects rows per table with a running generation counter."""

    def __init__(self) -> None:
        self.n = 0
        self.parts: dict[str, list[pd.DataFrame]] = {"spans": [], "yields": [], "sptes": [], "page_tables": [],
                                                     "markers": []}

    def add(self, table: str, df: pd.DataFrame) -> None:
        if len(df):
            df = df.assign(order=np.arange(self.n, self.n + len(df), dtype=np.int64))
            self.n += len(df)
            self.parts[table].append(df)

    def frame(self, table: str) -> pd.DataFrame:
        p = self.parts[table]
        return pd.concat(p, ignore_index=True) if p else pd.DataFrame()


@dataclass
class _Span:
    call: Call
    depth: int
    parent: int | None
    start: float
    end: float = 0.0
    zaps: np.ndarray = field(default_factory=lambda: np.zeros((6, 2), dtype=np.int64))
    retained_after: int = 0


def call_args(c: Call, release: str) -> dict[str, Any]:
    """The span's argument columns, only where the era's function takes them (kernel.signatures, today's stable form),
    as a probe on that function would record them."""
    params = signature(c.function, release, current=True) or ()
    ranged = c.end != ALL
    return {
        "gfn_start": c.start if "start" in params and ranged else None,
        "gfn_end": c.end if "end" in params and ranged else None,
        "zap_level": c.zap_level if "zap_level" in params else None,
        "shared": int(c.shared) if "shared" in params else None,
        "can_yield": int(c.can_yield) if "can_yield" in params else None,
        "flush": c.flush if "flush" in params else None,
    }


class Simulator:
    """Runs workloads on a fresh tree; one instance per capture."""

    def __init__(self, strategy: Strategy, costs: CostModel | None = None, sched: SchedulerModel | None = None,
                 sptes: str = "auto", phys_bits: int | None = None, ident: Identity | None = None) -> None:
        self.strategy = strategy
        self.costs = costs or CostModel()
        self.sched = sched or SchedulerModel()
        self.sptes_mode = sptes
        self.phys_bits = phys_bits
        self.ident = ident or Identity()

    def run(self, wl: Workload, progress: Callable[[str, int, int], None] | None = None) -> SimResult:
        """Simulate every phase of the workload; progress(phase name, phases done, phases) as each starts."""
        lay = wl.layout
        phys = self.phys_bits or (52 if lay.paging == 5 else 46)
        if not 32 <= phys <= 52 or lay.size_bytes > (1 << phys):
            raise BadInput(f"a {lay.size_bytes >> 30} GiB guest does not fit below MAXPHYADDR {phys} bits",
                           "give --phys-bits between 32 and 52, large enough for --size")
        tree = TdpTree(lay.paging, max_gfn=1 << (phys - 12))
        starts, ends = lay.touched()
        unit = entry_pages(lay.level)
        leafs = int(np.sum(-(-(ends - starts) // unit)))
        want = self.sptes_mode == "yes" or (self.sptes_mode == "auto" and leafs <= AUTO_SPTE_LIMIT)
        rows = _Rows()
        totals = np.zeros((6, 2), dtype=np.int64)
        self.span_id = 0
        now = 0
        rows.add("page_tables", self._tables(pd.DataFrame({"kind": ["alloc"], "gfn": [0], "level": [lay.paging]}),
                                             np.array([now])))
        phases = []
        notes = []
        for i, ph in enumerate(wl.phases):
            if progress:
                progress(f"simulating {ph.name}", i, len(wl.phases))
            now += PHASE_GAP_NS
            rows.add("markers", self._marker("phase", None, ph.name, now))
            t0 = now
            if ph.op == "touch":
                now, info = self._touch(tree, lay, ph, now, want, rows)
            else:
                now, info = self._zap(tree, self._calls(ph, lay.paging), now, want, rows)
                totals += info.pop("zaps")
                if info["max_gap_ns"] and info["max_gap_ns"] > RCU_STALL_NS:
                    notes.append(f"{ph.name}: mmu_lock and RCU held {info['max_gap_ns'] / 1e9:.1f} s without a "
                                 f"yield, beyond the {RCU_STALL_NS // 10**9} s RCU stall timeout")
            phases.append({"name": ph.name, "op": ph.op, "start_ns": t0, "end_ns": now, **info})
        sptes = rows.frame("sptes") if want else None
        return SimResult(rows.frame("spans"), rows.frame("yields"), sptes, rows.frame("page_tables"),
                         rows.frame("markers"), totals, phases, tree.retained(), notes)

    # -- phases ------------------------------------------------------------------------------------------
    def _calls(self, ph: Phase, root_level: int) -> list[Call]:
        s = self.strategy
        if ph.op in ("unmap", "madvise"):
            return s.unmap(int(ph.start), int(ph.end))
        if ph.op == "delete_slot":
            return s.delete_slot(root_level)
        if ph.op == "teardown":
            return s.teardown(root_level)
        raise ValueError(f"unknown op {ph.op}")

    def _touch(self, tree: TdpTree, lay, ph: Phase, now: int, want: bool, rows: _Rows) -> tuple[int, dict]:
        if ph.start is None:
            starts, ends = lay.touched()
        else:
            starts, ends = np.array([ph.start], dtype=np.int64), np.array([ph.end], dtype=np.int64)
        res = tree.install(starts, ends, lay.level, want_sptes=want)
        n_leaf = int(res.new_sptes[:, 0].sum())
        dur = int(n_leaf * self.costs.fault_ns)
        ev = res.events
        if len(ev):
            ts = now + ((np.arange(len(ev)) + 1) * dur // (len(ev) + 1)).astype(np.int64)
            self._emit_events(ev, ts, rows)
        return now + dur, {"installed": {str(lv): int(res.new_sptes[lv].sum()) for lv in LEVELS
                                         if res.new_sptes[lv].sum()},
                           "tables_allocated": int(res.new_tables.sum())}

    def _zap(self, tree: TdpTree, calls: list[Call], now: int, want: bool, rows: _Rows) -> tuple[int, dict]:
        """One zap operation: run the calls, time them, place the yields, emit spans and events."""
        st = self.strategy
        cpu = 0.0
        spans: list[_Span] = []
        segs: list[pd.DataFrame] = []
        events: list[tuple[pd.DataFrame, int]] = []  # (events, segment offset)
        markers: list[tuple[str, str | None, float]] = []
        nseg = 0
        half = self.costs.call_ns / 2

        def run(call: Call, depth: int, parent: int | None) -> None:
            nonlocal cpu, nseg
            if not call.span and call.rule is None and not call.children:
                ev = "kvm_mmu_zap_all_fast" if call.function == "kvm_mmu_zap_all_fast" else "call"
                markers.append((ev, None if ev != "call" else call.function, cpu))
                cpu += half
                return
            me = len(spans)
            spans.append(_Span(call, depth, parent, cpu))
            cpu += half
            if call.rule is not None:
                end = tree.max_gfn if call.end == ALL else call.end
                w: Work = tree.zap(call.start, end, call.rule, call.shared, st.removed_spte, st.nonpresent_spte,
                                   want_events=want)
                seg = w.segments.copy()
                dur = self.costs.segment_ns(seg)
                seg["start"] = cpu + np.concatenate([[0.0], np.cumsum(dur)[:-1]]) if len(seg) else []
                seg["dur"] = dur
                seg["first_ok"] = (np.arange(len(seg)) == 0).astype(np.int64)
                seg["can_yield"] = call.can_yield
                seg["span"] = me
                cpu += float(dur.sum())
                segs.append(seg)
                events.append((w.events, nseg))
                nseg += len(seg)
                spans[me].zaps = w.zaps
                spans[me].retained_after = sum(tree.retained().values())
            for child in call.children:
                run(child, depth + 1, me)
            if call.children:
                spans[me].zaps = sum((s.zaps for s in spans[me + 1:] if s.parent == me), np.zeros((6, 2), np.int64))
                spans[me].retained_after = sum(tree.retained().values())
            cpu += half
            spans[me].end = cpu

        for c in calls:
            run(c, 0, None)
        seg = pd.concat(segs, ignore_index=True) if segs else pd.DataFrame(
            {"start": [], "dur": [], "checks": [], "first_ok": [], "can_yield": [], "span": []})
        tl = Timeline(seg["start"].to_numpy(np.float64), seg["dur"].to_numpy(np.float64),
                      seg["checks"].to_numpy(np.int64), seg["first_ok"].to_numpy(np.int64),
                      seg["can_yield"].to_numpy(bool))
        ypos, yaway = find_yields(tl, self.sched, self.costs.yield_ns)
        cum_away = np.concatenate([[0], np.cumsum(yaway)]).astype(np.int64)

        def wall(pos: np.ndarray, side: str = "left") -> np.ndarray:
            k = np.searchsorted(ypos, pos, side=side)
            return now + np.round(pos).astype(np.int64) + cum_away[k]

        # Yields: the innermost span whose segment holds each yield.
        yseg = np.searchsorted(tl.start, ypos, side="right") - 1 if len(ypos) else np.zeros(0, np.int64)
        yspan = seg["span"].to_numpy(np.int64)[yseg] if len(ypos) else np.zeros(0, np.int64)
        ids = np.arange(self.span_id, self.span_id + len(spans))
        y_entry = wall(ypos.astype(np.float64), side="left")
        shared = np.array([spans[s].call.shared for s in yspan], dtype=bool)
        rows.add("markers", pd.concat([self._marker(e, f, None, int(wall(np.array([p]))[0])) for e, f, p in markers],
                                      ignore_index=True) if markers else pd.DataFrame())
        span_rows = []
        max_gap_all = 0
        for i, sp in enumerate(spans):  # spans are few (a handful per operation): aggregated records
            inside = (ypos > sp.start) & (ypos < sp.end)
            yp = ypos[inside].astype(np.float64)
            bounds = np.concatenate([[sp.start], yp, [sp.end]])
            max_gap = int(np.round(np.diff(bounds).max())) if len(bounds) > 1 else 0
            if sp.depth == 0:
                max_gap_all = max(max_gap_all, max_gap)
            r = {
                "ts": int(wall(np.array([sp.start]))[0]), "span_id": int(ids[i]), "function": sp.call.function,
                "end_ts": int(wall(np.array([sp.end]), side="right")[0]),
                "parent_id": None if sp.parent is None else int(ids[sp.parent]), "depth": sp.depth,
                "caller": sp.call.caller, **call_args(sp.call, st.release),
                "yields": int(inside.sum()), "lock_drops": int(inside.sum()), "away_ns": int(yaway[inside].sum()),
                "max_gap_ns": max_gap, "retained_after": sp.retained_after,
            }
            for lv in LEVELS:
                r[f"leaf_l{lv}"] = int(sp.zaps[lv, 0])
                r[f"nonleaf_l{lv}"] = int(sp.zaps[lv, 1])
            span_rows.append(r)
        if span_rows:
            df = pd.DataFrame(span_rows)
            df["duration_ns"] = df["end_ts"] - df["ts"]
            rows.add("spans", df)
        if len(ypos):
            rows.add("yields", pd.DataFrame({
                "ts": y_entry, "ret_ts": y_entry + yaway, "ret": 1, "span_id": ids[yspan],
                "function": np.where(shared, "__cond_resched_rwlock_read", "__cond_resched_rwlock_write"),
            }))
        # Events: spread over their segment.
        for ev, off in events:
            if not len(ev):
                continue
            sg = ev["segment"].to_numpy(np.int64) + off
            rank = ev.groupby(sg).cumcount().to_numpy()
            size = np.bincount(sg, minlength=len(seg))[sg]
            pos = tl.start[sg] + tl.dur[sg] * (rank + 1) / (size + 1)
            self._emit_events(ev, wall(pos), rows)
        self.span_id += len(spans)
        zaps = sum((s.zaps for s in spans if s.depth == 0), np.zeros((6, 2), np.int64))
        end = int(wall(np.array([cpu]), side="right")[0])
        # The longest work no yield check can interrupt, whatever the scheduler does: a recursive teardown,
        # or the distance between two checks of a loop.
        td = seg["teardown"].to_numpy(bool) if len(seg) else np.zeros(0, bool)
        unbreakable = np.where(td, tl.dur, tl.dur / np.maximum(tl.checks, 1))
        return end, {"zaps": zaps, "yields": int(len(ypos)), "max_gap_ns": max_gap_all,
                     "max_unbreakable_ns": int(unbreakable.max()) if len(unbreakable) else 0,
                     "retained_after": sum(tree.retained().values()), "duration_ns": end - now}

    # -- rows --------------------------------------------------------------------------------------------
    def _emit_events(self, ev: pd.DataFrame, ts: np.ndarray, rows: _Rows) -> None:
        kind = ev["kind"].to_numpy()
        sp = kind == "spte"
        if sp.any():
            e = ev[sp]
            rows.add("sptes", pd.DataFrame({"ts": ts[sp], "as_id": 0, "gfn": e["gfn"].to_numpy(np.uint64),
                                            "level": e["level"].to_numpy(np.uint8),
                                            "old_spte": e["old_spte"].to_numpy(np.uint64),
                                            "new_spte": e["new_spte"].to_numpy(np.uint64)}))
        pt = ~sp
        if pt.any():
            rows.add("page_tables", self._tables(ev[pt], ts[pt]))

    def _tables(self, ev: pd.DataFrame, ts: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"ts": ts, "kind": ev["kind"].to_numpy(), "gfn": ev["gfn"].to_numpy(np.uint64),
                             "level": ev["level"].to_numpy(np.uint8)})

    def _marker(self, event: str, function: str | None, detail: str | None, ts: int) -> pd.DataFrame:
        return pd.DataFrame({"ts": [ts], "event": [event], "function": [function], "detail": [detail]})
