"""Who owns a VM, and what -p keeps: the VMM's own calls (VM creation, memslot ioctls) decide the owner, so
zaps of that VM run by a kworker or by reclaim are still the VM's, and -p keeps exactly the selected VMs' spans.

The plan is checked on a fake host tree; the in-kernel rule by replaying calls into record_selftest.bpf.c
(the very span_begin/vmm_call functions the kprobes call), as tests/live/test_live_aggregation.py does.
"""
from __future__ import annotations

import ctypes
import os
import shutil

import numpy as np
import pytest
from hostfake import KALLSYMS_61, env, make_host

from tdptrace.live import host
from tdptrace.live.records import SELFTEST_MAGIC, SELFTEST_OPS

VMM_SYMS = """\
ffffffffc0a07000 T kvm_arch_flush_shadow_memslot\t[kvm]
ffffffffc0a08000 T kvm_arch_init_vm\t[kvm]
ffffffffc0a09000 T kvm_arch_prepare_memory_region\t[kvm]
"""


def test_plan_probes_the_vmm_calls_with_their_kvm_argument(tmp_path):
    """Exact symbols of the VMM calls are planned (kvm in register 0, marked as a VMM call); an inlined one
    (kvm_mmu_zap_all_fast here) is simply absent."""
    from tdptrace.live.attach import plan_probes

    fake = make_host(tmp_path / "host", kallsyms=KALLSYMS_61 + VMM_SYMS)
    plan = plan_probes(host.check_host(env(fake)))
    assert [f.symbol for f in plan.vmm_calls] == ["kvm_arch_flush_shadow_memslot", "kvm_arch_init_vm",
                                                  "kvm_arch_prepare_memory_region"]
    for f in plan.vmm_calls:
        rec = f.args_record()
        assert int(rec["kvm"][0]) == 0 and int(rec["vmm_call"][0]) == 1
    meta = plan.to_meta()
    assert meta["vmm_calls"] == [f.symbol for f in plan.vmm_calls]
    assert "kprobe:kvm_arch_init_vm" in meta["attached"]
    # the span functions are not VMM calls
    assert all(int(f.args_record()["vmm_call"][0]) == 0 for f in plan.span_functions)


def test_a_compiler_copy_of_a_vmm_call_is_not_probed_and_the_note_says_who_owns_vms(tmp_path):
    from tdptrace.live.attach import plan_probes

    copy = "ffffffffc0a07000 t kvm_arch_flush_shadow_memslot.isra.0\t[kvm]\n"
    fake = make_host(tmp_path / "host", kallsyms=KALLSYMS_61 + copy)
    plan = plan_probes(host.check_host(env(fake)))
    assert plan.vmm_calls == []
    assert any("first task seen zapping it" in n for n in plan.notes)


def test_no_kprobes_no_vmm_calls(tmp_path):
    from tdptrace.live.attach import plan_probes

    fake = make_host(tmp_path / "host", kallsyms=KALLSYMS_61 + VMM_SYMS, kprobes=False)
    shutil.rmtree(fake / "sys/kernel/btf", ignore_errors=True)
    plan = plan_probes(host.check_host(env(fake)))
    assert not plan.spans and plan.vmm_calls == []


# ---- in the kernel ------------------------------------------------------------------------------------------
SYS_GETPID = 39
VMM, OTHER_VMM, KWORKER = 4000, 5000, 77  # tgids; a kworker's tgid is its tid
KVM_A, KVM_B = 0xFFFF888100000000, 0xFFFF888200000000
LEVEL1_LEAF_ZAP = (0x600000000000C77, 0)  # a present 4 KiB leaf SPTE (6.1 encoding) -> not present


