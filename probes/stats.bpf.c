/* tdptrace live statistics: in-kernel aggregation only, nothing is streamed per event.
 *
 * Per VM (the owning process's tgid; see vm_of_current) it counts SPTE zaps by level and kind, page tables
 * allocated and freed by level, fast zaps, and the retained non-leaf tables (docs/metrics.md definitions).
 * Where kprobes exist it also measures zap spans, yield points and the gaps between them (log2 histogram).
 *
 * Settings come as -D defines from tdptrace/live/stats.py:
 *   SPTE_PRESENT_BIT  1 = present is bit 11 (5.13+), 0 = the legacy rule (non-zero, not MMIO, not removed)
 *   HAVE_SPANS        1 = compile the kprobe handlers (span_enter*, span_return, yield_enter, yield_return)
 *   NO_TDP_TRACEPOINT defined when the kernel lacks kvmmmu:kvm_tdp_mmu_spte_changed (5.10)
 *   FILTER_TGID       only count this process (0 = all)
 *   MAX_VMS, MAX_TABLES, MAX_TASKS  map sizes
 *   STATS_REPLAY      tests only: add the XDP program `replay` (see there)
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>
#include "stats.h"

#ifndef SPTE_PRESENT_BIT
#define SPTE_PRESENT_BIT 1
#endif
#ifndef HAVE_SPANS
#define HAVE_SPANS 0
#endif
#ifndef FILTER_TGID
#define FILTER_TGID 0
#endif
#ifndef MAX_VMS
#define MAX_VMS 1024
#endif
#ifndef MAX_TABLES
#define MAX_TABLES 65536
#endif
#ifndef MAX_TASKS
#define MAX_TASKS 4096
#endif

/* Since Linux v5.13 ("KVM: x86/mmu: Use a dedicated bit to track shadow/MMU-present SPTEs") bit 11 marks a
 * present SPTE; the removed/frozen markers lack it. Before: non-zero, not MMIO (bits 53:52), not 1 << 59. */
#define SPTE_MMU_PRESENT_MASK (1ULL << 11)
#define PT_PAGE_SIZE_MASK (1ULL << 7)
#define LEGACY_MMIO_MASK (3ULL << 52)
#define LEGACY_REMOVED_SPTE (1ULL << 59)

BPF_PERCPU_HASH(stats, u32, struct vm_stats, MAX_VMS);
BPF_PERCPU_ARRAY(zero_stats, struct vm_stats, 1);
BPF_PERCPU_ARRAY(lost, u64, LOST_SLOTS);
BPF_HASH(gap_interval_max, u32, u64, MAX_VMS);
BPF_HASH(tables, struct table_key, struct table_state, MAX_TABLES);
BPF_HASH(vm_comm, u32, struct comm_name, MAX_VMS);
BPF_HASH(task_span, u32, struct span_state, MAX_TASKS);
BPF_HASH(kvm_owner, u64, u32, MAX_VMS);

static __always_inline int spte_present(u64 spte)
{
#if SPTE_PRESENT_BIT
	return (spte & SPTE_MMU_PRESENT_MASK) != 0;
#else
	return spte != 0 && (spte & LEGACY_MMIO_MASK) != LEGACY_MMIO_MASK && spte != LEGACY_REMOVED_SPTE;
#endif
}

static __always_inline int spte_leaf(u64 spte, u32 level)
{
	return level == 1 || (spte & PT_PAGE_SIZE_MASK) != 0;
}

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
	return FILTER_TGID && vm != FILTER_TGID;
}

static __always_inline u64 table_base(u64 gfn, u32 level)
{
	/* 512^level pages per table: 9 bits per level. */
	u32 shift = 9 * (level & 7);
	return shift >= 64 ? 0 : gfn & ~((1ULL << shift) - 1);
}

/* Recount one table after a change (docs/metrics.md): retained = linked, once had present entries, none now.
 * "None now" is present == lowest: a table already populated when we started looking is assumed to have
 * had the fewest entries consistent with what was zapped, as tdptrace/capture/pagetables.py assumes for captures. */
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

#ifndef NO_TDP_TRACEPOINT
TRACEPOINT_PROBE(kvmmmu, kvm_tdp_mmu_spte_changed)
{
	u32 vm = vm_of_current();
	if (filtered(vm))
		return 0;
	struct vm_stats *v = stats_of(vm);
	if (v)
		count_spte_change(v, vm, args->as_id, args->gfn, args->level, args->old_spte, args->new_spte);
	return 0;
}
#endif

#ifdef STATS_REPLAY
/* Tests only: feed one struct replay_event (after 16 bytes of padding: XDP test packets need an Ethernet
 * header's 14) through the
 * same counting code, with BPF_PROG_TEST_RUN, to check it against captures of real kernels. */
