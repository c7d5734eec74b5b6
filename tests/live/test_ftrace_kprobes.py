"""The ftrace backend's kprobe_events: how definitions are written, and the 5.10 SPTE-change kprobe."""
from __future__ import annotations

import os

from hostfake import KALLSYMS_510, env, make_host, remove

from tdptrace.live import host


def test_kprobe_definitions_are_appended_without_seeking(tmp_path, monkeypatch):
    """tracefs' kprobe_events refuses SEEK_END (EINVAL), which open(path, "a") does first: on the lab's 6.1
    guest every kprobe of the ftrace backend failed so. The backend appends without seeking."""
    import errno as errno_mod

    from tdptrace.live.ftrace_backend import FtraceRecorder

    def no_seek(*a):
        raise OSError(errno_mod.EINVAL, "Invalid argument")

    ke = tmp_path / "kprobe_events"
    ke.write_text("p:tdp/a f\n")
    monkeypatch.setattr(os, "lseek", no_seek)
    FtraceRecorder._append(ke, "p:tdptrace_1/span0 tdp_mmu_zap_leafs kvm=%di")
    assert ke.read_text() == "p:tdp/a f\np:tdptrace_1/span0 tdp_mmu_zap_leafs kvm=%di\n"


def test_before_5_11_spte_changes_come_from_a_kprobe_on_handle_changed_spte(tmp_path):
    """5.10 has no kvm_tdp_mmu_spte_changed: the plan takes __handle_changed_spte (as the lab does, same
    argument registers), so zaps by level and retained tables are recorded by the ftrace backend too."""
    from tdptrace.live.attach import plan_probes
    from tdptrace.live.ftrace_backend import kprobe_definitions

    fake = make_host(tmp_path / "h", release="5.10.0-32-amd64", kallsyms=KALLSYMS_510)
    remove(fake / "sys/kernel/tracing/events/kvmmmu/kvm_tdp_mmu_spte_changed")
    report = host.check_host(env(fake))
    report.tracefs = str(fake / "sys/kernel/tracing")  # the plan looks for tracepoints in the fake tree too
    plan = plan_probes(report)
    assert "kvm_tdp_mmu_spte_changed" not in plan.tracepoints
    assert plan.spte_fallback is not None and plan.spte_fallback.symbol == "__handle_changed_spte"
    assert ("p:g/spte __handle_changed_spte as_id=%si:u8 gfn=%dx:x64 old_spte=%cx:x64 new_spte=%r8:x64 "
            "level=%r9:s32") in kprobe_definitions(plan, "g")
    assert plan.capabilities(False)["zaps_by_level"]


def test_with_the_tracepoint_no_spte_kprobe(tmp_path):
    from tdptrace.live.attach import plan_probes

    fake = make_host(tmp_path / "h")
    report = host.check_host(env(fake))
    report.tracefs = str(fake / "sys/kernel/tracing")
    assert plan_probes(report).spte_fallback is None


def test_a_return_probe_refused_for_its_retval_is_added_without_it(tmp_path, monkeypatch):
    """Kernels with BTF refuse $retval of a void function (ENOENT): the return probe goes in without it."""
    import errno as errno_mod

    from tdptrace.live.attach import ProbePlan, SpanFunction
    from tdptrace.live.ftrace_backend import FtraceRecorder
    from tdptrace.live.recording import RecordOptions

    ke = tmp_path / "kprobe_events"
    ke.write_text("")
    plan = ProbePlan(release="7.3.4+deb13-amd64", tracefs=tmp_path, tracepoints=[], kprobes=True, fentry=False,
                     span_functions=[SpanFunction("__tdp_mmu_zap_root", "__tdp_mmu_zap_root",
                                                  ("kvm", "root", "shared", "zap_level"))])
    rec = FtraceRecorder(plan, RecordOptions(output=tmp_path / "x.tdp"))
    real = FtraceRecorder._append

    def kernel(path, line):
        if line.startswith("r:") and "$retval" in line:
            raise OSError(errno_mod.ENOENT, "No such file or directory")
        real(path, line)

    monkeypatch.setattr(FtraceRecorder, "_append", staticmethod(kernel))
    rec._add_kprobes()
    assert rec.failures == []
    assert ke.read_text().splitlines()[-1] == f"r:{rec.group}/span0_ret __tdp_mmu_zap_root"
    assert rec.kprobes == ["span0", "span0_ret"]