def _calls(b, ops: list[tuple[str, int, int, int, int]]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    call = libc.syscall
    call.argtypes = [ctypes.c_long] + [ctypes.c_uint64] * 6
    for op, a1, a2, a3, a4 in ops:
        call(SYS_GETPID, SELFTEST_OPS[op], a1, a2, a3, a4, SELFTEST_MAGIC)


def _zap_span(tgid: int, tid: int, kvm: int, ts: int, zaps: int) -> list[tuple[str, int, int, int, int]]:
    """A tdp_mmu_zap_leafs span of task tgid/tid on VM kvm that zaps `zaps` 4 KiB leaf SPTEs."""
    who = (tgid << 32) | tid
    old, new = LEVEL1_LEAF_ZAP
    return ([("span_entry_vm", who, ts, 0, kvm)]
            + [("spte", 0x1000 + i, old, new, 1 | (tid << 16)) for i in range(zaps)]
            + [("span_return", who, ts + 1000, 0, 0)])


def _run(pids: list[int], ops) -> tuple[list[tuple[int, int, int]], dict[int, tuple[int, str]], int]:
    """Replay `ops` into the selftest program recording with -p `pids`: (spans as (pid, kvm, L1 leaf zaps),
    vm_owner, total L1 leaf zaps counted)."""
    try:
        from bcc import BPF  # noqa: F401
    except ImportError:
        pytest.skip("bcc (python3-bpfcc) is not installed")
    from tdptrace.live.attach import ProbePlan, SpanFunction
    from tdptrace.live.bcc_recorder import compile_program, program_defines, vm_owners
    from tdptrace.live.recording import RecordOptions
    from tdptrace.live.records import SPAN
    from tdptrace.live.transport import PAGE_SIZE, RingReader

    plan = ProbePlan(release="6.1.0-56-amd64", tracefs=None, tracepoints=["kvm_tdp_mmu_spte_changed"],
                     kprobes=True, fentry=False,
                     span_functions=[SpanFunction("tdp_mmu_zap_leafs", "tdp_mmu_zap_leafs",
                                                  ("kvm", "root", "start", "end", "can_yield", "flush"))],
                     vmm_calls=[SpanFunction("kvm_arch_flush_shadow_memslot", "kvm_arch_flush_shadow_memslot",
                                             ("kvm", "slot"))])
    opts = RecordOptions(output=None, event_pages=64, span_pages=16, pids=pids)  # type: ignore[arg-type]
    b = compile_program(program_defines(plan, opts, selftest_tgid=os.getpid()))
    try:
        args = b[b"func_args"]
        args[ctypes.c_int(0)] = args.Leaf.from_buffer_copy(plan.span_functions[0].args_record().tobytes())
        vargs = b[b"vmm_args"]
        vargs[ctypes.c_int(0)] = vargs.Leaf.from_buffer_copy(plan.vmm_calls[0].args_record().tobytes())
        for p in pids:
            b[b"pids"][ctypes.c_uint(p)] = ctypes.c_ubyte(1)
        spans_rb = RingReader(b[b"spans"].map_fd, 16 * PAGE_SIZE, SPAN)
        _calls(b, ops)
        raw = spans_rb.drain()
        owners = vm_owners(b[b"vm_owner"])
        leaf_l1 = sum(int(v) for v in b[b"zap_totals"][ctypes.c_int(0)])
    finally:
        b.cleanup()
    raw = np.sort(raw, order="start_ts")
    return [(int(s["pid"]), int(s["kvm"]), int(s["zaps"][0])) for s in raw], owners, leaf_l1


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("loading BPF needs root")


# A kworker zaps VM A before its VMM is seen, then the VMM deletes a memslot (a VMM call), then the kworker
# zaps again; kswapd-like reclaim (tgid 99) zaps VM B, owned by the other VMM, which VM B's VMM zapped first.
SCENARIO = (_zap_span(KWORKER, KWORKER, KVM_A, 1_000, 3)
            + [("vmm_call", (VMM << 32) | (VMM + 1), 0, KVM_A, 0)]
            + _zap_span(KWORKER, KWORKER, KVM_A, 10_000, 5)
            + _zap_span(OTHER_VMM, OTHER_VMM, KVM_B, 20_000, 7)
            + _zap_span(99, 99, KVM_B, 30_000, 11)
            + _zap_span(VMM, VMM + 2, KVM_A, 40_000, 13))


@pytest.mark.live
def test_a_vmm_call_decides_the_owner_over_the_first_zapper():
    _needs_root()
    spans, owners, leaf = _run([], SCENARIO)
    assert owners == {KVM_A: (VMM, "VMM call"), KVM_B: (OTHER_VMM, "first zap seen")}
    assert spans == [(KWORKER, KVM_A, 3), (KWORKER, KVM_A, 5), (OTHER_VMM, KVM_B, 7), (99, KVM_B, 11),
                     (VMM, KVM_A, 13)]
    assert leaf == 3 + 5 + 7 + 11 + 13


@pytest.mark.live
def test_p_keeps_exactly_the_selected_vms_zaps_whoever_ran_them():
    """-p VMM: the kworker's zaps of VM A after the VMM call are kept (those before it were taken for the
    kworker's: no VMM call had named the owner yet), VM B's are not, even when a selected task zaps it."""
    _needs_root()
    ops = SCENARIO + _zap_span(VMM, VMM + 3, KVM_B, 50_000, 17)  # the VMM's direct reclaim of VM B
    spans, owners, leaf = _run([VMM], ops)
    assert spans == [(KWORKER, KVM_A, 5), (VMM, KVM_A, 13)]
    assert leaf == 5 + 13
    assert owners[KVM_A] == (VMM, "VMM call")


@pytest.mark.live
def test_p_on_the_other_vmm_keeps_only_its_vm():
    _needs_root()
    spans, _, leaf = _run([OTHER_VMM], SCENARIO)
    assert spans == [(OTHER_VMM, KVM_B, 7), (99, KVM_B, 11)]
    assert leaf == 7 + 11

