"""Parameters of each probed kernel function by era: the fallback table for kernels without BTF.

kernel.resolve reads a build's BTF first; this table speaks only where no BTF describes kvm (5.10's kvm.ko has
no module BTF; kernels built without CONFIG_DEBUG_INFO_BTF). Where a stable backport changed a signature
inside one (major, minor), the table refuses to guess (AMBIGUOUS). x86-64 System V passes the first six
integer arguments in di, si, dx, cx, r8, r9. Keep in sync with arch/x86/kvm/mmu/tdp_mmu.c of each era
(docs/kernel.md "Zap functions by era" and "Builds checked").
"""
from __future__ import annotations

from dataclasses import dataclass

from tdptrace.kernel.btf import Param
from tdptrace.kernel.release import Version, parse_version
from tdptrace.kernel.symbols import base_symbol


@dataclass(frozen=True)
class Signature:
    """Parameter names of one function in kernels [since, until) (x86-64 System V: di, si, dx, cx, r8, r9)."""

    since: Version
    until: Version
    params: tuple[str, ...]


_ANY: Version = (99, 0)

# Keep in sync with tdp_mmu.c of each era (docs/kernel.md). Registers checked against the disassembly of stock
# kvm.ko builds; parameter lists checked against the BTF of Debian 6.1.0-56 (6.1.192) and 6.12.117 (tests/kernel).
SIGNATURES: dict[str, tuple[Signature, ...]] = {
    "__kvm_tdp_mmu_zap_gfn_range": (
        Signature((5, 10), (5, 11), ("kvm", "start", "end", "can_yield")),
        Signature((5, 11), (5, 18), ("kvm", "as_id", "start", "end", "can_yield", "flush")),
    ),
    # 5.10: `flush` came with a stable backport (Debian 5.10.223 has it); the arguments before it are the same.
    "zap_gfn_range": (
        Signature((5, 10), (5, 13), ("kvm", "root", "start", "end", "can_yield", "flush")),
        Signature((5, 13), (5, 18), ("kvm", "root", "start", "end", "can_yield", "flush", "shared")),
    ),
    "kvm_tdp_mmu_zap_hva_range": (Signature((5, 10), (5, 13), ("kvm", "hva_start", "hva_end")),),
    "kvm_tdp_mmu_free_root": (Signature((5, 10), (5, 13), ("kvm", "root")),),
    "kvm_tdp_mmu_unmap_gfn_range": (Signature((5, 13), _ANY, ("kvm", "range", "flush")),),
    # Debian 6.1.192's BTF still has `shared`; 6.12's has not. `root` is the second argument either way.
    "kvm_tdp_mmu_put_root": (
        Signature((5, 13), (6, 10), ("kvm", "root", "shared")),
        Signature((6, 10), _ANY, ("kvm", "root")),
    ),
    # `shared` since 6.14 (the 6.14-6.17 builds test %sil), not 6.18.
    "kvm_tdp_mmu_zap_invalidated_roots": (
        Signature((5, 13), (6, 14), ("kvm",)),
        Signature((6, 14), _ANY, ("kvm", "shared")),
    ),
    # 6.1 is AMBIGUOUS: a stable backport moved current 6.1.y to (kvm, start, end, flush).
    "kvm_tdp_mmu_zap_leafs": (
        Signature((5, 18), (6, 1), ("kvm", "as_id", "start", "end", "can_yield", "flush")),
        Signature((6, 2), (6, 6), ("kvm", "as_id", "start", "end", "can_yield", "flush")),
        Signature((6, 6), _ANY, ("kvm", "start", "end", "flush")),
    ),
    "tdp_mmu_zap_leafs": (Signature((5, 18), _ANY, ("kvm", "root", "start", "end", "can_yield", "flush")),),
    "__tdp_mmu_zap_root": (Signature((5, 18), _ANY, ("kvm", "root", "shared", "zap_level")),),
    "tdp_mmu_zap_root": (Signature((5, 18), _ANY, ("kvm", "root", "shared")),),
    "kvm_tdp_mmu_zap_sp": (Signature((5, 18), (6, 18), ("kvm", "sp")),),
    "kvm_tdp_mmu_zap_possible_nx_huge_page": (Signature((6, 18), _ANY, ("kvm", "sp")),),
    "kvm_tdp_mmu_zap_all": (Signature((5, 10), _ANY, ("kvm",)),),
    "kvm_zap_gfn_range": (Signature((5, 10), _ANY, ("kvm", "gfn_start", "gfn_end")),),
    "kvm_unmap_gfn_range": (Signature((5, 13), _ANY, ("kvm", "range")),),
    "kvm_arch_flush_shadow_memslot": (Signature((5, 10), _ANY, ("kvm", "slot")),),
    "kvm_arch_flush_shadow_all": (Signature((5, 10), _ANY, ("kvm",)),),
    "kvm_mmu_zap_all_fast": (Signature((5, 10), _ANY, ("kvm",)),),
    "kvm_arch_init_vm": (Signature((5, 10), _ANY, ("kvm", "type")),),
    "kvm_arch_prepare_memory_region": (
        Signature((5, 10), (5, 17), ("kvm", "memslot", "mem", "change")),
        Signature((5, 17), _ANY, ("kvm", "old", "new", "change")),
    ),
    # The SPTE-change function of 5.10-6.5 (renamed handle_changed_spte by 6.12). 7.3 has a new
    # __handle_changed_spte with another meaning: the table says nothing about it.
    "__handle_changed_spte": (
        Signature((5, 10), (5, 11), ("kvm", "as_id", "gfn", "old_spte", "new_spte", "level")),
        Signature((5, 11), (6, 6), ("kvm", "as_id", "gfn", "old_spte", "new_spte", "level", "shared")),
    ),
    "__cond_resched_rwlock_read": (Signature((5, 12), _ANY, ("lock",)),),
    "__cond_resched_rwlock_write": (Signature((5, 12), _ANY, ("lock",)),),
    "__cond_resched_lock": (Signature((5, 10), _ANY, ("lock",)),),
}

