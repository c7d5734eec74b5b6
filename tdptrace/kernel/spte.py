"""SPTE decoding, vectorised, for every kernel era (docs/kernel.md "Levels and SPTE encoding").

Keep in sync with arch/x86/kvm/mmu/spte.h of each era. Presence decides what a zap is, so it is decided the
kernel's way: bit 11 (SPTE_MMU_PRESENT_MASK) since 5.13, never by comparing with 0.
"""
from __future__ import annotations

import enum

import numpy as np

from tdptrace.kernel.release import parse_version

MAX_LEVEL = 5
# Page size mapped by one SPTE at each level, as people name it.
LEVEL_SIZE: dict[int, str] = {1: "4K", 2: "2M", 3: "1G", 4: "512G", 5: "256T"}
ENTRIES_PER_TABLE = 512
PAGE_SIZE = 4096

# Since Linux v5.13 a shadow-present SPTE has bit 11 set (SPTE_MMU_PRESENT_MASK); the removed (later "frozen")
# markers 0x5a0 / 0x80000000000005a0 / 7.3's 0x80000000000001a0 do not.
SPTE_MMU_PRESENT_MASK = np.uint64(1 << 11)
# Leaf at level > 1 when PT_PAGE_SIZE_MASK (bit 7) is set.
PT_PAGE_SIZE_MASK = np.uint64(1 << 7)
# Before v5.13: MMIO SPTEs are marked by SPTE_SPECIAL_MASK == SPTE_MMIO_MASK (bits 53:52 both set), and
# 5.11-5.12 write REMOVED_SPTE = 1 << 59 while a subtree is torn down.
LEGACY_SPECIAL_MASK = np.uint64(3 << 52)
LEGACY_MMIO_VALUE = np.uint64(3 << 52)
LEGACY_REMOVED_SPTE = np.uint64(1 << 59)
# Values written into an SPTE while the subtree below it is torn down, by era, and 6.10's plain non-present
# value; none is present under its era's rule (probes/spte.bpf.h has the same constants). kernel.validate
# uses them to tell a trace's era.
REMOVED_SPTE_5_13 = 0x5A0                      # 5.13 - 6.9
FROZEN_SPTE_6_10 = 0x80000000000005A0          # 6.10 on (FROZEN_SPTE from 6.11)
FROZEN_SPTE_7_3 = 0x80000000000001A0           # Debian's 7.3.4 build: no 0x...5a0 left in its kvm.ko
SHADOW_NONPRESENT_VALUE = 0x8000000000000000   # non-present from 6.10 (0 before)
# Child page table pfn of a non-leaf SPTE: bits 51:12.
PFN_MASK = np.uint64(((1 << 52) - 1) & ~((1 << 12) - 1))


class Encoding(str, enum.Enum):
    """How presence is encoded: by bit 11 (5.13+) or by value (5.10-5.12)."""

    PRESENT_BIT = "present-bit"
    LEGACY = "legacy"


def encoding_for_release(release: str | None) -> Encoding | None:
    """The SPTE encoding of a kernel release string such as '6.1.0-56-amd64'; None when unparseable."""
    version = parse_version(release)
    if version is None:
        return None
    return Encoding.PRESENT_BIT if version >= (5, 13) else Encoding.LEGACY


def is_present(spte: np.ndarray, encoding: Encoding) -> np.ndarray:
    """Boolean array: SPTE is shadow-present under the given era's rule."""
    spte = np.asarray(spte, dtype=np.uint64)
    if encoding == Encoding.PRESENT_BIT:
        return (spte & SPTE_MMU_PRESENT_MASK) != 0
    return (spte != 0) & ((spte & LEGACY_SPECIAL_MASK) != LEGACY_MMIO_VALUE) & (spte != LEGACY_REMOVED_SPTE)


def is_leaf(spte: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Boolean array: a (present) SPTE at `level` maps memory rather than a child table."""
    spte = np.asarray(spte, dtype=np.uint64)
    return (np.asarray(level) == 1) | ((spte & PT_PAGE_SIZE_MASK) != 0)


def pages_per_entry(level: np.ndarray | int) -> np.ndarray | int:
    """4 KiB pages covered by one SPTE at `level`: 512^(level-1)."""
    return np.power(np.int64(ENTRIES_PER_TABLE), np.asarray(level, dtype=np.int64) - 1)


def table_base(gfn: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Base gfn of the page table holding an entry at (gfn, level): gfn rounded down to 512^level pages."""
    gfn = np.asarray(gfn, dtype=np.uint64)
    span = np.power(np.uint64(ENTRIES_PER_TABLE), np.asarray(level, dtype=np.uint64))
    return gfn - (gfn % span)


def child_pfn(spte: np.ndarray) -> np.ndarray:
    """Page frame of the child table a non-leaf SPTE points to."""
    return (np.asarray(spte, dtype=np.uint64) & PFN_MASK) >> np.uint64(12)


def detect_encoding(old: np.ndarray, new: np.ndarray) -> Encoding:
    """Best guess when the kernel release is unknown: the legacy removed marker 1<<59 means 5.11-5.12."""
    if np.any(np.asarray(new, dtype=np.uint64) == LEGACY_REMOVED_SPTE):
        return Encoding.LEGACY
    return Encoding.PRESENT_BIT
