"""The kernel functions tdptrace probes and the role each plays: zap spans, yield points, SPTE-change
sources, what kind of operation a zap is and who asks for it.

Named after the kernel's own C symbols; their parameters by era are in kernel.signatures. Keep in sync
with arch/x86/kvm/mmu/tdp_mmu.c and mmu.c of each era (docs/kernel.md "Zap functions by era").
"""
from __future__ import annotations

# Functions whose entry..return is a zap span (docs/metrics.md "Zap span"). Static ones may be inlined or carry
# .isra/.constprop/.part suffixes in a given build: resolve on the running kernel, never assume.
ZAP_FUNCTIONS: frozenset[str] = frozenset({
    # 5.10
    "__kvm_tdp_mmu_zap_gfn_range", "zap_gfn_range", "kvm_tdp_mmu_zap_hva_range", "kvm_tdp_mmu_free_root",
    # 5.15
    "kvm_tdp_mmu_unmap_gfn_range", "kvm_tdp_mmu_put_root", "kvm_tdp_mmu_zap_invalidated_roots",
    # 5.18 .. 6.x
    "kvm_tdp_mmu_zap_leafs", "tdp_mmu_zap_leafs", "__tdp_mmu_zap_root", "tdp_mmu_zap_root",
    "kvm_tdp_mmu_zap_sp", "tdp_mmu_zap_root_work", "kvm_tdp_mmu_zap_possible_nx_huge_page",
    "kvm_tdp_mmu_zap_all",
    # generic entry points (shadow and TDP MMU)
    "kvm_zap_gfn_range", "kvm_unmap_gfn_range", "kvm_arch_flush_shadow_memslot", "kvm_arch_flush_shadow_all",
    "kvm_mmu_zap_all_fast",
})

# Yield points: KVM calls these only when it intends to yield mmu_lock (docs/kernel.md "Yields").
# Since v5.12 mmu_lock is an rwlock (cond_resched_rwlock_read/write); 5.10-5.11 use the spinlock variant.
YIELD_FUNCTIONS: frozenset[str] = frozenset({
    "__cond_resched_rwlock_read", "__cond_resched_rwlock_write", "__cond_resched_lock",
})

# 5.10 has no kvm_tdp_mmu_spte_changed tracepoint; a kprobe here carries the same fields.
SPTE_CHANGE_FUNCTIONS: frozenset[str] = frozenset({"__handle_changed_spte"})

# Functions most worth probing, in preference order, for the recorder and the lab (innermost zap loops
# first: they are where mmu_lock is held and yields happen).
PREFERRED_SPAN_FUNCTIONS: tuple[str, ...] = (
    "tdp_mmu_zap_leafs", "__tdp_mmu_zap_root", "tdp_mmu_zap_root", "zap_gfn_range",
    "kvm_tdp_mmu_zap_leafs", "__kvm_tdp_mmu_zap_gfn_range", "kvm_tdp_mmu_zap_all",
    "kvm_tdp_mmu_zap_invalidated_roots", "kvm_tdp_mmu_zap_sp", "kvm_tdp_mmu_zap_possible_nx_huge_page",
    "kvm_tdp_mmu_put_root",
)

# The zap loops that hold mmu_lock, in which yields happen: the in-kernel counters of `top`/`serve`
# take the outermost of these on a task as one span.
ZAP_LOOPS: tuple[str, ...] = ("tdp_mmu_zap_leafs", "__tdp_mmu_zap_root", "tdp_mmu_zap_root", "zap_gfn_range")

# Called only from the VMM's own ioctls (VM creation, memslot changes): whoever calls them owns the VM, so
# zaps of that VM run by kworkers, kswapd or another process's direct reclaim are still the VM's
# (docs/kernel.md). Not zap spans: the recorder probes their entry only. kvm is their first parameter in
# every era; kvm_mmu_zap_all_fast is inlined on some builds (6.12, 7.x), the others are real symbols.
VMM_CALLS: tuple[str, ...] = ("kvm_arch_flush_shadow_memslot", "kvm_mmu_zap_all_fast", "kvm_arch_init_vm",
                              "kvm_arch_prepare_memory_region")

