"""fentry/fexit where the kernel runs them and BCC can reach the target (functions vmlinux's BTF describes),
kprobes otherwise; the generated stubs read exactly the arguments BTF declares, and compile with BCC; a
kernel that refuses them at load gets kprobes, said in the notes. The fentry path itself attaches only on a
kernel that allows it (the lab's guests); here the plan and the program text are checked, and the load
refusal."""
from __future__ import annotations

import os

import pytest
from hostfake import env, make_host

from tdptrace.errors import TdpError
from tdptrace.kernel.resolve import Resolved, Source
from tdptrace.live import host
from tdptrace.live.attach import ProbePlan, SpanFunction, plan_probes
from tdptrace.live.fentry_programs import fentry_stubs


def test_plan_takes_fentry_for_vmlinux_functions_and_kprobes_for_kvm_ko(tmp_path):
    report = host.check_host(env(make_host(tmp_path / "host")))
    assert report.methods["fentry"] and report.methods["kprobes"]
    plan = plan_probes(report)
    # kvm.ko's functions: BCC finds fentry targets in vmlinux BTF only, so kprobes.
    assert {f.method for f in plan.span_functions} == {"kprobe"}
    assert plan.yield_methods == {"__cond_resched_rwlock_read": "fentry", "__cond_resched_rwlock_write": "fentry",
                                  "__cond_resched_lock": "fentry"}
    meta = plan.to_meta()
    assert meta["method"] == "fentry+kprobes+tracepoints"
    assert "fentry:__cond_resched_rwlock_read" in meta["attached"]
    assert "kprobe:tdp_mmu_zap_leafs" in meta["attached"]
    args = meta["arguments"]
    assert args["tdp_mmu_zap_leafs"]["source"] == "BTF" and args["tdp_mmu_zap_leafs"]["method"] == "kprobe"
    assert args["__tdp_mmu_zap_root"]["source"] == "none"  # only a compiler copy in the fake host
    assert args["__cond_resched_rwlock_read"] == {
        "symbol": "__cond_resched_rwlock_read", "source": "BTF", "btf": "vmlinux", "method": "fentry",
        "reason": args["__cond_resched_rwlock_read"]["reason"], "params": [["lock", "rwlock_t *"]]}
    stubs = fentry_stubs(plan)
    assert "KFUNC_PROBE(__cond_resched_rwlock_read) { return yield_begin(ctx, bpf_get_current_pid_tgid(), " \
        "bpf_ktime_get_ns(), ctx[0], TDP_F_YIELD_READ); }" in stubs
    assert "(int)ctx[1]" in stubs and "tdp_mmu_zap_leafs" not in stubs
    # the ftrace backend has no fentry programs: everything back on kprobes
    plan.kprobes_only()
    assert set(plan.yield_methods.values()) == {"kprobe"} and fentry_stubs(plan) == ""


def test_no_fentry_no_stubs(tmp_path):
    fake = make_host(tmp_path / "host")
    report = host.check_host(env(fake))
    report.methods["fentry"] = False
    plan = plan_probes(report)
    assert fentry_stubs(plan) == "" and plan.to_meta()["method"] == "kprobes+tracepoints"


def _vmlinux_fn(name, params, returns="bool"):
    from tdptrace.kernel.btf import Param

    ps = tuple(Param(n, t, 8 if t.endswith("*") else 1, "ptr" if t.endswith("*") else "bool") for n, t in params)
    return Resolved(name, name, Source.BTF, ps, "parameters from /sys/kernel/btf/vmlinux", (name,), "vmlinux", returns)


def test_span_stub_reads_declared_arguments_and_the_return_slot():
    r = _vmlinux_fn("tdp_mmu_zap_leafs", [("kvm", "struct kvm *"), ("root", "struct kvm_mmu_page *"),
                                          ("can_yield", "bool")])
    plan = ProbePlan("6.18", None, [], kprobes=False, fentry=True,
                     span_functions=[SpanFunction("tdp_mmu_zap_leafs", "tdp_mmu_zap_leafs", r.param_names, r, "fentry")])
    text = fentry_stubs(plan)
    assert "r.r[0] = ctx[0]; r.r[1] = ctx[1]; r.r[2] = ctx[2]; return span_begin(" in text
    assert "r.r[3]" not in text  # never past the declared arguments
    assert "span_end(ctx, bpf_get_current_pid_tgid(), bpf_ktime_get_ns(), 0, (s64)ctx[3]); }" in text
    bad = _vmlinux_fn("x; evil()", [("kvm", "struct kvm *")])
    plan.span_functions = [SpanFunction("x", "x; evil()", bad.param_names, bad, "fentry")]
    with pytest.raises(TdpError, match="not a C identifier"):
        fentry_stubs(plan)


@pytest.mark.skipif(os.geteuid() != 0, reason="BCC compiles and loads programs as root only")
def test_stubs_compile_with_bcc_and_a_refusing_kernel_falls_back_to_kprobes(tmp_path):
    pytest.importorskip("bcc", reason="python3-bpfcc not installed")
    from tdptrace.live import bcc_recorder, programs
    from tdptrace.live.recording import RecordOptions

    report = host.check_host()
    report.methods["fentry"] = True
    report.methods["kprobes"] = True  # pretend, so the plan has spans; nothing is attached below
    plan = plan_probes(report)
    stubs = fentry_stubs(plan)
    assert "KFUNC_PROBE(__cond_resched_rwlock_read)" in stubs
    d = bcc_recorder.program_defines(plan, RecordOptions(output=tmp_path / "x.tdp"))
    assert stubs in bcc_recorder.program_text(d, plan)
    try:
        b = programs.load(bcc_recorder.program_for(d), d, stubs=stubs)
    except Exception as exc:  # this host refuses fentry at load; the text itself must have compiled
        assert "Failed to compile" not in str(exc) and "error:" not in str(exc), str(exc)[:300]
    else:
        b.cleanup()
    if host.check_host().methods["fentry"]:
        pytest.skip("this kernel runs fentry programs: the refusal path cannot be shown here")
    rec = bcc_recorder.BccRecorder(plan, RecordOptions(output=tmp_path / "y.tdp"))
    rec.bpf = rec._compile()  # fentry refused at load -> kprobes only, said in the notes
    try:
        assert any("fentry/fexit refused at load" in n for n in plan.notes)
        assert set(plan.yield_methods.values()) == {"kprobe"}
    finally:
        rec.bpf.cleanup()


def test_ftrace_return_probes_ask_for_retval_only_where_btf_says_there_is_one(tmp_path):
    from tdptrace.live.ftrace_backend import kprobe_definitions

    plan = plan_probes(host.check_host(env(make_host(tmp_path / "host"))))
    plan.kprobes_only()
    lines = kprobe_definitions(plan, "g")
    by_symbol = {ln.split()[1]: ln for ln in lines if ln.startswith("r:")}
    assert by_symbol["kvm_tdp_mmu_zap_all"].endswith("kvm_tdp_mmu_zap_all")  # void in its BTF
    assert by_symbol["tdp_mmu_zap_leafs"].endswith(" ret=$retval")  # returns bool (the flush still due)
    assert by_symbol["__cond_resched_rwlock_read"].endswith(" ret=$retval")
