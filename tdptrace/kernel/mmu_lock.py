"""Which mode of kvm->mmu_lock each zap holds, who that blocks, and what each kernel era is known to do.

mmu_lock became an rwlock on x86 in 5.12 ("KVM: x86/mmu: Use an rwlock for the x86 MMU"); before, it is a
spinlock (exclusive, as a write hold). Since 5.12 TDP MMU page faults take it for read, so a
write hold blocks every vCPU fault of that VM while a read hold blocks only writers (mmu-notifier
invalidations, memslot changes, kvm_zap_gfn_range). The shadow MMU takes it for write on faults.
Keep in sync with docs/kernel.md "Who zaps, and with which lock".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tdptrace.kernel.release import Version, parse_version

READ = "read"
WRITE = "write"

RWLOCK_SINCE: Version = (5, 12)

# The lock mode a zap function runs under when its arguments do not say (lockdep_assert_held_write/read in
# tdp_mmu.c of each era). Functions with a `shared` argument follow it instead.
FUNCTION_MODE: dict[str, str] = {
    "tdp_mmu_zap_leafs": WRITE, "kvm_tdp_mmu_zap_leafs": WRITE, "kvm_tdp_mmu_unmap_gfn_range": WRITE,
    "kvm_unmap_gfn_range": WRITE, "kvm_zap_gfn_range": WRITE, "kvm_tdp_mmu_zap_all": WRITE,
    "kvm_arch_flush_shadow_all": WRITE, "__kvm_tdp_mmu_zap_gfn_range": WRITE, "kvm_tdp_mmu_zap_hva_range": WRITE,
    "kvm_tdp_mmu_zap_sp": WRITE,
    # Since Linux kernel commit a57750909580 ("KVM: x86/mmu: Recover TDP MMU NX huge pages using MMU read lock")
    # (in v6.18); 6.18 names the function this (kvm_tdp_mmu_zap_sp before).
    "kvm_tdp_mmu_zap_possible_nx_huge_page": READ,
    # 6.1: kvm_tdp_mmu_zap_invalidated_roots takes the read lock itself (later kernels pass `shared`).
    "kvm_tdp_mmu_zap_invalidated_roots": READ,
}
# Zap functions with a `shared` argument: shared=1 means the caller holds mmu_lock for read.
SHARED_ARG_FUNCTIONS: frozenset[str] = frozenset({
    "__tdp_mmu_zap_root", "tdp_mmu_zap_root", "zap_gfn_range", "kvm_tdp_mmu_zap_invalidated_roots",
})
# A yield point names the mode it drops and retakes: the most direct evidence a capture has.
YIELD_MODE: dict[str, str] = {
    "__cond_resched_rwlock_read": READ, "__cond_resched_rwlock_write": WRITE, "__cond_resched_lock": WRITE,
}


@dataclass(frozen=True)
class LockMode:
    """The mode of one hold, how it was decided, and whom it blocks."""

    mode: Optional[str]     # 'read', 'write' or None (cannot tell)
    source: str             # 'yield function', 'shared argument', 'function', 'unknown'
    spinlock: bool          # before 5.12 mmu_lock is a spinlock: exclusive like a write hold
    blocks: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def blocks_text(mode: Optional[str], spinlock: bool) -> str:
    """Who a hold in this mode keeps waiting."""
    if mode == WRITE:
        what = "the spinlock" if spinlock else "mmu_lock for write"
        return (f"{what}: every vCPU page fault of this VM waits (TDP MMU faults take the lock for read), and "
                "so do mmu-notifier invalidations, memslot changes and other zaps")
    if mode == READ:
        return ("mmu_lock for read: vCPU faults of the TDP MMU go on; writers wait (mmu-notifier invalidations "
                "such as munmap/madvise/reclaim/migration of this VM's memory, memslot changes, "
                "kvm_zap_gfn_range), and vCPU faults wait behind a queued writer")
    return "unknown lock mode: a write hold would block every vCPU fault of this VM, a read hold only writers"


def lock_mode(function: str, shared: Optional[int], yield_functions: tuple[str, ...] = (),
              release: Optional[str] = None) -> LockMode:
    """The mode a span of `function` held mmu_lock in: from the yield points it called (their name says the
    mode), else its `shared` argument, else the mode the function always runs under."""
    v = parse_version(release)
    spin = v is not None and v < RWLOCK_SINCE
    if spin or "__cond_resched_lock" in yield_functions:
        return LockMode(WRITE, "spinlock (before 5.12)" if spin else "yield function", True,
                        blocks_text(WRITE, True))
    modes = {YIELD_MODE[f] for f in yield_functions if f in YIELD_MODE}
    if len(modes) == 1:
        m = modes.pop()
        return LockMode(m, "yield function", False, blocks_text(m, False))
    if function in SHARED_ARG_FUNCTIONS and shared is not None:
        m = READ if shared else WRITE
        return LockMode(m, "shared argument", False, blocks_text(m, False))
    if function in FUNCTION_MODE:
        m = FUNCTION_MODE[function]
        return LockMode(m, "function", False, blocks_text(m, False))
    return LockMode(None, "unknown", False, blocks_text(None, False))


@dataclass(frozen=True)
class EraBehaviour:
    """What a kernel era's zap code is known to do, and which simulator strategy models it."""

    era: str
    strategy: Optional[str]
    root_teardown: str
    range_zap: str


