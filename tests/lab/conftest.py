"""Lab fixtures: each scenario of the matrix boots once per test session; tests share its LabRun."""
from __future__ import annotations

import os
from typing import Callable

import pytest

from tdptrace.lab.host import missing_host_packages
from tdptrace.lab.run import LabRun, run
from tdptrace.lab.scenario import Scenario

KERNELS = ("5.10", "6.1", "6.12", "6.17", "7.3")
# Kernels whose root teardown runs four passes (zap_level 1, 2, 3, root) from a real tdp_mmu_zap_root.
FOUR_PASS = ("6.12", "6.17", "7.3")
# Builds on which a task waiting for mmu_lock makes a zap yield (docs/kernel.md, "What each lab kernel is
# expected to show"): 6.1 (PREEMPT_DYNAMIC, before the boot-model check) and the PREEMPT_LAZY builds.
CONTENTION_YIELDS = ("6.1", "6.17", "7.3")
# Phase 3b: 64 MiB zapped while a second task zaps one page about once a millisecond (kvmtouch.c).
CONTEND_MIB = 64
CONTEND_GUEST_MIB = 144
# 4K backing under CPU contention (so that zaps yield) and 2M backing without. 512 MiB is what it takes for
# the root teardown's longest stretch to stand well above TCG's timing noise (docs/lab.md).
HOG_MIB = 512
THP_MIB = 256
# Below 1 GiB, 5.10's single recursive zap and 6.1's first pass (zap_level 3) tear the same one subtree down
# without a chance to yield. Guests over 1 GiB have several 1 GiB entries, and 6.1 can yield between them:
# this contended run's memory straddles the 1 GiB boundary to show that.
STRADDLE_MIB = 256
STRADDLE_BASE_MIB = 1024 - STRADDLE_MIB // 2


def hog_scenario(kernel: str) -> Scenario:
    return Scenario(kernel=kernel, mib=HOG_MIB, thp=False, hog=True)


def straddle_scenario(kernel: str) -> Scenario:
    return Scenario(kernel=kernel, mib=STRADDLE_MIB, thp=False, hog=True, base_mib=STRADDLE_BASE_MIB)


def contend_scenario(kernel: str) -> Scenario:
    return Scenario(kernel=kernel, mib=CONTEND_GUEST_MIB, contend_mib=CONTEND_MIB)


def thp_scenario(kernel: str) -> Scenario:
    return Scenario(kernel=kernel, mib=THP_MIB, thp=True, hog=False)


@pytest.fixture(scope="session")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Scenario], LabRun]:
    """Run a scenario (once per session) with its results under pytest's tmp dir."""
    if os.geteuid() != 0 and missing_host_packages():
        pytest.skip(f"the lab needs root to install {' '.join(missing_host_packages())}")
    done: dict[Scenario, LabRun] = {}

    def get(sc: Scenario) -> LabRun:
        if sc not in done:
            done[sc] = run(sc, tmp_path_factory.mktemp(sc.name))
        return done[sc]

    return get
