"""The simulator against the live lab: the same workload (size, backing, phases) on each lab kernel gives the
zaps by level, page-table counts and root-teardown structure (passes per root, their zap levels and the
retained tables after each) that the kernel produced. Reuses the lab runs of test_lab.py (one boot each).

The lab may probe more entry points with returns (kvm_tdp_mmu_zap_all, kvm_tdp_mmu_zap_invalidated_roots)
than the simulator makes spans of; the comparison keeps the loops both have: tdp_mmu_zap_leafs,
tdp_mmu_zap_root and its __tdp_mmu_zap_root passes.
"""
from __future__ import annotations

import pytest

import tdptrace
from tdptrace.metrics.summary import summarize
from tdptrace.sim.engine import Simulator
from tdptrace.sim.layout import kvmtouch
from tdptrace.sim.strategies import strategy
from tdptrace.sim.to_capture import write_capture

from .conftest import hog_scenario, thp_scenario

pytestmark = pytest.mark.lab

ERA = {"6.1": "two-pass", "6.12": "four-pass"}
LOOPS = {"tdp_mmu_zap_leafs", "tdp_mmu_zap_root", "__tdp_mmu_zap_root"}


def _structure(summary: dict) -> list[tuple]:
    return [(s["function"], s["zap_level"], s["shared"], s["retained_nonleaf_after"], s["zaps_by_level"])
            for s in summary["spans"] if s["function"] in LOOPS]


def _sim(tmp_path, run, kernel: str) -> dict:
    sc = run.scenario
    res = Simulator(strategy(ERA.get(kernel, "5.15"))).run(kvmtouch(sc["mib"], bool(sc["thp"])))
    path = write_capture(res, tmp_path / f"sim-{kernel}.tdp", {"kind": "simulation"}, run.release)
    return summarize(tdptrace.open(path))


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
@pytest.mark.parametrize("scenario", [thp_scenario, hog_scenario], ids=["2m", "4k-hog"])
def test_simulation_matches_the_lab_kernel(lab_run, tmp_path, kernel, scenario):
    run = lab_run(scenario(kernel))
    real = summarize(tdptrace.open(run.capture))
    sim = _sim(tmp_path, run, kernel)
    assert sim["zaps_by_level"] == real["zaps_by_level"]
    assert sim["page_tables"]["allocated"] == real["page_tables"]["allocated"]
    assert sim["page_tables"]["freed"] == real["page_tables"]["freed"]
    assert _structure(sim) == _structure(real)
    passes = [s["zap_level"] for s in sim["spans"] if s["function"] == "__tdp_mmu_zap_root"]
    assert passes == ([3, 4] * 2 if kernel == "6.1" else [1, 2, 3, 4] * 2)


@pytest.mark.parametrize("scenario", [thp_scenario, hog_scenario], ids=["2m", "4k-hog"])
def test_515_era_model_zaps_like_510(lab_run, tmp_path, scenario):
    """5.10's zap_gfn_range zaps like 5.15's: the madvise zap removes the emptied tables' parents, and one
    call tears the whole tree down at memslot deletion."""
    run = lab_run(scenario("5.10"))
    real = summarize(tdptrace.open(run.capture))
    sim = _sim(tmp_path, run, "5.10")
    assert sim["zaps_by_level"] == real["zaps_by_level"]
