"""What to attach on the running kernel: tracepoints present, zap functions and yield points resolved from
/proc/kallsyms (compiler copies included), and the argument registers of each from kernel_functions.SIGNATURES.

Built on tdptrace.live.host.check_host (the `doctor` checks): one description of the host for both commands.
Everything that cannot be attached is listed with its reason; the capture's meta and the screen show it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tdptrace.kernel.functions import PREFERRED_SPAN_FUNCTIONS, VMM_CALLS
from tdptrace.kernel.signatures import signature
from tdptrace.kernel.symbols import base_symbol, is_compiler_copy
from tdptrace.kernel.tracefs import KVMMMU_EVENTS
from tdptrace.live.host import HostReport
from tdptrace.live.records import ARG_REGS, FUNC_ARGS, MAX_SPAN_FUNCS, MAX_VMM_CALLS

KVMMMU_TRACEPOINTS: tuple[str, ...] = KVMMMU_EVENTS
# -D switch in probes/record.bpf.c per tracepoint.
TRACEPOINT_DEFINES: dict[str, str] = {
    "kvm_tdp_mmu_spte_changed": "TDP_TP_SPTE_CHANGED", "kvm_mmu_get_page": "TDP_TP_GET_PAGE",
    "kvm_mmu_prepare_zap_page": "TDP_TP_PREPARE_ZAP", "kvm_mmu_zap_all_fast": "TDP_TP_ZAP_ALL_FAST",
    "kvm_mmu_split_huge_page": "TDP_TP_SPLIT",
}
YIELD_PROGRAMS: dict[str, str] = {
    "__cond_resched_rwlock_read": "yield_entry_read", "__cond_resched_rwlock_write": "yield_entry_write",
    "__cond_resched_lock": "yield_entry_spin",
}
ARG_FIELDS = ("kvm", "root", "start", "end", "can_yield", "flush", "shared", "zap_level")


@dataclass
class SpanFunction:
    """One zap function to probe as a span: the C name, the symbol attached, its parameters on this kernel."""

    name: str
    symbol: str
    params: tuple[str, ...] | None  # None: unknown (a compiler copy, or an era not in SIGNATURES)

    def args_record(self) -> np.ndarray:
        """The tdp_func_args value for this function (register index per argument, -1 where unknown)."""
        rec = np.zeros(1, dtype=FUNC_ARGS)
        for f in ARG_FIELDS:
            rec[f] = self.params.index(f) if self.params and f in self.params[:ARG_REGS] else -1
        rec["vmm_call"] = 1 if self.name in VMM_CALLS else 0
        return rec


@dataclass
class ProbePlan:
    """Everything `record` attaches, and what it could not, on this host."""

    release: str
    tracefs: Path | None
    tracepoints: list[str]
    kprobes: bool
    fentry: bool
    span_functions: list[SpanFunction] = field(default_factory=list)
    yield_functions: list[str] = field(default_factory=list)
    vmm_calls: list[SpanFunction] = field(default_factory=list)  # entry kprobes that decide a VM's owner
    missing: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def spans(self) -> bool:
        return self.kprobes and bool(self.span_functions)

    def capabilities(self, sptes_streamed: bool) -> dict[str, bool]:
        """What figures a capture recorded with this plan can give (same keys as imported captures)."""
        spte_tp = "kvm_tdp_mmu_spte_changed" in self.tracepoints
        return {
            "sptes": sptes_streamed and spte_tp,
            "spans": self.spans,
            "yield_points": self.spans and bool(self.yield_functions),
            "yield_returns": self.spans and bool(self.yield_functions),
            "page_table_events": "kvm_mmu_get_page" in self.tracepoints,
            "retained_tables": spte_tp,
            "zaps_by_level": spte_tp,
        }

    def unavailable(self) -> list[str]:
        """Plain sentences: which figures this capture cannot give, and why."""
        out = []
        if not self.spans:
            why = "the kernel has no kprobes" if not self.kprobes else "no zap function could be resolved"
            out.append(f"zap spans, yield points and lock-hold gaps are unavailable ({why}; fentry is "
                       f"{'refused' if not self.fentry else 'not used'}): only tracepoints were recorded")
        if "kvm_tdp_mmu_spte_changed" not in self.tracepoints:
            out.append("zaps by level and retained page tables are unavailable: no kvm_tdp_mmu_spte_changed "
                       "tracepoint on this kernel")
        return out

    def to_meta(self) -> dict[str, Any]:
        attached = [f"tracepoint:kvmmmu:{t}" for t in self.tracepoints]
        if self.kprobes:
            attached += [f"kprobe:{f.symbol}" for f in self.span_functions]
            attached += [f"kretprobe:{f.symbol}" for f in self.span_functions]
            attached += [f"kprobe:{y}" for y in self.yield_functions] + [f"kretprobe:{y}" for y in self.yield_functions]
            attached += [f"kprobe:{f.symbol}" for f in self.vmm_calls]
        return {"attached": attached, "missing": self.missing,
                "method": "kprobes+tracepoints" if self.spans else "tracepoints only",
                "span_functions": {f.symbol: list(f.params) if f.params else None for f in self.span_functions},
                "vmm_calls": [f.symbol for f in self.vmm_calls]}


def plan_probes(report: HostReport) -> ProbePlan:
    """Decide the attach points from the host report (tracepoints, kprobes, symbols)."""
    tracefs = Path(report.tracefs) if report.tracefs else None
    tps, missing = [], []
    for tp in KVMMMU_TRACEPOINTS:
        if tracefs is not None and (tracefs / "events" / "kvmmmu" / tp).is_dir():
            tps.append(tp)
        else:
            missing.append({"probe": f"tracepoint:kvmmmu:{tp}", "reason": "not in this kernel (or kvm not loaded)"})
    kprobes = bool(report.methods.get("kprobes"))
    plan = ProbePlan(release=report.kernel_release, tracefs=tracefs, tracepoints=tps, kprobes=kprobes,
                     fentry=bool(report.methods.get("fentry")), missing=missing)
    for name in PREFERRED_SPAN_FUNCTIONS:
        syms = report.symbols.get(name, [])
        if not syms:
            continue
        for sym in syms:
            params = None if is_compiler_copy(sym) else signature(base_symbol(sym), report.kernel_release)
            if not kprobes:
                missing.append({"probe": f"kprobe:{sym}", "reason": "no kprobes on this kernel"})
                continue
            if len(plan.span_functions) >= MAX_SPAN_FUNCS:
                missing.append({"probe": f"kprobe:{sym}", "reason": f"more than {MAX_SPAN_FUNCS} span functions"})
                continue
            plan.span_functions.append(SpanFunction(name, sym, params))
            if params is None:
                plan.notes.append(f"{sym}: arguments unknown on {report.kernel_release} (compiler copy or "
                                  "era not in kernel_functions.SIGNATURES); spans recorded without them")
    for name in YIELD_PROGRAMS:
        if report.symbols.get(name):
            if kprobes:
                plan.yield_functions.append(name)
            else:
                missing.append({"probe": f"kprobe:{name}", "reason": "no kprobes on this kernel"})
    if plan.spans:
        _plan_vmm_calls(plan, report)
    return plan


def _plan_vmm_calls(plan: ProbePlan, report: HostReport) -> None:
    """The VMM calls to probe (their callers own the VMs); exact symbols only, kvm argument known."""
    for name in VMM_CALLS:
        syms = [s for s in report.symbols.get(name, []) if not is_compiler_copy(s)]
        if not syms:
            continue  # inlined in this build (or a compiler copy whose arguments are unknown)
        params = signature(name, report.kernel_release)
        if not params or "kvm" not in params[:ARG_REGS]:
            plan.missing.append({"probe": f"kprobe:{syms[0]}", "reason": "its kvm argument is unknown on "
                                 f"{report.kernel_release}"})
            continue
        if len(plan.vmm_calls) >= MAX_VMM_CALLS:
            break
        plan.vmm_calls.append(SpanFunction(name, syms[0], params))
    if not plan.vmm_calls:
        plan.notes.append("no VMM call (memslot ioctl, VM creation) can be probed on this kernel: a VM's owner "
                          "is the first task seen zapping it")