int replay(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct replay_event *e = data + 16;
	if ((void *)(e + 1) > end)
		return XDP_ABORTED;
	u32 vm = e->vm;
	struct vm_stats *v = stats.lookup(&vm);
	if (!v) {
		u32 z = 0;
		struct vm_stats *zero = zero_stats.lookup(&z);
		if (!zero)
			return XDP_ABORTED;
		v = stats.lookup_or_try_init(&vm, zero);
		if (!v)
			return XDP_ABORTED;
	}
	count_spte_change(v, vm, e->as_id, e->gfn, e->level, e->old_spte, e->new_spte);
	return XDP_PASS;
}
#endif

TRACEPOINT_PROBE(kvmmmu, kvm_mmu_get_page)
{
	if (!args->created)
		return 0;
	u32 vm = vm_of_current();
	if (filtered(vm))
		return 0;
	struct vm_stats *v = stats_of(vm);
	u32 level = args->role & 0xf;
	if (v && level < STATS_LEVELS)
		v->pt_alloc[level]++;
	return 0;
}

TRACEPOINT_PROBE(kvmmmu, kvm_mmu_prepare_zap_page)
{
	u32 vm = vm_of_current();
	if (filtered(vm))
		return 0;
	struct vm_stats *v = stats_of(vm);
	u32 level = args->role & 0xf;
	if (v && level < STATS_LEVELS)
		v->pt_free[level]++;
	return 0;
}

TRACEPOINT_PROBE(kvmmmu, kvm_mmu_zap_all_fast)
{
	u32 vm = vm_of_current();
	if (filtered(vm))
		return 0;
	struct vm_stats *v = stats_of(vm);
	if (v)
		v->zap_all_fast++;
	return 0;
}

#if HAVE_SPANS
static __always_inline void record_gap(u32 vm, u64 gap)
{
	struct vm_stats *v = stats_of(vm);
	if (!v)
		return;
	v->gap_count++;
	v->gap_sum_ns += gap;
	if (gap > v->gap_max_ns)
		v->gap_max_ns = gap;
	v->gap_hist[bpf_log2l(gap) & (GAP_BUCKETS - 1)]++;
	u64 *m = gap_interval_max.lookup(&vm);
	if (m) {
		if (gap > *m)
			*m = gap;
	} else {
		gap_interval_max.insert(&vm, &gap);
	}
}

static __always_inline int enter(u64 kvm)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id, tgid = id >> 32;
	struct span_state *st = task_span.lookup(&tid);
	if (st) {
		st->depth++;
		return 0;
	}
	u32 vm = tgid;
	if (kvm) {
		/* A VM is named by the process that owns it: learn the owner from a user task, so zaps run by
		 * kernel threads (workqueues, NX recovery) are charged to the same VM. */
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		if (!(task->flags & PF_KTHREAD))
			kvm_owner.update(&kvm, &tgid);
		u32 *owner = kvm_owner.lookup(&kvm);
		if (owner)
			vm = *owner;
	}
	if (filtered(vm))
		return 0;
	struct span_state fresh = {.last_ns = bpf_ktime_get_ns(), .depth = 1, .vm = vm};
	if (task_span.insert(&tid, &fresh))
		count_lost(LOST_TASK_MAP_FULL);
	return 0;
}

/* For functions whose first argument is the struct kvm pointer (not compiler copies). */
int span_enter_kvm(struct pt_regs *ctx)
{
	return enter(PT_REGS_PARM1(ctx));
}

int span_enter(struct pt_regs *ctx)
{
	return enter(0);
}

int span_return(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct span_state *st = task_span.lookup(&tid);
	if (!st)
		return 0;
	if (st->depth > 1) {
		st->depth--;
		return 0;
	}
	u32 vm = st->vm;
	u64 gap = bpf_ktime_get_ns() - st->last_ns;
	task_span.delete(&tid);
	record_gap(vm, gap);
	struct vm_stats *v = stats_of(vm);
	if (v)
		v->spans++;
	return 0;
}

/* __cond_resched_rwlock_read/write (__cond_resched_lock before 5.12) called from inside a zap span. */
int yield_enter(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct span_state *st = task_span.lookup(&tid);
	if (!st)
		return 0;
	u32 vm = st->vm;
	u64 gap = bpf_ktime_get_ns() - st->last_ns;
	record_gap(vm, gap);
	struct vm_stats *v = stats_of(vm);
	if (v)
		v->yields++;
	return 0;
}

int yield_return(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct span_state *st = task_span.lookup(&tid);
	if (st)
		st->last_ns = bpf_ktime_get_ns();
	return 0;
}
#endif
