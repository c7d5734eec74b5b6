"""`tdptrace record` (the wheel installed in the lab's rootfs) inside real TDP MMU guests agrees with the lab's
own tracefs capture of the same run: the ftrace backend on every lab kernel, BCC on 6.12 (kprobes) and 7.3
(kprobes on kvm.ko's zap functions, fentry on the vmlinux yield points; compiled against bookworm's generic
header tree, 7.3 having no headers in the rootfs's suite). 6.1 agrees too, checked by hand with
`lab run -k 6.1 --record bcc`; left out to keep CI's lab time down.

Each run is small (16 MiB): what is checked is that every figure both captures give is the same - zaps by
level, page tables, lost events, and per zap function the spans, their zaps by level, yields, retained tables
and longest gaps (within the probe skew the run measures) - not the workload's size.
"""
from __future__ import annotations

import pytest

import tdptrace

from tdptrace.lab.scenario import Scenario

from .conftest import KERNELS

pytestmark = pytest.mark.lab

RECORD_MIB = 16
BCC_KERNELS = ("6.12", "7.3")


def _check(r) -> None:
    rec = r.record
    assert rec is not None
    bad = [f for f in rec["figures"] if not f["same"]]
    assert rec["agree"] and not bad, bad
    figures = {f["figure"]: f for f in rec["figures"]}
    zaps = figures["zaps by level"]["recorder"]
    assert zaps["1"]["leaf"] > 0  # the workload zapped and the recorder saw it
    both = figures["zap functions traced by both"]
    assert set(both["tracefs"]) & set(both["recorder"])  # spans were compared, not skipped
    assert any(k.endswith(": longest gap per span (ns)") for k in figures)
    assert rec["recorder_summary"]["lost_events"] == 0
    assert rec["start_s"] is not None and rec["start_s"] > 0


@pytest.mark.parametrize("kernel", KERNELS)
def test_ftrace_recorder_agrees_with_tracefs(lab_run, kernel):
    _check(lab_run(Scenario(kernel=kernel, mib=RECORD_MIB, record="ftrace")))


@pytest.mark.parametrize("kernel", BCC_KERNELS)
def test_bcc_recorder_agrees_with_tracefs(lab_run, kernel):
    r = lab_run(Scenario(kernel=kernel, mib=RECORD_MIB, record="bcc"))
    _check(r)
    assert r.record["recorder_summary"]["capabilities"]["spans"]
    methods = {k: v["method"] for k, v in tdptrace.open(r.record["capture"]).meta.probes["arguments"].items()}
    assert methods["__tdp_mmu_zap_root"] == "kprobe"  # BCC 0.26 finds fentry targets in vmlinux BTF only
    if kernel == "7.3":  # where the kernel allows fentry, the yield points (in vmlinux) take it
        assert methods["__cond_resched_rwlock_read"] == "fentry", methods
