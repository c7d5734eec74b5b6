"""simulate reports each phase of its workload as it starts, then the writing of the capture."""
from __future__ import annotations

from tdptrace.sim.run import SimSpec, simulate


def test_simulate_reports_phases_then_writing(tmp_path):
    seen: list[tuple[str, int, int]] = []
    simulate(SimSpec(size="1G", workload="kvmtouch"), tmp_path / "s.tdp", progress=lambda *a: seen.append(a))
    total = seen[0][2]
    assert total >= 3 and [d for _, d, _ in seen] == list(range(total)) + [total]
    assert all(s.startswith("simulating ") for s, _, _ in seen[:-1]) and seen[-1][0] == "writing the capture"
