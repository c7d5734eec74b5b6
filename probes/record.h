/* record.h - what probes/record.bpf.c shares with user space: its records, flags, counters and limits.
 *
 * Keep in sync with tdptrace/live/records.py (RECORD_H, the numpy dtypes). tests/live/test_probe_headers.py
 * checks every #define here against RECORD_H (both ways) with the C preprocessor, and every struct size and
 * offset against the dtypes as BCC compiles them.
 * All records are fixed size, so user space drains a ring buffer as one strided numpy array.
 */
#ifndef TDPTRACE_RECORD_H
#define TDPTRACE_RECORD_H

#define TDP_COMM_LEN 16
#define TDP_LEVELS 5
#define TDP_ZAP_COUNTERS (2 * TDP_LEVELS) /* leaf_l1, nonleaf_l1, leaf_l2, ... */

/* tdp_event.kind */
#define TDP_KIND_SPTE 1          /* kvm_tdp_mmu_spte_changed */
#define TDP_KIND_GET_PAGE 2      /* kvm_mmu_get_page */
#define TDP_KIND_PREPARE_ZAP 3   /* kvm_mmu_prepare_zap_page */
#define TDP_KIND_ZAP_ALL_FAST 4  /* kvm_mmu_zap_all_fast */
#define TDP_KIND_SPLIT 5         /* kvm_mmu_split_huge_page (spte body: gfn, old_spte = the huge SPTE) */
#define TDP_KIND_YIELD 6         /* a yield point inside a zap span */
#define TDP_KIND_SYSCALL 7       /* record_bench.bpf.c only: the stand-in high-rate tracepoint */

/* tdp_event.flags */
#define TDP_F_CREATED 1  /* kvm_mmu_get_page: a new table (else a lookup) */
#define TDP_F_UNSYNC 2
#define TDP_F_RETURNED 4 /* yield: the return was observed (ret, ret_ts valid) */
/* yield: which yield point it was */
#define TDP_F_YIELD_READ 0x10  /* __cond_resched_rwlock_read */
#define TDP_F_YIELD_WRITE 0x20 /* __cond_resched_rwlock_write */
#define TDP_F_YIELD_SPIN 0x40  /* __cond_resched_lock (5.10-5.11) */

/* Map `stats` (s64 each): settings the recorder reads back, and errors it reports. */
#define TDP_STAT_SPAN_ID 0          /* next span id */
#define TDP_STAT_DEPTH_OVERFLOW 1   /* spans nested deeper than the per-task state holds, not measured */
#define TDP_STAT_TABLES_FULL 2      /* page tables not tracked: map full */
#define TDP_STAT_MAX_LEVEL 3        /* highest SPTE level seen (5 = 5-level paging) */
#define TDP_STAT_UNMATCHED_RETURN 4 /* a span return that was not the innermost open function's */
#define TDP_STAT_RETAINED_PEAK 5    /* most retained non-leaf tables at any one time */
#define TDP_STAT_COUNT 6

/* Map `drops` (u64 per CPU): records lost because the buffer was full. */
#define TDP_DROPS_EVENTS 0
#define TDP_DROPS_SPANS 1
#define TDP_DROPS_COUNT 2

/* Span functions: programs span_entry_N / span_return_N for N < TDP_MAX_FUNCS, each reading its
 * struct tdp_func_args (map `func_args`, index N); arguments are taken from the first TDP_ARG_REGS registers. */
#define TDP_MAX_FUNCS 16
#define TDP_ARG_REGS 6
/* Map `pids` (-p): the processes a recording is limited to. */
#define TDP_MAX_PIDS 1024
/* VMM calls (memslot ioctls, VM creation): programs vmm_call_N for N < TDP_MAX_VMM_CALLS, each reading its
 * struct tdp_func_args (map `vmm_args`, index N) for the kvm argument; the caller becomes the VM's owner. */
#define TDP_MAX_VMM_CALLS 4
/* struct tdp_vm_owner.how: who decided a VM's owner (map `vm_owner`). */
#define TDP_OWNER_FIRST_ZAP 0 /* the first task seen zapping it (no VMM call seen yet) */
#define TDP_OWNER_VMM_CALL 1  /* the VMM's own call: final */

/* record_selftest.bpf.c: the test process replays a trace with
 * syscall(SYS_getpid, op, a1, a2, a3, a4, TDP_SELFTEST_MAGIC); nothing else reaches its handlers. */
#define TDP_SELFTEST_MAGIC 0x7464707472616365ULL /* "tdptrace" */
#define TDP_SELFTEST_SPTE 1         /* a1 gfn, a2 old, a3 new, a4 level | as_id << 8 | tid << 16 */
#define TDP_SELFTEST_SPAN_ENTRY 2   /* a1 tid, a2 ts, a3 func_id, a4 zap_level (register 3) */
#define TDP_SELFTEST_SPAN_RETURN 3  /* a1 tid (or tgid << 32 | tid), a2 ts, a3 func_id, a4 ret */
#define TDP_SELFTEST_YIELD_ENTRY 4  /* a1 tid, a2 ts, a3 lock, a4 TDP_F_YIELD_* */
#define TDP_SELFTEST_YIELD_RETURN 5 /* a1 tid, a2 ts, a3 ret */
#define TDP_SELFTEST_VMM_CALL 6     /* a1 tgid << 32 | tid, a2 vmm_args index, a3 kvm */
#define TDP_SELFTEST_SPAN_ENTRY_VM 7 /* a1 tgid << 32 | tid, a2 ts, a3 func_id, a4 kvm (register 0) */

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
	__s8 vmm_call; /* only the VMM itself calls it (memslot ioctl, VM creation): its caller owns the VM */
	__u8 pad[7];
};

/* Map `vm_owner` value: the process that owns a VM (struct kvm) and how that was decided. */
struct tdp_vm_owner {
	__u32 tgid;
	__u32 how; /* TDP_OWNER_* */
};

#endif /* TDPTRACE_RECORD_H */