# (function, (major, minor)) where the version alone cannot decide the signature: why, and the form current
# stable releases of that version have (what a model of today's kernel, such as the simulator, uses).
AMBIGUOUS: dict[tuple[str, Version], tuple[str, tuple[str, ...]]] = {
    ("kvm_tdp_mmu_zap_leafs", (6, 1)): ("6.1.y took (kvm, as_id, start, end, can_yield, flush) until a stable "
                                        "backport made it (kvm, start, end, flush)", ("kvm", "start", "end", "flush")),
}

# C type and kind of each parameter name the table uses, as BTF would give them (x86-64 sizes).
PARAM_TYPES: dict[str, tuple[str, str, int, bool]] = {
    "kvm": ("struct kvm *", "ptr", 8, False), "root": ("struct kvm_mmu_page *", "ptr", 8, False),
    "sp": ("struct kvm_mmu_page *", "ptr", 8, False), "slot": ("struct kvm_memory_slot *", "ptr", 8, False),
    "range": ("struct kvm_gfn_range *", "ptr", 8, False), "lock": ("void *", "ptr", 8, False),
    "start": ("gfn_t", "int", 8, False), "end": ("gfn_t", "int", 8, False), "gfn": ("gfn_t", "int", 8, False),
    "gfn_start": ("gfn_t", "int", 8, False), "gfn_end": ("gfn_t", "int", 8, False),
    "hva_start": ("unsigned long", "int", 8, False), "hva_end": ("unsigned long", "int", 8, False),
    "old_spte": ("u64", "int", 8, False), "new_spte": ("u64", "int", 8, False),
    "as_id": ("int", "int", 4, True), "level": ("int", "int", 4, True), "zap_level": ("int", "int", 4, True),
    "can_yield": ("bool", "bool", 1, False), "flush": ("bool", "bool", 1, False),
    "shared": ("bool", "bool", 1, False),
    "type": ("unsigned long", "int", 8, False), "change": ("enum kvm_mr_change", "enum", 4, False),
    "memslot": ("struct kvm_memory_slot *", "ptr", 8, False), "old": ("const struct kvm_memory_slot *", "ptr", 8, False),
    "new": ("struct kvm_memory_slot *", "ptr", 8, False),
    "mem": ("const struct kvm_userspace_memory_region *", "ptr", 8, False),
}

ARG_REGISTERS: tuple[str, ...] = ("di", "si", "dx", "cx", "r8", "r9")


def signature(function: str, release: str, current: bool = False) -> tuple[str, ...] | None:
    """Parameter names of `function` (base C name) on kernel `release` by the era table; None when the table
    does not know (no entry for that era, or AMBIGUOUS there unless `current` asks for today's stable form)."""
    version = parse_version(release)
    if version is None:
        return None
    amb = AMBIGUOUS.get((base_symbol(function), version))
    if amb is not None:
        return amb[1] if current else None
    for sig in SIGNATURES.get(base_symbol(function), ()):
        if sig.since <= version < sig.until:
            return sig.params
    return None


def ambiguity(function: str, release: str) -> str | None:
    """Why the table cannot tell `function`'s signature on `release`, if that is the case."""
    version = parse_version(release)
    amb = AMBIGUOUS.get((base_symbol(function), version)) if version else None
    return amb[0] if amb else None


def table_params(function: str, release: str) -> tuple[Param, ...] | None:
    """The table's parameters of `function` on `release` as typed Params (the BTF reader's shape)."""
    names = signature(function, release)
    if names is None:
        return None
    out = []
    for n in names:
        ctype, kind, size, signed = PARAM_TYPES[n]
        out.append(Param(n, ctype, size, kind, signed))
    return tuple(out)


def register_of(function: str, release: str, param: str) -> str | None:
    """The x86-64 register holding `param` at entry of `function` on `release` by the era table."""
    params = signature(function, release)
    if params is None or param not in params:
        return None
    i = params.index(param)
    return ARG_REGISTERS[i] if i < len(ARG_REGISTERS) else None
