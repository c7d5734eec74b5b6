"""What the lab traces on each kernel era, and turning that into kprobe_events lines for one guest kernel.

The symbols are resolved from the guest kernel's own /proc/kallsyms and available_filter_functions (dumped by
a discovery boot, see run.discover), never hard-coded: static functions may be inlined or carry .isra /
.constprop suffixes in a given build. Argument registers come from tdptrace.kernel.resolve, the project's
one resolver: the guest kernel package's own BTF (kvm.ko's .BTF over its vmlinuz) where it has one, the era
table otherwise, and no arguments from compiler copies (x86-64 System V: di, si, dx, cx, r8, r9).

Registers checked against the disassembly (objdump -d) of the Debian kvm.ko builds the lab boots:
- 5.10.0-32-amd64 (5.10.223): zap_gfn_range_hva_wrapper and __kvm_tdp_mmu_zap_gfn_range call
  zap_gfn_range with root=%rsi start=%rdx end=%rcx can_yield=%r8 flush=%r9; the teardown loop of
  handle_disconnected_tdp_mmu_page calls __handle_changed_spte with as_id=%esi gfn=%rdx old_spte=%rcx
  new_spte=%r8 (0) level=%r9d.
- 6.1.0-56-amd64 and 6.12.117+deb12-amd64: __tdp_mmu_zap_root gets root=%rsi shared=%edx zap_level=%ecx
  (6.1: 3 then root level from kvm_tdp_mmu_zap_all / zap_invalidated_roots; 6.12: 1, 2, 3, then root level
  from tdp_mmu_zap_root, which is a real symbol there and inlined on 6.1).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from tdptrace.errors import MissingCapability
from tdptrace.kernel.release import parse_version
from tdptrace.kernel.resolve import KernelBtf, Resolved, Source
from tdptrace.kernel.resolve import resolve as resolve_arguments
from tdptrace.kernel.symbols import listed_functions, text_symbols

# How each argument is fetched (kprobe_events type) where the lab has a fixed choice; others take BTF's.
ARG_TYPES: dict[str, str] = {
    "as_id": "u8", "gfn": "x64", "old_spte": "x64", "new_spte": "x64", "level": "s32",
    "root": "x64", "start": "x64", "end": "x64", "hva_start": "x64", "hva_end": "x64",
    "can_yield": "u8", "flush": "u8", "shared": "u8", "zap_level": "s32", "lock": "x64",
}


@dataclass(frozen=True)
class Probe:
    """One function to probe: its C name, the arguments to record, whether its return is wanted too, and
    whether it returns a value (kernels with BTF probe args, e.g. 6.12, reject $retval on a void function)."""

    function: str
    args: tuple[str, ...] = ()
    ret: bool = True
    required: bool = False
    void: bool = False


@dataclass(frozen=True)
class Era:
    """What the lab attaches to on kernels [since, until): kvm module parameters, tracepoints, kprobes."""

    name: str
    since: tuple[int, int]
    until: tuple[int, int]
    kvm_params: str
    tracepoints: tuple[str, ...]
    probes: tuple[Probe, ...]
    optional_tracepoints: tuple[str, ...] = field(default=())


_PAGE_TABLE_EVENTS = ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page", "kvm_mmu_zap_all_fast")

# One entry per kernel era the lab knows. Keep in sync with docs/kernel.md "Zap functions by era".
ERAS: tuple[Era, ...] = (
    # 5.10: TDP MMU off unless kvm.tdp_mmu=1 at load; no kvm_tdp_mmu_spte_changed tracepoint, so the SPTE
    # changes come from a kprobe on __handle_changed_spte; mmu_lock is a spinlock (__cond_resched_lock).
    Era("5.10", (5, 10), (5, 13), "tdp_mmu=1", _PAGE_TABLE_EVENTS, (
        Probe("__handle_changed_spte", ("as_id", "gfn", "old_spte", "new_spte", "level"), ret=False,
              required=True),
        Probe("zap_gfn_range", ("root", "start", "end", "can_yield", "flush"), required=True),
        Probe("__kvm_tdp_mmu_zap_gfn_range", ("start", "end", "can_yield")),
        Probe("kvm_tdp_mmu_zap_hva_range", ("hva_start", "hva_end")),
        Probe("kvm_tdp_mmu_zap_all", void=True),
        Probe("kvm_tdp_mmu_free_root", ("root",), ret=False),
        Probe("__cond_resched_lock", ("lock",), required=True),
    )),
    # Since the 2021-22 rework (5.18): leaf zaps in tdp_mmu_zap_leafs, roots torn down by __tdp_mmu_zap_root
    # in passes (two on 6.1, four since 6.9 via tdp_mmu_zap_root); mmu_lock is an rwlock.
    Era("6.x", (5, 18), (7, 99), "", ("kvm_tdp_mmu_spte_changed",) + _PAGE_TABLE_EVENTS, (
        Probe("tdp_mmu_zap_leafs", ("root", "start", "end", "can_yield", "flush"), required=True),
        Probe("__tdp_mmu_zap_root", ("root", "shared", "zap_level"), required=True, void=True),
        Probe("tdp_mmu_zap_root", ("root", "shared"), void=True),  # inlined on Debian's 6.1
        Probe("kvm_tdp_mmu_zap_leafs", ("start", "end", "flush")),
        Probe("kvm_tdp_mmu_zap_invalidated_roots", void=True),
        Probe("kvm_tdp_mmu_zap_all", void=True),
        Probe("kvm_tdp_mmu_put_root", ("root",), ret=False),
        Probe("__cond_resched_rwlock_write", ("lock",), required=True),
        Probe("__cond_resched_rwlock_read", ("lock",), required=True),
    ), optional_tracepoints=("kvm_mmu_split_huge_page",)),
)


def era_for(release: str) -> Era:
    """The Era of kernel `release`; a clear error for kernels the lab has no probe table for."""
    version = parse_version(release) or (0, 0)
    for era in ERAS:
        if era.since <= version < era.until:
            return era
    raise MissingCapability(f"the lab has no probe table for kernel {release}",
                            f"known eras: {', '.join(e.name for e in ERAS)}")


@dataclass
class Resolution:
    """kprobe_events lines for one kernel, and what could not be attached and why."""

    lines: list[str]
    attached: dict[str, str]  # C name -> symbol in this build
    skipped: dict[str, str]  # C name -> reason
    tracepoints: list[str]
    arguments: dict[str, dict] = field(default_factory=dict)  # C name -> Resolved.to_meta() (source per function)


def resolve(release: str, kallsyms: str, filter_functions: str, kvmmmu_events: str,
            kernel_btf: KernelBtf | None = None) -> Resolution:
    """Build the kprobe_events lines for `release` from its symbol dumps and (when given) its BTF; raise
    naming what is missing."""
    era = era_for(release)
    traceable = listed_functions(filter_functions)
    args_of = resolve_arguments([p.function for p in era.probes], release, text_symbols(kallsyms), kernel_btf)
    lines: list[str] = []
    attached: dict[str, str] = {}
    skipped: dict[str, str] = {}
    missing: list[str] = []
    for probe in era.probes:
        r = args_of[probe.function]
        if not r.exists:
            if probe.required:
                missing.append(probe.function)
            skipped[probe.function] = "not in kallsyms (inlined?)"
            continue
        sym = r.symbol
        fetch = []
        if probe.args and r.source == Source.NONE:
            # A compiler copy (or a function BTF leaves out) may have dropped or reordered parameters:
            # record no arguments rather than wrong ones.
            skipped[probe.function + " args"] = r.reason
        else:
            fetch = _fetch_args(probe, r, release, missing, skipped)
        event = re.sub(r"\W", "_", probe.function)
        lines.append(" ".join([f"p:tdp/{event}", sym, *fetch]))
        if probe.ret:
            lines.append(f"r16:tdp/{event}_ret {sym}" + ("" if probe.void else " ret=$retval:s64"))
        attached[probe.function] = sym + ("" if sym in traceable else " (not in available_filter_functions)")
    events = set(kvmmmu_events.split())
    missing += [f"kvmmmu/{tp}" for tp in era.tracepoints if tp not in events]
    if missing:
        raise MissingCapability(f"kernel {release} lacks what the lab needs: {', '.join(missing)}",
                                "the probe table for this era (tdptrace/lab/probes.py) does not fit this build")
    tracepoints = list(era.tracepoints) + [tp for tp in era.optional_tracepoints if tp in events]
    return Resolution(lines=lines, attached=attached, skipped=skipped, tracepoints=tracepoints,
                      arguments=args_of.to_meta()["functions"])


def _fetch_args(probe: Probe, r: Resolved, release: str, missing: list[str], skipped: dict[str, str]) -> list[str]:
    """kprobe fetch-args of `probe` from its resolved parameters; an argument this build does not pass in a
    register is left out (named in `skipped`), or, for a required probe, reported missing."""
    fetch = []
    for a in probe.args:
        reg = r.register(a)
        if reg is None:
            why = (f"{a} is not a parameter of {r.symbol} here ({r.source.value}: {', '.join(r.param_names or ())})"
                   if r.index(a) is None else f"{a} is not passed in a register")
            if probe.required:
                missing.append(f"{probe.function}({a}) on {release}: {why}")
            else:
                skipped[f"{probe.function} {a}"] = why
            continue
        assert r.params is not None
        fetch.append(f"{a}=%{reg}:{ARG_TYPES.get(a) or r.params[r.index(a)].fetch_type}")
    return fetch
