"""Two VMs in one lab guest, `tdptrace record -p` on one of them: the recording keeps exactly that VM's zaps,
whoever ran them (the VMM itself, or another task clearing its soft-dirty bits through /proc/PID/clear_refs,
which makes KVM zap every SPTE mapped at that moment), and nothing of the other VM.

Every SPTE the workload maps is zapped exactly once, by whichever task gets there first, so the level-1 leaf
zaps of VM A are kvmtouch A's own arithmetic (pages touched in phase 1 and again in phase 3, plus its system
pages) plus the system pages (page tables, code, GDT: 4) the guest faulted in again after each clearing;
VM B's 24 MiB would add thousands more.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import tdptrace
from tdptrace.lab.scenario import Scenario

pytestmark = pytest.mark.lab

HOOK = Path(__file__).resolve().parents[1] / "support" / "lab_two_vms_hook.sh"
SYSTEM_PAGES = 4  # page tables, code, GDT: what the guest faults in again after each clearing


def _kvmtouch(text: str) -> dict[str, int]:
    line = next(ln for ln in text.splitlines() if ln.startswith("KVMTOUCH "))
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


@pytest.fixture(scope="module")
def two_vms(lab_run):
    from tdptrace.lab import kernels, rootfs
    from tdptrace.lab.run import source_tree

    root = rootfs.build(kernels.fetch("6.12"), project=source_tree())
    r = lab_run(Scenario(kernel="6.12", mib=8, hook=HOOK, rootfs=root, hook_ready=True, hook_settle_s=1800))
    return Path(r.out) / "share" / "out" / "twovms"


def test_p_keeps_exactly_one_vms_zaps_whoever_ran_them(two_vms):
    d = two_vms
    assert (d / "record_status").read_text().strip() == "0", (d / "record.log").read_text()[-500:]
    pid_a, pid_b = (int(x) for x in (d / "pids").read_text().split())
    a, b = _kvmtouch((d / "a.txt").read_text()), _kvmtouch((d / "b.txt").read_text())
    cap = tdptrace.open(d / "a.tdp")
    spans = cap.spans
    assert len(spans) and spans["vm"].nunique() == 1  # one VM kept
    vm = spans["vm"].iloc[0]
    assert cap.meta.events["vm_owner"][vm] == pid_a
    assert cap.meta.events["vm_owner_from"][vm] == "VMM call"
    assert pid_b not in set(spans["pid"])  # the other VMM's zaps are not there
    own = spans[spans["pid"] == pid_a]
    others = spans[spans["pid"] != pid_a]
    clearer = int((d / "compactor").read_text().split()[0])
    assert len(others) and set(others["pid"]) == {clearer}  # zaps of A run by the task clearing its bits
    assert int(others["leaf_l1"].sum()) > 0
    rounds = int((d / "rounds").read_text())
    want = a["pages_phase1"] + a["pages_phase3"] + a["overhead_pages"]
    kept = int(spans[spans["depth"] == 0]["leaf_l1"].sum())
    assert want <= kept <= want + SYSTEM_PAGES * rounds, (kept, want, rounds, len(own), len(others))
    assert kept < want + b["pages_phase1"]  # B's zaps would add at least this many
