/* spte.bpf.h - the SPTE encoding rules every probe decides zaps and page-table links by, written once.
 *
 * Mirrors tdptrace/kernel/spte.py (arch/x86/kvm/mmu/spte.h of each era). tests/live/test_probe_headers.py
 * checks the constants against it and runs these functions in the kernel on a table of SPTE values of every
 * era, comparing each answer with spte.py's.
 *
 * Setting: TDP_PRESENT_BIT  1 = presence is bit 11 (5.13+), 0 = the legacy value rule (5.10-5.12).
 * Pure functions only (no maps), so any program can include this file. They return int (0/1) and shift in 32
 * bits: the code shapes the programs were verified with on every kernel the lab runs, Debian 6.1's included.
 */
#ifndef TDPTRACE_SPTE_BPF_H
#define TDPTRACE_SPTE_BPF_H

#ifndef TDP_PRESENT_BIT
#error "TDP_PRESENT_BIT is not set: compile the probes through tdptrace/live/programs.py"
#endif

/* Levels 1 (4K) ... 5 (5-level paging). A table holds 2^SPTE_LEVEL_BITS entries; an entry at level L
 * covers 512^(L-1) pages and the table holding it covers 512^L. */
#define PT64_ROOT_MAX_LEVEL 5
#define SPTE_LEVEL_BITS 9
#define SPTE_ENT_PER_PAGE (1 << SPTE_LEVEL_BITS)
/* kvm_mmu_page_role.level: bits 3:0 of the role the page-table tracepoints print. */
#define ROLE_LEVEL_MASK 0xf

/* Since v5.13 ("KVM: x86/mmu: Use a dedicated bit to track shadow/MMU-present SPTEs") bit 11 marks a
 * present SPTE. Decide presence by it, never by comparing with 0: see the markers below. */
#define SPTE_MMU_PRESENT_MASK (1ULL << 11)
/* A present SPTE maps memory (is a leaf) at level 1, or above it when bit 7 (PT_PAGE_SIZE_MASK) is set. */
#define PT_PAGE_SIZE_MASK (1ULL << 7)
/* Before v5.13: MMIO SPTEs have SPTE_SPECIAL_MASK == SPTE_MMIO_MASK (bits 53:52 both set). */
#define LEGACY_SPECIAL_MASK (3ULL << 52)
#define LEGACY_MMIO_VALUE (3ULL << 52)

/* Values written into an SPTE while the subtree below it is torn down, and the plain non-present value;
 * none of them is present under its era's rule. */
#define LEGACY_REMOVED_SPTE (1ULL << 59)            /* REMOVED_SPTE, 5.11-5.12 */
#define REMOVED_SPTE_5_13 0x5a0ULL                  /* REMOVED_SPTE, 5.13-6.9 */
#define FROZEN_SPTE_6_10 0x80000000000005a0ULL      /* 6.10+ (renamed FROZEN_SPTE in 6.11) */
#define FROZEN_SPTE_7_3 0x80000000000001a0ULL       /* Debian's 7.3.4 build */
#define SHADOW_NONPRESENT_VALUE (1ULL << 63)        /* non-present SPTEs from 6.10 (0 before) */

_Static_assert(!(REMOVED_SPTE_5_13 & SPTE_MMU_PRESENT_MASK), "a removed marker must not look present");
_Static_assert(!(FROZEN_SPTE_6_10 & SPTE_MMU_PRESENT_MASK), "a frozen marker must not look present");
_Static_assert(!(FROZEN_SPTE_7_3 & SPTE_MMU_PRESENT_MASK), "a frozen marker must not look present");
_Static_assert(!(SHADOW_NONPRESENT_VALUE & SPTE_MMU_PRESENT_MASK), "non-present must not look present");

/* The 5.13+ rule: bit 11. */
static __always_inline int spte_present_bit(u64 spte)
{
	return (spte & SPTE_MMU_PRESENT_MASK) != 0;
}

/* The 5.10-5.12 rule: non-zero, not MMIO, not the removed marker. */
static __always_inline int spte_present_legacy(u64 spte)
{
	return spte != 0 && (spte & LEGACY_SPECIAL_MASK) != LEGACY_MMIO_VALUE && spte != LEGACY_REMOVED_SPTE;
}

/* Shadow-present under the running kernel's rule (TDP_PRESENT_BIT). */
static __always_inline int spte_present(u64 spte)
{
#if TDP_PRESENT_BIT
	return spte_present_bit(spte);
#else
	return spte_present_legacy(spte);
#endif
}

/* A present SPTE at `level` maps memory rather than a child table. A zap is classified by its OLD value
 * (the new one is a marker or non-present). */
static __always_inline int spte_leaf(u64 spte, u32 level)
{
	return level == 1 || (spte & PT_PAGE_SIZE_MASK) != 0;
}

/* Base gfn of the page table that holds an entry at (gfn, level): gfn rounded down to 512^level pages. */
static __always_inline u64 table_base(u64 gfn, u32 level)
{
	u32 shift = SPTE_LEVEL_BITS * (level & 7);
	return shift >= 64 ? 0 : gfn & ~((1ULL << shift) - 1);
}

/* The level of a page table from its kvm_mmu_page_role. */
static __always_inline u32 role_level(u32 role)
{
	return role & ROLE_LEVEL_MASK;
}

#endif /* TDPTRACE_SPTE_BPF_H */
