"""When need_resched() becomes set for the zapping task, and where it then yields (docs/kernel.md "Yields").

On a non-preemptible kernel only need_resched() makes KVM yield, so an idle CPU means no yield at all. With
`contention` other runnable tasks on the CPU, the scheduler tick (every tick_ns) sets need_resched once the
zapping task has run its slice since it last got the CPU. Fair scheduling then lets each competitor catch
up: it runs as long as the task ran since it last got the CPU (at least one slice), so a
long stretch without a yield is paid back by an equally long absence (seen in the lab: 99.7 ms held, ~96 ms
away). KVM notices the flag only at a yield check: once per SPTE the iterator
visits, never inside a recursive teardown, and not before the iterator made progress.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class SchedulerModel:
    """need_resched model. Defaults: Debian's HZ=250 tick, EEVDF base slice of an 8+ CPU host
    (0.75 ms x (1 + ilog2(8)) = 3 ms), idle CPU."""

    contention: int = 0
    tick_ns: int = 4_000_000
    slice_ns: int = 3_000_000
    phase_ns: int = 0  # CPU time the task already used of its slice when a zap operation starts

    def period_ns(self) -> int:
        """CPU time between getting the CPU and need_resched being set, rounded up to the tick."""
        return -(-self.slice_ns // self.tick_ns) * self.tick_ns

    def away_ns(self, ran_ns: float) -> float:
        """Time the task is off the CPU at a yield after running ran_ns since it last got the CPU."""
        return self.contention * max(float(self.slice_ns), ran_ns)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Timeline:
    """Work segments of one zap operation in execution order, in CPU-time coordinates (ns from its start).

    start/dur: each segment; checks: yield checks spread evenly over it (the first at its start);
    first_ok: index of the first check allowed to yield (1 at the start of a loop: no progress yet);
    can_yield: the loop may yield at all.
    """

    start: np.ndarray
    dur: np.ndarray
    checks: np.ndarray
    first_ok: np.ndarray
    can_yield: np.ndarray


def find_yields(tl: Timeline, sched: SchedulerModel, yield_ns: float = 0.0, max_yields: int = 10_000_000
                ) -> tuple[np.ndarray, np.ndarray]:
    """CPU-time positions (ns from the operation start) of the yields taken, ascending, and the wall time
    from each yield point's entry to its return: the cost of yielding (yield_ns) plus the time away.

    One step per yield taken (each depends on where the previous one resumed); each step is a binary search
    over the segments, so the cost is O(yields x log segments), independent of the number of SPTEs.
    """
    none = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    if sched.contention <= 0 or len(tl.start) == 0:
        return none
    ok = tl.can_yield & (tl.checks > tl.first_ok)
    if not ok.any():
        return none
    spacing = np.where(tl.checks > 0, tl.dur / np.maximum(tl.checks, 1), 0.0)
    first = tl.start + tl.first_ok * spacing  # first allowed check of each segment
    last = tl.start + (tl.checks - 1) * spacing
    idx_ok = np.flatnonzero(ok)
    ends_ok = (tl.start + tl.dur)[idx_ok]
    out = []
    aways = []
    cpu = 0.0  # CPU time at which the task last got the CPU
    wall_off = 0.0  # wall time spent away so far
    used = float(sched.phase_ns)
    while len(out) < max_yields:
        # need_resched is set at the first tick once the slice is used up (ticks are wall-clock).
        wall_due = cpu + wall_off + max(sched.slice_ns - used, 0.0)
        wall_set = -(-wall_due // sched.tick_ns) * sched.tick_ns
        target = max(wall_set - wall_off, cpu)
        # First allowed check at or after `target`, strictly after the last yield.
        k = np.searchsorted(ends_ok, target, side="right")
        if k >= len(idx_ok):
            break
        s = idx_ok[k]
        if target <= first[s]:
            y = first[s]
        else:
            j = np.ceil((target - tl.start[s]) / spacing[s])
            y = tl.start[s] + j * spacing[s]
            if y > last[s] + 1e-9:
                if k + 1 >= len(idx_ok):
                    break
                y = first[idx_ok[k + 1]]
        if out and y <= out[-1]:
            y = np.nextafter(out[-1], np.inf)
        out.append(y)
        away = yield_ns + sched.away_ns(y - cpu + used)
        aways.append(away)
        wall_off += away
        cpu = y
        used = 0.0
    return (np.asarray(out, dtype=np.float64).round().astype(np.int64),
            np.asarray(aways, dtype=np.float64).round().astype(np.int64))
