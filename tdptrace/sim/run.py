"""One simulation from user-level parameters to a capture on disk (what `tdptrace simulate` runs)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tdptrace.errors import BadInput
from tdptrace.sim.costs import CostModel
from tdptrace.sim.engine import Identity, SimResult, Simulator
from tdptrace.sim.layout import GuestLayout, Workload, kvmtouch, parse_size, scenario
from tdptrace.sim.scheduler import SchedulerModel
from tdptrace.sim.strategies import strategy as get_strategy
from tdptrace.sim.to_capture import write_capture


@dataclass
class SimSpec:
    """Every parameter of a simulation (stored in meta.source.parameters)."""

    size: str = "64G"
    backing: str = "4k"
    paging: int = 4
    populated: float = 1.0
    pattern: str = "contiguous"
    scenario: str = "teardown"
    start: int | None = None
    end: int | None = None
    workload: str | None = None
    strategy: str = "two-pass"
    costs: Path | None = None
    contention: int = 0
    tick_ns: int = 4_000_000
    slice_ns: int = 3_000_000
    phase_ns: int = 0
    sptes: str = "auto"
    phys_bits: int | None = None

    def build(self) -> Workload:
        nbytes = parse_size(self.size)
        if self.workload is None:
            lay = GuestLayout(nbytes, self.backing, self.paging, self.populated, self.pattern)
            return scenario(lay, self.scenario, self.start, self.end)
        if self.workload != "kvmtouch":
            raise BadInput(f"unknown workload '{self.workload}'", "the built-in workload is 'kvmtouch'")
        if self.backing not in ("4k", "2m"):
            raise BadInput("kvmtouch backs guest memory with 4k pages or THP (2m)", "use --backing 4k or 2m")
        return kvmtouch(nbytes >> 20, self.backing == "2m", self.paging)

    def describe(self) -> str:
        what = self.workload or self.scenario
        return f"{what} of a {self.size} VM ({self.backing}, {self.paging}-level) under {self.strategy}"


def simulate(spec: SimSpec, output: str | Path, overwrite: bool = False,
             progress: Callable[[str, int, int], None] | None = None) -> tuple[Path, SimResult]:
    """Run the simulation described by spec and write it as a capture; progress(step, done, total) hears each
    phase and the writing."""
    strat = get_strategy(spec.strategy)
    costs = CostModel.load(spec.costs) if spec.costs else CostModel()
    sched = SchedulerModel(contention=spec.contention, tick_ns=spec.tick_ns, slice_ns=spec.slice_ns,
                           phase_ns=spec.phase_ns)
    if spec.contention < 0 or spec.tick_ns <= 0 or spec.slice_ns <= 0 or spec.phase_ns < 0:
        raise BadInput("contention and phase must be >= 0, tick and slice positive",
                       "check --contention, --tick, --slice, --phase")
    wl = spec.build()
    ident = Identity()
    res = Simulator(strat, costs, sched, spec.sptes, spec.phys_bits, ident).run(wl, progress)
    if progress:
        progress("writing the capture", len(wl.phases), len(wl.phases))
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(spec).items()}
    source = {"kind": "simulation", "parameters": params, "workload": wl.to_dict(),
              "strategy": {"name": strat.name, "era": strat.era}, "costs": costs.to_dict(),
              "scheduler": sched.to_dict()}
    path = write_capture(res, output, source, f"{strat.release} (simulated {strat.era})", ident, overwrite)
    return path, res