# Keep in sync with docs/kernel.md "Zap functions by era" and tdptrace/sim/strategies.py.
_ERAS: tuple[tuple[Version, Version, EraBehaviour], ...] = (
    ((5, 10), (5, 13), EraBehaviour(
        "5.10-5.12", None,
        "zap_gfn_range tears the whole tree down; a non-leaf SPTE's subtree is freed recursively without a "
        "yield (mmu_lock is a spinlock up to 5.11)",
        "every non-leaf SPTE wholly inside the range is removed with its tables; the mmu-notifier path "
        "(kvm_tdp_mmu_zap_hva_range) cannot yield at all")),
    ((5, 13), (5, 18), EraBehaviour(
        "5.13-5.17", "5.15",
        "zapping everything iterates the root level only: each top-level SPTE is torn down recursively with no "
        "yield inside (about 7 s for one fully populated 512 GiB entry with 4-level paging)",
        "leaves and every non-leaf SPTE wholly inside the range are zapped, their tables freed")),
    ((5, 18), (6, 9), EraBehaviour(
        "5.18-6.8", "two-pass",
        "a root is torn down in two passes of __tdp_mmu_zap_root (down to 1 GiB, then the root level): the "
        "first pass removes each 1 GiB entry's subtree without a yield inside it",
        "range zaps (tdp_mmu_zap_leafs) zap leaves only and keep the emptied page tables for reuse")),
    ((6, 9), (99, 0), EraBehaviour(
        "6.9+", "four-pass",
        "a root is torn down in four passes (4K, 2M, 1G, root), yielding between entries at every level, so no "
        "pass frees a subtree whose leaves are still present",
        "range zaps zap leaves only and keep the emptied page tables for reuse")),
)


def era_behaviour(release: Optional[str]) -> Optional[EraBehaviour]:
    """The known behaviour of the zap code of kernel `release`; None when the release names no version."""
    v = parse_version(release)
    if v is None:
        return None
    for lo, hi, b in _ERAS:
        if lo <= v < hi:
            return b
    return None


# From 6.11 (commit c793a62823d1) rwlock_needbreak() also asks the preemption model in force; before it, only
# whether the kernel was built with CONFIG_PREEMPTION (which PREEMPT_DYNAMIC selects). docs/kernel.md "Yields".
NEEDBREAK_ASKS_MODEL_SINCE: Version = (6, 11)
_PREEMPTIBLE = ("full", "lazy", "rt")


def contention_yields(release: Optional[str], preempt_built: Optional[str],
                      preempt_dynamic: Optional[bool]) -> tuple[Optional[bool], str]:
    """Whether a zap on this build also yields because another task waits for mmu_lock (rwlock_needbreak),
    not only on need_resched; None when the build does not say. With a sentence saying why."""
    v = parse_version(release)
    if v is None or preempt_built is None:
        return None, "unknown: the release or the kernel's preemption config is not known"
    built = preempt_built
    if v < NEEDBREAK_ASKS_MODEL_SINCE:
        if built in _PREEMPTIBLE or preempt_dynamic:
            why = "PREEMPT_DYNAMIC selects CONFIG_PREEMPTION" if preempt_dynamic and built not in _PREEMPTIBLE \
                else f"built preempt={built}"
            return True, f"yes: before 6.11 contention counts on any CONFIG_PREEMPTION kernel ({why})"
        return False, f"no: built preempt={built} without PREEMPT_DYNAMIC; only need_resched makes a zap yield"
    if built in _PREEMPTIBLE:
        boot = "; a PREEMPT_DYNAMIC boot with preempt=none/voluntary turns it off" if preempt_dynamic else ""
        lazy = " (Debian builds 6.16 and later this way)" if built == "lazy" else ""
        return True, f"yes: built preempt={built}{lazy}, and from 6.11 contention counts under full or lazy " \
                     f"preemption{boot}"
    if preempt_dynamic:
        return False, (f"no by default: built preempt={built}; from 6.11 contention counts only when booted with "
                       "preempt=full or preempt=lazy")
    return False, f"no: built preempt={built}; only need_resched makes a zap yield"
