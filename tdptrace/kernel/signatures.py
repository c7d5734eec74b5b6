"""Parameters of each probed kernel function by era: the fallback table for kernels without BTF.

x86-64 System V passes the first six integer arguments in di, si, dx, cx, r8, r9. Keep in sync with
arch/x86/kvm/mmu/tdp_mmu.c of each era (docs/kernel.md "Zap functions by era" and "Builds checked").
"""
from __future__ import annotations

from dataclasses import dataclass

from tdptrace.kernel.release import Version, parse_version
from tdptrace.kernel.symbols import base_symbol


@dataclass(frozen=True)
class Signature:
    """Parameter names of one function in kernels [since, until) (x86-64 System V: di, si, dx, cx, r8, r9)."""

    since: Version
    until: Version
    params: tuple[str, ...]


_ANY: Version = (99, 0)

# Keep in sync with tdp_mmu.c of each era (docs/kernel.md; Debian 6.1.0-56 registers checked against the
# disassembly of its kvm.ko: tdp_mmu_zap_leafs root=%si start=%dx end=%cx can_yield=%r8 flush=%r9,
# __tdp_mmu_zap_root root=%si shared=%dx zap_level=%cx; kvm_tdp_mmu_put_root(kvm, root) on Debian's 6.1.192).
SIGNATURES: dict[str, tuple[Signature, ...]] = {
    "__kvm_tdp_mmu_zap_gfn_range": (
        Signature((5, 10), (5, 11), ("kvm", "start", "end", "can_yield")),
        Signature((5, 11), (5, 18), ("kvm", "as_id", "start", "end", "can_yield", "flush")),
    ),
    "zap_gfn_range": (
        Signature((5, 10), (5, 13), ("kvm", "root", "start", "end", "can_yield", "flush")),
        Signature((5, 13), (5, 18), ("kvm", "root", "start", "end", "can_yield", "flush", "shared")),
    ),
    "kvm_tdp_mmu_zap_hva_range": (Signature((5, 10), (5, 13), ("kvm", "hva_start", "hva_end")),),
    "kvm_tdp_mmu_free_root": (Signature((5, 10), (5, 13), ("kvm", "root")),),
    "kvm_tdp_mmu_unmap_gfn_range": (Signature((5, 13), _ANY, ("kvm", "range", "flush")),),
    "kvm_tdp_mmu_put_root": (
        Signature((5, 13), (6, 1), ("kvm", "root", "shared")),
        Signature((6, 1), _ANY, ("kvm", "root")),
    ),
    "kvm_tdp_mmu_zap_invalidated_roots": (
        Signature((5, 13), (6, 18), ("kvm",)),
        Signature((6, 18), _ANY, ("kvm", "shared")),
    ),
    "kvm_tdp_mmu_zap_leafs": (
        Signature((5, 18), (6, 1), ("kvm", "as_id", "start", "end", "can_yield", "flush")),
        Signature((6, 1), _ANY, ("kvm", "start", "end", "flush")),
    ),
    "tdp_mmu_zap_leafs": (Signature((5, 18), _ANY, ("kvm", "root", "start", "end", "can_yield", "flush")),),
    "__tdp_mmu_zap_root": (Signature((5, 18), _ANY, ("kvm", "root", "shared", "zap_level")),),
    "tdp_mmu_zap_root": (Signature((5, 18), _ANY, ("kvm", "root", "shared")),),
    "kvm_tdp_mmu_zap_sp": (Signature((5, 18), _ANY, ("kvm", "sp")),),
    "kvm_tdp_mmu_zap_possible_nx_huge_page": (Signature((6, 18), _ANY, ("kvm", "sp")),),
    "kvm_tdp_mmu_zap_all": (Signature((5, 10), _ANY, ("kvm",)),),
    "kvm_zap_gfn_range": (Signature((5, 10), _ANY, ("kvm", "start", "end")),),
    "kvm_unmap_gfn_range": (Signature((5, 13), _ANY, ("kvm", "range")),),
    "kvm_arch_flush_shadow_memslot": (Signature((5, 10), _ANY, ("kvm", "slot")),),
    "kvm_arch_flush_shadow_all": (Signature((5, 10), _ANY, ("kvm",)),),
    "kvm_mmu_zap_all_fast": (Signature((5, 10), _ANY, ("kvm",)),),
    "kvm_arch_init_vm": (Signature((5, 10), _ANY, ("kvm", "type")),),
    "kvm_arch_prepare_memory_region": (
        Signature((5, 10), (5, 17), ("kvm", "memslot", "mem", "change")),
        Signature((5, 17), _ANY, ("kvm", "old", "new", "change")),
    ),
    "__handle_changed_spte": (
        Signature((5, 10), (5, 11), ("kvm", "as_id", "gfn", "old_spte", "new_spte", "level")),
        Signature((5, 11), _ANY, ("kvm", "as_id", "gfn", "old_spte", "new_spte", "level", "shared")),
    ),
    "__cond_resched_rwlock_read": (Signature((5, 12), _ANY, ("lock",)),),
    "__cond_resched_rwlock_write": (Signature((5, 12), _ANY, ("lock",)),),
    "__cond_resched_lock": (Signature((5, 10), _ANY, ("lock",)),),
}

ARG_REGISTERS: tuple[str, ...] = ("di", "si", "dx", "cx", "r8", "r9")


def signature(function: str, release: str) -> tuple[str, ...] | None:
    """Parameter names of `function` (base C name) on kernel `release`; None when unknown for that era."""
    version = parse_version(release)
    if version is None:
        return None
    for sig in SIGNATURES.get(base_symbol(function), ()):
        if sig.since <= version < sig.until:
            return sig.params
    return None


def register_of(function: str, release: str, param: str) -> str | None:
    """The x86-64 register holding `param` at entry of `function` on `release`, if passed in a register."""
    params = signature(function, release)
    if params is None or param not in params:
        return None
    i = params.index(param)
    return ARG_REGISTERS[i] if i < len(ARG_REGISTERS) else None
