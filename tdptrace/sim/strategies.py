"""Each era's zap algorithm as the calls it makes: which kernel function runs which loop (tree.ZapRule).

Named after the kernel's own functions (arch/x86/kvm/mmu/tdp_mmu.c of each era; docs/kernel.md "Zap functions by
era"). A Call with a rule is one span (a traced entry..return); a Call without one is an entry-only call,
kept as a marker, as the lab's probes see them. Yield rules live in the loop: every loop here may yield
(can_yield) except where noted, and a recursive teardown never does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tdptrace.errors import BadInput
from tdptrace.sim.tree import ZapRule

ALL = -1  # "to the end of the address space": tdp_mmu_max_gfn_exclusive() caps it


@dataclass
class Call:
    """One call of a kernel function during a zap operation."""

    function: str
    rule: ZapRule | None = None
    start: int = 0
    end: int = ALL
    shared: bool = False
    can_yield: bool = True
    zap_level: int | None = None
    flush: int | None = None
    caller: str | None = None
    children: list["Call"] = field(default_factory=list)
    span: bool = True  # False: the function is inlined or traced on entry only (a marker, no span)


class Strategy:
    """Base: one era. Subclasses say how a range zap, a memslot deletion and a VM teardown zap."""

    name = ""
    era = ""
    release = ""  # a kernel release of that era (decides the removed/non-present SPTE values)
    removed_spte = 0x5a0  # REMOVED_SPTE, 5.13-6.9
    nonpresent_spte = 0

    def unmap(self, start: int, end: int) -> list[Call]:
        """mmu notifier (munmap, madvise(MADV_DONTNEED), reclaim) -> kvm_unmap_gfn_range, range->may_block."""
        raise NotImplementedError

    def delete_slot(self, root_level: int) -> list[Call]:
        """Memslot delete/move: kvm_mmu_zap_all_fast invalidates the roots, which are then torn down."""
        raise NotImplementedError

    def teardown(self, root_level: int) -> list[Call]:
        """VM teardown: kvm_arch_flush_shadow_all -> kvm_tdp_mmu_zap_all."""
        raise NotImplementedError


class Era515(Strategy):
    """5.15: zap_gfn_range. Zapping everything iterates the root level only, each top-level SPTE torn down
    recursively with no yield inside; a range zap removes leaves and every non-leaf SPTE wholly inside."""

    name = "5.15"
    era = "5.13-5.17 (zap_gfn_range)"
    release = "5.15.0"
    nonleaf_max_level = 5

    def _range_rule(self) -> ZapRule:
        return ZapRule(min_level=1, zap_leaf=True, nonleaf_max_level=self.nonleaf_max_level)

    def unmap(self, start: int, end: int) -> list[Call]:
        return [Call("kvm_tdp_mmu_unmap_gfn_range", span=False),
                Call("zap_gfn_range", self._range_rule(), start, end, shared=False, can_yield=True, flush=0,
                     caller="kvm_tdp_mmu_unmap_gfn_range")]

    def _zap_all(self, root_level: int, shared: bool, caller: str) -> Call:
        # zap_all = (start == 0 && end >= max_gfn_host): min_level = root->role.level.
        return Call("zap_gfn_range", ZapRule(min_level=root_level, only_level=root_level), 0, ALL, shared=shared,
                    can_yield=True, flush=0, caller=caller)

    def delete_slot(self, root_level: int) -> list[Call]:
        return [Call("kvm_mmu_zap_all_fast", span=False), Call("kvm_tdp_mmu_zap_invalidated_roots", span=False),
                self._zap_all(root_level, True, "kvm_tdp_mmu_zap_invalidated_roots")]

    def teardown(self, root_level: int) -> list[Call]:
        return [Call("kvm_tdp_mmu_zap_all", span=False),
                self._zap_all(root_level, False, "__kvm_tdp_mmu_zap_gfn_range")]


class Proposal2021(Era515):
    """The 2021 proposal on 5.15 (Mingwei Zhang's patch as reworked in Sean Christopherson's reply): when not
    zapping everything, stop at the 1 GiB level: non-leaf SPTEs above it are kept (retained) even when wholly
    inside the range. Zapping everything is unchanged."""

    name = "2021"
    era = "5.15 + 2021 proposal (range zaps stop at 1 GiB)"
    nonleaf_max_level = 3


class TwoPass(Strategy):
    """5.18-6.8: range zaps touch leaves only (tdp_mmu_zap_leafs), page tables are kept; a root is torn down
    by tdp_mmu_zap_root in two passes of __tdp_mmu_zap_root: zap_level 3 (1 GiB), then the root level.
    tdp_mmu_zap_root is inlined on Debian's 6.1 build, so only the passes are spans."""

    name = "two-pass"
    era = "5.18-6.8 (two-pass root zap)"
    release = "6.1.0"
    pass_levels: tuple[int, ...] = (3,)
    outer_span = False

    def unmap(self, start: int, end: int) -> list[Call]:
        return [Call("kvm_tdp_mmu_unmap_gfn_range", span=False),
                Call("tdp_mmu_zap_leafs", ZapRule(min_level=1, zap_leaf=True), start, end, shared=False,
                     can_yield=True, flush=0, caller="kvm_tdp_mmu_unmap_gfn_range")]

    def _zap_root(self, root_level: int, shared: bool, caller: str) -> list[Call]:
        passes = [Call("__tdp_mmu_zap_root", ZapRule(min_level=lv, only_level=lv), 0, ALL, shared=shared,
                       can_yield=True, zap_level=lv, caller="tdp_mmu_zap_root" if self.outer_span else caller)
                  for lv in (*self.pass_levels, root_level)]
        if self.outer_span:
            return [Call("tdp_mmu_zap_root", None, shared=shared, caller=caller, children=passes)]
        return passes

    def delete_slot(self, root_level: int) -> list[Call]:
        return [Call("kvm_mmu_zap_all_fast", span=False), Call("kvm_tdp_mmu_zap_invalidated_roots", span=False),
                *self._zap_root(root_level, True, "kvm_tdp_mmu_zap_invalidated_roots")]

    def teardown(self, root_level: int) -> list[Call]:
        return [Call("kvm_tdp_mmu_zap_all", span=False), *self._zap_root(root_level, False, "kvm_tdp_mmu_zap_all")]


