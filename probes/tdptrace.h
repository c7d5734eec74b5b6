/* tdptrace.h - the records the BPF side writes into its ring buffers, declared once.
 *
 * Mirrored by tdptrace/live/records.py (numpy dtypes); tests/live/test_live_records.py compiles this header
 * with BCC and checks every size and offset. Keep both in sync.
 * All records are fixed size, so user space drains a ring buffer as one strided numpy array.
 */
#ifndef TDPTRACE_H
#define TDPTRACE_H

#define TDP_COMM_LEN 16
#define TDP_LEVELS 5
#define TDP_ZAP_COUNTERS (2 * TDP_LEVELS) /* leaf_l1, nonleaf_l1, leaf_l2, ... */

/* tdp_event.kind (keep in sync with records.py KIND) */
#define TDP_KIND_SPTE 1          /* kvm_tdp_mmu_spte_changed */
#define TDP_KIND_GET_PAGE 2      /* kvm_mmu_get_page */
#define TDP_KIND_PREPARE_ZAP 3   /* kvm_mmu_prepare_zap_page */
#define TDP_KIND_ZAP_ALL_FAST 4  /* kvm_mmu_zap_all_fast */
#define TDP_KIND_SPLIT 5         /* kvm_mmu_split_huge_page (spte body: gfn, old_spte = the huge SPTE) */
#define TDP_KIND_YIELD 6         /* a yield point inside a zap span */
#define TDP_KIND_SYSCALL 7       /* bench only: the stand-in high-rate tracepoint */

/* tdp_event.flags */
#define TDP_F_CREATED 1 /* kvm_mmu_get_page: a new table (else a lookup) */
#define TDP_F_UNSYNC 2
#define TDP_F_RETURNED 4 /* yield: the return was observed (ret, ret_ts valid) */

struct tdp_spte_body {
	__u64 gfn;
	__u64 old_spte;
	__u64 new_spte;
};

struct tdp_page_body {
	__u64 gfn;
	__u32 role;
	__u32 root_count;
	__u32 mmu_valid_gen;
	__u32 used_pages; /* kvm_mmu_zap_all_fast */
};

struct tdp_yield_body {
	__u64 lock;   /* raw pointer; hashed in user space before it is written anywhere */
	__u64 ret_ts;
	__s64 span_id;
};

/* One streamed event: 64 bytes. */
struct tdp_event {
	__u64 ts;
	__u32 tid;
	__u32 pid;
	__u16 cpu;
	__u8 kind;
	__u8 level;
	__u8 as_id;
	__u8 flags;
	__s16 ret;   /* yield: return value; split: errno */
	char comm[TDP_COMM_LEN];
	union {
		struct tdp_spte_body spte;
		struct tdp_page_body page;
		struct tdp_yield_body yield;
	} u;
};

/* One zap span (docs/metrics.md "Zap span"), aggregated in the kernel: 224 bytes. */
struct tdp_span {
	__u64 start_ts;
	__u64 end_ts;
	__s64 span_id;
	__s64 parent_id; /* -1 at depth 0 */
	__u64 kvm;       /* raw pointers; hashed in user space */
	__u64 root;
	__u64 gfn_start;
	__u64 gfn_end;
	__s64 ret;
	__u64 away_ns;
	__u64 max_gap_ns;
	__s64 retained_after;
	__u64 zaps[TDP_ZAP_COUNTERS];
	__u32 tid;
	__u32 pid;
	__u32 yields;
	__u32 lock_drops;
	__s32 stack_id; /* -1 unless --stacks and max_gap_ns >= the threshold */
	__u16 cpu;
	__u8 func_id;   /* index into the attach table user space loaded */
	__u8 depth;
	__s8 zap_level; /* -1 where the function has no such argument */
	__s8 shared;
	__s8 can_yield;
	__s8 flush;
	__u8 pad[4];
	char comm[TDP_COMM_LEN];
};

/* Which argument registers a probed function's parameters live in (-1 = not passed), per func_id. */
struct tdp_func_args {
	__s8 kvm;
	__s8 root;
	__s8 start;
	__s8 end;
	__s8 can_yield;
	__s8 flush;
	__s8 shared;
	__s8 zap_level;
	__s8 vmm_call; /* only the VMM itself calls it (memslot ioctl): its caller owns the VM */
	__u8 pad[7];
};

#endif /* TDPTRACE_H */
