/* stats.h - what probes/stats.bpf.c (`tdptrace top`, `tdptrace serve`) shares with user space: the per-VM
 * counters, the map keys user space reads, and the lost-update reasons.
 *
 * Keep in sync with tdptrace/live/stats.py (STATS_H, STATS_FIELDS, REPLAY_EVENT).
 * tests/live/test_probe_headers.py checks every #define here against STATS_H (both ways) with the C
 * preprocessor, and the struct sizes and offsets as BCC compiles them. Every vm_stats field is a u64 so user
 * space can read a value as one flat array.
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

/* Map `tables`, per-table state for the retained-table gauge: (vm, as_id, level of its entries, base gfn).
 * User space drops a gone VM's leftovers by `vm`. */
struct table_key {
	__u32 vm;
	__u8 as_id;
	__u8 level;
	__u16 pad;
	__u64 base_gfn;
};

/* One SPTE change fed to stats_replay.bpf.c (tests only): the tracepoint's fields, after STATS_REPLAY_PAD
 * bytes (XDP test packets need an Ethernet header's 14). */
#define STATS_REPLAY_PAD 16
struct replay_event {
	__u64 gfn;
	__u64 old_spte;
	__u64 new_spte;
	__u32 vm;
	__u8 level;
	__u8 as_id;
	__u16 pad;
};

/* Map `vm_comm`: the comm of the task that first charged a VM (user space prefers /proc/PID/comm while it
 * lives). */
struct comm_name {
	char comm[16];
};

/* Map `lost` (u64 per CPU): updates the program could not make, by reason. */
#define LOST_VM_MAP_FULL 0
#define LOST_TABLE_MAP_FULL 1
#define LOST_TASK_MAP_FULL 2
#define LOST_SLOTS 3

#endif /* TDPTRACE_STATS_H */
