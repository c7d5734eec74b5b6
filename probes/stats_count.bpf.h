/* stats_count.bpf.h - the per-VM counters of stats.bpf.c and how one SPTE change updates them.
 *
 * Per VM (the owning process's tgid; see vm_of_current) it counts SPTE zaps by level and kind and keeps the
 * retained non-leaf tables (docs/metrics.md definitions). Shared by stats.bpf.c and stats_replay.bpf.c.
 *
 * Settings: TDP_FILTER_TGID (only count this process; 0 = all), TDP_MAX_VMS, TDP_MAX_TABLES, TDP_MAX_TASKS
 * (map sizes). Spliced into the program's text by tdptrace/live/programs.py (BCC rewrites map methods in the
 * main source only).
 */
#ifndef TDPTRACE_STATS_COUNT_BPF_H
#define TDPTRACE_STATS_COUNT_BPF_H

#if !defined(TDP_FILTER_TGID) || !defined(TDP_MAX_VMS) || !defined(TDP_MAX_TABLES) || !defined(TDP_MAX_TASKS)
#error "statistics settings missing: compile the probes through tdptrace/live/programs.py"
#endif

struct table_state {
	__s64 present;  /* entries installed minus entries zapped since the table was first seen */
	__s64 lowest;   /* lowest `present` so far: below 0 = entries installed before we looked */
	__u8 linked;    /* the non-leaf SPTE one level up is present */
	__u8 ever;      /* had present entries since it was (re)linked */
	__u8 retained;  /* currently counted in vm_stats.retained */
	__u8 relinked;  /* a link op was seen: the table's whole life since then is known */
	__u8 pad[4];
};

/* A task inside a probed zap function (kprobes only). */
struct span_state {
	__u64 last_ns;  /* span start, or the previous yield point's return */
	__u32 depth;    /* nesting of probed zap functions on this task */
	__u32 vm;
};

BPF_PERCPU_HASH(stats, u32, struct vm_stats, TDP_MAX_VMS);
BPF_PERCPU_ARRAY(zero_stats, struct vm_stats, 1);
BPF_PERCPU_ARRAY(lost, u64, LOST_SLOTS);
BPF_HASH(gap_interval_max, u32, u64, TDP_MAX_VMS);
BPF_HASH(tables, struct table_key, struct table_state, TDP_MAX_TABLES);
BPF_HASH(vm_comm, u32, struct comm_name, TDP_MAX_VMS);
BPF_HASH(task_span, u32, struct span_state, TDP_MAX_TASKS);
BPF_HASH(kvm_owner, u64, u32, TDP_MAX_VMS);

static __always_inline void count_lost(u32 slot)
{
	u64 *n = lost.lookup(&slot);
	if (n)
		(*n)++;
}

/* The VM a change belongs to: the VM of the zap span the task is in (kprobes), else the task's process. */
static __always_inline u32 vm_of_current(void)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct span_state *st = task_span.lookup(&tid);
	if (st)
		return st->vm;
	return bpf_get_current_pid_tgid() >> 32;
}

static __always_inline struct vm_stats *stats_of(u32 vm)
{
	struct vm_stats *v = stats.lookup(&vm);
	if (v)
		return v;
	u32 z = 0;
	struct vm_stats *zero = zero_stats.lookup(&z);
	if (!zero)
		return 0;
	v = stats.lookup_or_try_init(&vm, zero);
	if (!v) {
		count_lost(LOST_VM_MAP_FULL);
		return 0;
	}
	struct comm_name c = {};
	bpf_get_current_comm(&c.comm, sizeof(c.comm));
	vm_comm.insert(&vm, &c);
	return v;
}

static __always_inline int filtered(u32 vm)
{
	return TDP_FILTER_TGID && vm != TDP_FILTER_TGID;
}

/* Recount one table after a change (docs/metrics.md): retained = linked, once had present entries, none now.
 * "None now" is present == lowest: a table already populated when we started looking is assumed to have
 * had the fewest entries consistent with what was zapped, as tdptrace/capture/pagetables.py assumes for
 * captures. */
static __always_inline void settle(struct vm_stats *v, struct table_state *t, u32 level)
{
	u8 r = t->linked && t->ever && t->present == t->lowest;
	if (r == t->retained || level >= STATS_LEVELS)
		return;
	t->retained = r;
	v->retained[level] += r ? 1 : (u64)-1;
}

static __always_inline struct table_state *table_of(struct table_key *k, u8 linked)
{
	struct table_state *t = tables.lookup(k);
	if (t)
		return t;
	struct table_state fresh = {.linked = linked};
	tables.insert(k, &fresh);  /* fails when another CPU inserted it first, or when the map is full */
	t = tables.lookup(k);
	if (!t)
		count_lost(LOST_TABLE_MAP_FULL);
	return t;
}

/* Count one kvm_tdp_mmu_spte_changed: zaps by level and kind, and the retained-table bookkeeping. */
static __always_inline void count_spte_change(struct vm_stats *v, u32 vm, u8 as_id, u64 gfn, u32 level, u64 old,
					      u64 new)
{
	int po = spte_present(old), pn = spte_present(new);
	v->spte_changes++;
	/* One bound only: clang fuses two into a range check that the 6.1 verifier cannot follow. Level 0 never
	 * occurs and would land in the unused slot 0. */
	if (level >= STATS_LEVELS)
		return;
	if (po && !pn) {
		if (spte_leaf(old, level))
			v->zap_leaf[level]++;
		else
			v->zap_nonleaf[level]++;
	}
	if (po != pn) {
		/* A table with no link op seen yet is assumed linked, except roots (level 4+: nothing links them
		 * unless a level-5 entry does). */
		struct table_key k = {.vm = vm, .as_id = as_id, .level = level, .base_gfn = table_base(gfn, level)};
		struct table_state *t = table_of(&k, level < 4);
		if (t) {
			/* Atomic: vCPUs fault into the same table concurrently under the shared lock. The reads below
			 * may still interleave, so the retained flag is exact only per table update order. */
			__sync_fetch_and_add(&t->present, pn ? 1 : -1);
			if (t->present < t->lowest) {
				t->lowest = t->present;
				if (!t->relinked)
					t->ever = 1;  /* it had entries before we looked */
			}
			if (t->present > t->lowest)
				t->ever = 1;
			settle(v, t, level);
			/* Unlinked and emptied after a fully observed life: the table is gone, forget it. A table
			 * populated before we looked keeps its (unlinked) state, or its remaining entries' zaps would
			 * recreate it as linked; user space drops such leftovers with the VM. */
			if (t->relinked && !t->linked && t->present == 0)
				tables.delete(&k);
		}
	}
	int nl_old = po && !spte_leaf(old, level), nl_new = pn && !spte_leaf(new, level);
	if (nl_old != nl_new && level >= 2) {
		u32 child = level - 1;
		struct table_key k = {.vm = vm, .as_id = as_id, .level = child, .base_gfn = table_base(gfn, child)};
		struct table_state *c = table_of(&k, nl_new);
		if (!c)
			return;
		if (nl_new) {
			/* Linked anew: a new, empty table (KVM links a table before filling it), whose whole life
			 * is now observed; "once had entries" starts over. */
			c->linked = 1;
			c->present = 0;
			c->lowest = 0;
			c->ever = 0;
			c->relinked = 1;
			settle(v, c, child);
		} else {
			/* Unlinked: its entries are zapped next (recursive teardown); forget it once they are. */
			c->linked = 0;
			settle(v, c, child);
			if (c->relinked && c->present == 0)
				tables.delete(&k);
		}
	}
}

#endif /* TDPTRACE_STATS_COUNT_BPF_H */
