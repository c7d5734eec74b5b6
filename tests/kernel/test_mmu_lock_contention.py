"""When lock contention (a vCPU waiting for mmu_lock) makes a zap yield, by release and preemption build."""
from __future__ import annotations

import pytest

from tdptrace.kernel.mmu_lock import contention_yields


@pytest.mark.parametrize("release, built, dynamic, want", [
    ("5.10.0-32-amd64", "voluntary", False, False),   # Debian 5.10: voluntary, no PREEMPT_DYNAMIC
    ("6.1.0-56-amd64", "voluntary", True, True),      # Debian 6.1: PREEMPT_DYNAMIC selects CONFIG_PREEMPTION
    ("6.12.117+deb12-amd64", "voluntary", True, False),  # 6.11+: the model in force decides; booted voluntary
    ("6.17.13+deb13-amd64", "lazy", True, True),     # Debian 6.16+: CONFIG_PREEMPT_LAZY=y
    ("7.3.4+deb13-amd64", "lazy", True, True),
    ("6.12.1", "full", False, True),
    ("6.12.1", "none", False, False),
    ("6.1.0-56-amd64", None, None, None),
    ("garbage", "lazy", True, None),
])
def test_contention_yields_by_era_and_build(release, built, dynamic, want):
    got, why = contention_yields(release, built, dynamic)
    assert got is want, why
    assert why.startswith({True: "yes", False: "no", None: "unknown"}[want])


def test_lazy_sentence_names_debian_616():
    assert "Debian builds 6.16 and later this way" in contention_yields("6.16.12+deb13-amd64", "lazy", True)[1]
