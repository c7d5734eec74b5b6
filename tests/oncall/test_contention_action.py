"""The 'zap yields only on need_resched' advice is given only where the build really ignores lock contention:
Debian's 6.1 (PREEMPT_DYNAMIC, booted voluntary) does yield to a waiting vCPU, Debian's 5.10 does not."""
from __future__ import annotations

from tdptrace.oncall.actions import Finding, actions_for

NEED_RESCHED_ONLY = "yields only when need_resched is set"


def _finding(release: str, preempt: str | None, dynamic: bool | None) -> Finding:
    return Finding(function="tdp_mmu_zap_leafs", context="mmu notifier (munmap)", kind="hold",
                   above_threshold=True, lower_bound=False, lock_mode="write", span_yields=0, can_yield=1,
                   path_source="stack", tid=1, pid=1, release=release, preempt=preempt, imported=False,
                   waiters_recorded=False, capture="x.tdp", preempt_dynamic=dynamic)


def _said(f: Finding) -> bool:
    return any(NEED_RESCHED_ONLY in a.text for a in actions_for(f))


def test_need_resched_only_advice_follows_the_build():
    assert _said(_finding("5.10.0-32-amd64", "voluntary", False))
    assert not _said(_finding("6.1.0-56-amd64", "voluntary", True))  # PREEMPT_DYNAMIC: contention counts
    assert _said(_finding("6.12.117+deb12-amd64", "voluntary", True))  # 6.11+: the boot model decides
    assert not _said(_finding("6.17.13+deb13-amd64", "lazy", True))
    assert _said(_finding("6.1.0-56-amd64", None, None))  # unknown build (an imported trace): still said
