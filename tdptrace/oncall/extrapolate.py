"""What the same zap would cost on a guest of another size: the simulator (tdptrace.sim) run for the
operation a stretch belongs to, under the capture's kernel era, with hardware default costs. A model, and
labelled so: it assumes a fully populated guest of the given size and an idle CPU unless the capture's span
yielded (then one competing task, so need_resched gets set as it did there)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from tdptrace.errors import BadInput
from tdptrace.kernel.functions import LEAF_ZAP, RANGE_ZAP, ROOT_TEARDOWN, operation_class
from tdptrace.kernel.mmu_lock import era_behaviour

MODEL_LABEL = "model (tdptrace simulate, default hardware costs), not a measurement"


@dataclass(frozen=True)
class Extrapolation:
    """One simulated operation on the given guest size."""

    guest_size: str
    guest_bytes: int
    strategy: str
    scenario: str
    backing: str
    contention: int
    duration_ns: int
    yields: int
    max_hold_ns: int
    max_unbreakable_ns: int
    idle_max_hold_ns: int       # the same on an idle CPU, where need_resched is never set (the worst case)
    command: str
    label: str = MODEL_LABEL

    def to_dict(self) -> dict:
        return asdict(self)


def parse_guest_size(text: str) -> int:
    """'512G' -> bytes (what `simulate --size` takes)."""
    from tdptrace.sim.layout import parse_size

    n = parse_size(text)
    if n < 8 << 20 or n > 1 << 48:
        raise BadInput(f"--guest-size {text} is out of range", "give a guest size from 8M to 256T, e.g. 512G")
    return n


class Extrapolator:
    """Runs (and caches) one simulation per scenario for a capture's kernel era."""

    def __init__(self, guest_size: str, release: Optional[str]) -> None:
        self.guest_size = guest_size
        self.guest_bytes = parse_guest_size(guest_size)
        era = era_behaviour(release)
        self.strategy = era.strategy if era else None
        self.why_not = (None if self.strategy else
                        f"the simulator has no model of kernel {release or '(unknown)'}'s zap code")
        self._cache: dict[tuple, Extrapolation] = {}

    def scenario_for(self, function: str, context: Optional[str], fraction: float) -> Optional[tuple[str, float]]:
        """(scenario, fraction of the guest) the stretch's operation stands for; None when no model fits."""
        cls = operation_class(function)
        if cls == ROOT_TEARDOWN:
            if context and context.startswith("VM teardown"):
                return "teardown", 1.0
            return "delete-slot", 1.0
        if cls in (LEAF_ZAP, RANGE_ZAP):
            return "unmap", min(max(fraction, 1 / 512), 1.0)
        return None

    def run(self, function: str, context: Optional[str], fraction: float, backing: str,
            yielded: bool) -> Optional[Extrapolation]:
        """The simulated operation, or None when the era or the operation has no model."""
        if self.strategy is None:
            return None
        sc = self.scenario_for(function, context, fraction)
        if sc is None:
            return None
        scenario, frac = sc
        contention = 1 if yielded else 0
        key = (scenario, round(frac, 4), backing, contention)
        if key not in self._cache:
            self._cache[key] = self._simulate(scenario, frac, backing, contention)
        return self._cache[key]

    def _simulate(self, scenario: str, frac: float, backing: str, contention: int) -> Extrapolation:
        from tdptrace.sim.costs import CostModel
        from tdptrace.sim.engine import Simulator
        from tdptrace.sim.layout import PAGE, GuestLayout
        from tdptrace.sim.layout import scenario as build
        from tdptrace.sim.scheduler import SchedulerModel
        from tdptrace.sim.strategies import strategy

        lay = GuestLayout(self.guest_bytes, backing, 4)
        end = max(1, int(lay.pages * frac)) if scenario == "unmap" else None
        wl = build(lay, scenario, 0 if end else None, end)
        assert self.strategy is not None

        def phase(n: int) -> dict:
            return Simulator(strategy(self.strategy), CostModel(), SchedulerModel(contention=n), "no").run(wl).phases[-1]

        ph = phase(contention)
        idle = ph if contention == 0 else phase(0)
        rng = f" --range 0:{end * PAGE >> 20}M" if end else ""
        cmd = (f"tdptrace simulate -o model.tdp --size {self.guest_size} --backing {backing} --scenario {scenario}"
               f"{rng} --strategy {self.strategy} --contention {contention} --sptes no")
        return Extrapolation(self.guest_size, self.guest_bytes, self.strategy, scenario, backing, contention,
                             int(ph["duration_ns"]), int(ph["yields"]), int(ph["max_gap_ns"]),
                             int(ph["max_unbreakable_ns"]), int(idle["max_gap_ns"]), cmd)