# What kind of work each zap function does; operations group spans by it (metrics.operations).
ROOT_TEARDOWN = "root teardown"
LEAF_ZAP = "leaf zap"
RANGE_ZAP = "range zap"
NX_RECOVERY = "NX recovery"
OTHER = "other"
OPERATION_CLASS: dict[str, str] = {
    "__tdp_mmu_zap_root": ROOT_TEARDOWN, "tdp_mmu_zap_root": ROOT_TEARDOWN, "kvm_tdp_mmu_zap_all": ROOT_TEARDOWN,
    "kvm_tdp_mmu_zap_invalidated_roots": ROOT_TEARDOWN, "kvm_tdp_mmu_put_root": ROOT_TEARDOWN,
    "kvm_tdp_mmu_free_root": ROOT_TEARDOWN, "tdp_mmu_zap_root_work": ROOT_TEARDOWN,
    "kvm_mmu_zap_all_fast": ROOT_TEARDOWN, "kvm_arch_flush_shadow_all": ROOT_TEARDOWN,
    "kvm_arch_flush_shadow_memslot": ROOT_TEARDOWN,
    "tdp_mmu_zap_leafs": LEAF_ZAP, "kvm_tdp_mmu_zap_leafs": LEAF_ZAP, "kvm_tdp_mmu_unmap_gfn_range": LEAF_ZAP,
    "kvm_unmap_gfn_range": LEAF_ZAP, "kvm_zap_gfn_range": LEAF_ZAP,
    "zap_gfn_range": RANGE_ZAP, "__kvm_tdp_mmu_zap_gfn_range": RANGE_ZAP, "kvm_tdp_mmu_zap_hva_range": RANGE_ZAP,
    "kvm_tdp_mmu_zap_sp": NX_RECOVERY, "kvm_tdp_mmu_zap_possible_nx_huge_page": NX_RECOVERY,
}


def operation_class(function: str) -> str:
    """The operation class of a zap function (base C name); OTHER for anything else."""
    return OPERATION_CLASS.get(function, OTHER)


# Who calls a zap, by the functions on its path (docs/kernel.md "Who zaps, and with which lock"). Keep in sync.
ZAP_CONTEXTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("kvm_tdp_mmu_zap_possible_nx_huge_page", "kvm_tdp_mmu_zap_sp"), "NX huge page recovery"),
    (("kvm_tdp_mmu_zap_invalidated_roots", "kvm_mmu_zap_all_fast", "kvm_arch_flush_shadow_memslot"),
     "memslot delete/move: invalidated roots torn down"),
    (("kvm_tdp_mmu_zap_all", "kvm_arch_flush_shadow_all"), "VM teardown (zap all)"),
    (("kvm_tdp_mmu_put_root", "kvm_tdp_mmu_free_root", "tdp_mmu_zap_root_work"), "last reference to a root dropped"),
    (("kvm_tdp_mmu_unmap_gfn_range", "kvm_unmap_gfn_range", "kvm_tdp_mmu_zap_hva_range"),
     "mmu notifier (munmap, madvise, THP collapse, migration, reclaim)"),
    (("kvm_zap_gfn_range",), "kvm_zap_gfn_range (MTRR or APICv inhibit change)"),
)
# What the zap function itself does.
ZAP_OPERATIONS: dict[str, str] = {
    "__tdp_mmu_zap_root": "root teardown", "tdp_mmu_zap_root": "root teardown",
    "tdp_mmu_zap_leafs": "leaf zap of a gfn range", "kvm_tdp_mmu_zap_leafs": "leaf zap of a gfn range",
    "zap_gfn_range": "gfn range zap (recursive)", "__kvm_tdp_mmu_zap_gfn_range": "gfn range zap (recursive)",
    "kvm_tdp_mmu_zap_all": "zap of every root", "kvm_tdp_mmu_zap_sp": "zap of one huge page's table",
}
