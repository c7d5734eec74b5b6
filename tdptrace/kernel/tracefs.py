"""Where tracefs lives and the KVM tracepoints tdptrace reads (group kvmmmu, plus the waiter events)."""
from __future__ import annotations

from pathlib import Path

# Mount points, newest first, relative to the root of the host tree.
TRACEFS_DIRS: tuple[str, ...] = ("sys/kernel/tracing", "sys/kernel/debug/tracing")
TRACEFS_MOUNT = "mount -t tracefs nodev /sys/kernel/tracing"

KVMMMU = "kvmmmu"
SPTE_CHANGED = "kvm_tdp_mmu_spte_changed"
GET_PAGE = "kvm_mmu_get_page"
PREPARE_ZAP = "kvm_mmu_prepare_zap_page"
ZAP_ALL_FAST = "kvm_mmu_zap_all_fast"
SPLIT_HUGE = "kvm_mmu_split_huge_page"
KVMMMU_EVENTS: tuple[str, ...] = (SPTE_CHANGED, GET_PAGE, PREPARE_ZAP, ZAP_ALL_FAST, SPLIT_HUGE)


def find_tracefs(root: Path = Path("/")) -> Path | None:
    """The mounted tracefs directory under `root` (one that has events/), or None."""
    for rel in TRACEFS_DIRS:
        d = root / rel
        try:
            if (d / "events").is_dir():
                return d
        except OSError:
            continue
    return None


# Who waits (record --waiters): lock contention tracepoints (since 5.19, commit "locking: Add lock contention
# tracepoints") and the vCPU's fault and next guest entry (arch/x86/kvm/trace.h), as (group, event).
WAITER_EVENTS: tuple[tuple[str, str], ...] = (("lock", "contention_begin"), ("lock", "contention_end"),
                                             ("kvm", "kvm_page_fault"), ("kvm", "kvm_entry"))
# Only spinning rwlock contention (LCB_F_SPIN with LCB_F_READ or LCB_F_WRITE), which is what mmu_lock is:
# rwsems (mmap_lock) and mutexes stay out of the buffer.
CONTENTION_FILTER = "(flags & 1) && (flags & 6)"
