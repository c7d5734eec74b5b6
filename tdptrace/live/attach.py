"""What to attach on the running kernel: tracepoints present, zap functions and yield points resolved from
/proc/kallsyms (compiler copies included), and the argument registers of each from kernel.resolve (the
running kernel's BTF, else the era table; none from compiler copies). fentry/fexit where the kernel runs
them and BTF describes the function, kprobes otherwise.

Built on tdptrace.live.host.check_host (the `doctor` checks): one description of the host for both commands.
Everything that cannot be attached is listed with its reason; the capture's meta and the screen show it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tdptrace.kernel.functions import PREFERRED_SPAN_FUNCTIONS, VMM_CALLS, YIELD_FUNCTIONS
from tdptrace.kernel.resolve import Resolution, Resolved, Source, resolve
from tdptrace.kernel.signatures import ARG_REGISTERS
from tdptrace.kernel.symbols import is_compiler_copy
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
SPTE_FALLBACK_FUNCTION = "__handle_changed_spte"
SPTE_FALLBACK_ARGS = ("as_id", "gfn", "old_spte", "new_spte", "level")  # what the importer decodes
ARG_FIELDS = ("kvm", "root", "start", "end", "can_yield", "flush", "shared", "zap_level")


@dataclass
class SpanFunction:
    """One function to probe: the C name, the symbol attached, its parameters on this kernel, where they came
    from (kernel.resolve), and how it is attached (kprobe, or fentry where the kernel and BTF allow)."""

    name: str
    symbol: str
    params: tuple[str, ...] | None  # None: unknown (a compiler copy, a function BTF leaves out, no table entry)
    resolved: Resolved | None = None
    method: str = "kprobe"

    def register(self, param: str) -> str | None:
        """The x86-64 register holding `param` at entry (the resolver's answer; by position without one)."""
        if self.resolved is not None:
            return self.resolved.register(param)
        if not self.params or param not in self.params[:ARG_REGS]:
            return None
        return ARG_REGISTERS[self.params.index(param)]

    @property
    def source(self) -> str:
        return self.resolved.source.value if self.resolved is not None else (
            Source.TABLE.value if self.params else Source.NONE.value)

    def args_record(self) -> np.ndarray:
        """The tdp_func_args value for this function (register index per argument, -1 where unknown; for
        fentry the same index is the argument's slot)."""
        rec = np.zeros(1, dtype=FUNC_ARGS)
        for f in ARG_FIELDS:
            reg = self.register(f)
            rec[f] = ARG_REGISTERS.index(reg) if reg is not None else -1
        rec["vmm_call"] = 1 if self.name in VMM_CALLS else 0
        return rec

    def to_meta(self) -> dict[str, Any]:
        """Where this function's arguments came from, for the capture's meta."""
        base = self.resolved.to_meta() if self.resolved is not None else {
            "symbol": self.symbol, "source": self.source, "reason": "",
            "params": list(self.params) if self.params else None}
        return base | {"symbol": self.symbol, "method": self.method}


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
    arguments: Resolution | None = None  # every function resolved on this kernel (doctor's view)
    yield_methods: dict[str, str] = field(default_factory=dict)  # yield function -> kprobe / fentry
    spans_off: bool = False  # --no-spans: the user asked for tracepoints only
    # Before 5.11 (no kvm_tdp_mmu_spte_changed): a kprobe on __handle_changed_spte gives the SPTE changes
    # (kprobe_events of the ftrace backend only).
    spte_fallback: SpanFunction | None = None

    def without_spans(self) -> "ProbePlan":
        """This plan with tracepoints only (--no-spans): no span, yield or VMM-call kprobes."""
        from dataclasses import replace

        return replace(self, span_functions=[], yield_functions=[], vmm_calls=[], spans_off=True,
                       missing=list(self.missing), notes=list(self.notes))

    @property
    def spans(self) -> bool:
        return bool(self.span_functions)

    def kprobes_only(self) -> None:
        """Attach everything with kprobes (a backend without fentry programs, such as ftrace's kprobe_events,
        or fentry refused at load); without kprobes what only fentry could attach is listed as missing."""
        if not self.kprobes:
            for f in self.span_functions + self.vmm_calls:
                self.missing.append({"probe": f"kprobe:{f.symbol}", "reason": "no kprobes on this kernel"})
            self.missing += [{"probe": f"kprobe:{y}", "reason": "no kprobes on this kernel"}
                             for y in self.yield_functions]
            self.span_functions, self.vmm_calls, self.yield_functions = [], [], []
        for f in self.span_functions:
            f.method = "kprobe"
        self.yield_methods = {y: "kprobe" for y in self.yield_functions}

    def capabilities(self, sptes_streamed: bool) -> dict[str, bool]:
        """What figures a capture recorded with this plan can give (same keys as imported captures)."""
        spte_tp = "kvm_tdp_mmu_spte_changed" in self.tracepoints or self.spte_fallback is not None
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
            why = ("--no-spans" if self.spans_off else "the kernel has no kprobes" if not self.kprobes
                   else "no zap function could be resolved")
            why += "" if self.spans_off or self.kprobes or not self.fentry else \
                " and BCC's fentry reaches vmlinux functions only"
            out.append(f"zap spans, yield points and lock-hold gaps are unavailable ({why}; fentry is "
                       f"{'refused' if not self.fentry else 'not used'}): only tracepoints were recorded")
        if "kvm_tdp_mmu_spte_changed" not in self.tracepoints:
            out.append("zaps by level and retained page tables are unavailable: no kvm_tdp_mmu_spte_changed "
                       "tracepoint on this kernel")
        return out

    def to_meta(self) -> dict[str, Any]:
        attached = [f"tracepoint:kvmmmu:{t}" for t in self.tracepoints]
        if self.spans:
            for f in self.span_functions:
                entry, ret = ("fentry", "fexit") if f.method == "fentry" else ("kprobe", "kretprobe")
                attached += [f"{entry}:{f.symbol}", f"{ret}:{f.symbol}"]
            for y in self.yield_functions:
                entry, ret = ("fentry", "fexit") if self.yield_methods.get(y) == "fentry" else ("kprobe", "kretprobe")
                attached += [f"{entry}:{y}", f"{ret}:{y}"]
            attached += [f"kprobe:{f.symbol}" for f in self.vmm_calls]
        # Every function the kernel has, attached or not (method None), with where its arguments came from.
        arguments: dict[str, Any] = {}
        if self.arguments is not None:
            arguments = {r.name: r.to_meta() | {"method": None} for r in self.arguments.present()}
        arguments |= {f.name: f.to_meta() for f in self.span_functions + self.vmm_calls}
        if self.arguments is not None:
            for y in self.yield_functions:
                arguments[y] = self.arguments[y].to_meta() | {"method": self.yield_methods.get(y, "kprobe")}
        fentry = any(f.method == "fentry" for f in self.span_functions) or "fentry" in self.yield_methods.values()
        return {"attached": attached, "missing": self.missing,
                "method": ("fentry+kprobes+tracepoints" if fentry else "kprobes+tracepoints") if self.spans
                else "tracepoints only",
                "span_functions": {f.symbol: list(f.params) if f.params else None for f in self.span_functions},
                "vmm_calls": [f.symbol for f in self.vmm_calls],
                "btf": self.arguments.btf_origin if self.arguments is not None else None,
                "arguments": arguments}


def plan_probes(report: HostReport) -> ProbePlan:
    """Decide the attach points from the host report (tracepoints, kprobes, symbols, resolved arguments)."""
    tracefs = Path(report.tracefs) if report.tracefs else None
    tps, missing = [], []
    for tp in KVMMMU_TRACEPOINTS:
        if tracefs is not None and (tracefs / "events" / "kvmmmu" / tp).is_dir():
            tps.append(tp)
        else:
            missing.append({"probe": f"tracepoint:kvmmmu:{tp}", "reason": "not in this kernel (or kvm not loaded)"})
    kprobes = bool(report.methods.get("kprobes"))
    arguments = report.arguments
    if arguments is None:  # a report built without the resolver's view: resolve from its symbols, no BTF
        names = list(dict.fromkeys([*PREFERRED_SPAN_FUNCTIONS, *YIELD_PROGRAMS, *VMM_CALLS, *report.symbols]))
        arguments = resolve(names, report.kernel_release, {s for v in report.symbols.values() for s in v}, None)
    plan = ProbePlan(release=report.kernel_release, tracefs=tracefs, tracepoints=tps, kprobes=kprobes,
                     fentry=bool(report.methods.get("fentry")), missing=missing, arguments=arguments)
    for name in PREFERRED_SPAN_FUNCTIONS:
        syms = report.symbols.get(name, [])
        if not syms:
            continue
        resolved = arguments.functions.get(name)
        for sym in syms:
            r = _for_symbol(resolved, name, sym)
            f = SpanFunction(name, sym, r.param_names if r is not None else None, r)
            f.method = "fentry" if plan.fentry and fentry_allowed(f) else "kprobe"
            if f.method == "kprobe" and not kprobes:
                missing.append({"probe": f"kprobe:{sym}", "reason": "no kprobes on this kernel"})
                continue
            if len(plan.span_functions) >= MAX_SPAN_FUNCS:
                missing.append({"probe": f"kprobe:{sym}", "reason": f"more than {MAX_SPAN_FUNCS} span functions"})
                continue
            plan.span_functions.append(f)
            if f.params is None:
                plan.notes.append(f"{sym}: spans recorded without arguments ({r.reason if r else 'unresolved'})")
    for name in YIELD_PROGRAMS:
        if report.symbols.get(name):
            r = arguments.functions.get(name)
            method = "fentry" if plan.fentry and r is not None and _vmlinux_btf(r) else "kprobe"
            if method == "kprobe" and not kprobes:
                missing.append({"probe": f"kprobe:{name}", "reason": "no kprobes on this kernel"})
                continue
            plan.yield_functions.append(name)
            plan.yield_methods[name] = method
    if plan.spans and kprobes:
        _plan_vmm_calls(plan, report)
    if "kvm_tdp_mmu_spte_changed" not in tps and kprobes:
        _plan_spte_fallback(plan, report, arguments)
    return plan


def _plan_spte_fallback(plan: ProbePlan, report: HostReport, arguments: Resolution) -> None:
    """__handle_changed_spte (the exact symbol, its SPTE-change arguments known) where the tracepoint is not."""
    syms = [s for s in report.symbols.get(SPTE_FALLBACK_FUNCTION, []) if not is_compiler_copy(s)]
    r = arguments.functions.get(SPTE_FALLBACK_FUNCTION)
    names = r.param_names if r is not None else None
    if syms and names and all(n in names[:ARG_REGS] for n in SPTE_FALLBACK_ARGS):
        plan.spte_fallback = SpanFunction(SPTE_FALLBACK_FUNCTION, syms[0], names, r)


def _for_symbol(resolved: Resolved | None, name: str, sym: str) -> Resolved | None:
    """The resolution for one symbol of `name`: the resolver's for the symbol it chose; a copy gets none."""
    if resolved is not None and resolved.symbol == sym:
        return resolved
    if is_compiler_copy(sym):
        return Resolved(name, sym, Source.NONE, None, f"{sym} is a compiler copy; its ABI is not the C prototype "
                        "and BTF does not describe it: no arguments recorded")
    return resolved


def _vmlinux_btf(r: Resolved) -> bool:
    """BTF from vmlinux describes `r`: what BCC's fentry support (vmlinux BTF only) can attach to."""
    return r.source == Source.BTF and r.btf_object == "vmlinux"


def fentry_allowed(f: SpanFunction) -> bool:
    """fentry/fexit for this function: described by vmlinux BTF (BCC finds fentry targets there only; kvm.ko's
    own functions take kprobes), the exact symbol (never a compiler copy), every recorded argument in a slot."""
    r = f.resolved
    if r is None or is_compiler_copy(f.symbol) or not _vmlinux_btf(r):
        return False
    return all(r.index(a) is None or r.fentry_slot(a) is not None for a in ARG_FIELDS)


def _plan_vmm_calls(plan: ProbePlan, report: HostReport) -> None:
    """The VMM calls to probe (their callers own the VMs); exact symbols only, kvm argument known."""
    assert plan.arguments is not None
    for name in VMM_CALLS:
        syms = [s for s in report.symbols.get(name, []) if not is_compiler_copy(s)]
        if not syms:
            continue  # inlined in this build (or a compiler copy whose arguments are unknown)
        r = _for_symbol(plan.arguments.functions.get(name), name, syms[0])
        if r is None or r.register("kvm") is None:
            plan.missing.append({"probe": f"kprobe:{syms[0]}", "reason": "its kvm argument is unknown on "
                                 f"{report.kernel_release}" + (f" ({r.reason})" if r else "")})
            continue
        if len(plan.vmm_calls) >= MAX_VMM_CALLS:
            break
        plan.vmm_calls.append(SpanFunction(name, syms[0], r.param_names, r))
    if not plan.vmm_calls:
        plan.notes.append("no VMM call (memslot ioctl, VM creation) can be probed on this kernel: a VM's owner "
                          "is the first task seen zapping it")