class FourPass(TwoPass):
    """6.9+: four passes 4K, 2M, 1G, root (commit 'KVM: x86/mmu: Zap SPTEs in four passes', v6.9; skipped
    with CONFIG_KVM_PROVE_MMU). tdp_mmu_zap_root is a real symbol on Debian's 6.12, so it is a span too.
    6.10+ writes FROZEN_SPTE 0x80000000000005a0 and non-present SPTEs carry bit 63."""

    name = "four-pass"
    era = "6.9+ (four-pass root zap)"
    release = "6.12.0"
    pass_levels = (1, 2, 3)
    outer_span = True
    removed_spte = 0x80000000000005a0
    nonpresent_spte = 1 << 63


STRATEGIES: dict[str, type[Strategy]] = {"5.15": Era515, "2021": Proposal2021, "two-pass": TwoPass,
                                         "four-pass": FourPass}
ALIASES = {"5.13": "5.15", "5.17": "5.15", "5.18": "two-pass", "6.1": "two-pass", "6.8": "two-pass",
           "6.9": "four-pass", "6.12": "four-pass", "2pass": "two-pass", "4pass": "four-pass"}


def strategy(name: str) -> Strategy:
    """The strategy named `name` (or an era alias such as 6.1 or 6.12)."""
    key = ALIASES.get(name, name)
    if key not in STRATEGIES:
        raise BadInput(f"unknown strategy '{name}'",
                       f"choose one of {', '.join(STRATEGIES)} (aliases: {', '.join(sorted(ALIASES))})")
    return STRATEGIES[key]()
