/* In-kernel aggregation for `tdptrace top` and `tdptrace serve`: the per-VM counters the BPF side keeps.
 *
 * Shared by probes/stats.bpf.c and mirrored by tdptrace/live/stats.py (STATS_DTYPE); a test checks that the
 * sizes agree. Keep in sync with tdptrace/live/stats.py. Every field is a u64 so user space can read a value
 * as one flat array.
 */
#ifndef TDPTRACE_STATS_H
#define TDPTRACE_STATS_H

/* Levels 1..5 are used; index 0 stays zero so a level is its own index. */
#define STATS_LEVELS 6
/* log2(ns) buckets: bucket b counts gaps in [2^b, 2^(b+1)) ns. 64 so that `b & 63` bounds the index in a
 * way every verifier follows (a clamp with a compare is rejected by Debian 6.1's). */
#define GAP_BUCKETS 64

struct vm_stats {
	__u64 zap_leaf[STATS_LEVELS];     /* kvm_tdp_mmu_spte_changed: present -> not present, leaf */
	__u64 zap_nonleaf[STATS_LEVELS];  /* same, non-leaf (a child table is torn down or unlinked) */
	__u64 pt_alloc[STATS_LEVELS];     /* kvm_mmu_get_page with created = 1, by role level */
	__u64 pt_free[STATS_LEVELS];      /* kvm_mmu_prepare_zap_page, by role level */
	__u64 retained[STATS_LEVELS];     /* signed in practice: +1/-1 as tables become / stop being retained */
	__u64 zap_all_fast;               /* kvm_mmu_zap_all_fast */
	__u64 spte_changes;               /* every kvm_tdp_mmu_spte_changed */
	__u64 spans;                      /* outermost calls of the probed zap loops (kprobes only) */
	__u64 yields;                     /* yield points inside those spans */
	__u64 gap_count;                  /* gaps measured (yields + span ends) */
	__u64 gap_sum_ns;
	__u64 gap_max_ns;                 /* longest gap since the program was loaded (per CPU; user side takes max) */
	__u64 gap_hist[GAP_BUCKETS];
};

/* Per-table state for the retained-table gauge: (vm, as_id, level of its entries, base gfn). */
struct table_key {
	__u32 vm;
	__u8 as_id;
	__u8 level;
	__u16 pad;
	__u64 base_gfn;
};

struct table_state {
	__s64 present;  /* entries installed minus entries zapped since the table was first seen */
	__s64 lowest;   /* lowest `present` so far: below 0 = entries installed before we looked */
	__u8 linked;    /* the non-leaf SPTE one level up is present */
	__u8 ever;      /* had present entries since it was (re)linked */
	__u8 retained;  /* currently counted in vm_stats.retained */
	__u8 relinked;  /* a link op was seen: the table's whole life since then is known */
	__u8 pad[4];
};

/* One SPTE change fed to the replay program (tests only, -DSTATS_REPLAY): the tracepoint's fields. */
struct replay_event {
	__u64 gfn;
	__u64 old_spte;
	__u64 new_spte;
	__u32 vm;
	__u8 level;
	__u8 as_id;
	__u16 pad;
};

/* The comm of the task that first charged a VM (user space prefers /proc/PID/comm while it lives). */
struct comm_name {
	char comm[16];
};

/* A task inside a probed zap function (kprobes only). */
struct span_state {
	__u64 last_ns;  /* span start, or the previous yield point's return */
	__u32 depth;    /* nesting of probed zap functions on this task */
	__u32 vm;
};

#define LOST_VM_MAP_FULL 0
#define LOST_TABLE_MAP_FULL 1
#define LOST_TASK_MAP_FULL 2
#define LOST_SLOTS 3

#endif
