/* stats.bpf.c - tdptrace live statistics (`top`, `serve`): in-kernel aggregation only, nothing is streamed.
 *
 * Per VM it counts SPTE zaps by level and kind, page tables allocated and freed by level, fast zaps, and the
 * retained non-leaf tables (stats_count.bpf.h). Where kprobes exist it also measures zap spans, yield points
 * and the gaps between them (log2 histogram). This file holds the attach points.
 *
 * Settings: validated integers from tdptrace/live/stats.py stats_defines(), passed as -D: those of
 * spte.bpf.h and stats_count.bpf.h, and
 *   TDP_TP_SPTE_CHANGED  1 where the kernel has kvmmmu:kvm_tdp_mmu_spte_changed (not 5.10)
 *   TDP_WITH_SPANS       1 = compile the kprobe handlers (span_enter*, span_return, yield_enter, yield_return)
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>
#include "stats.h"
#include "spte.bpf.h"
#include "tracepoint.bpf.h"
#include "stats_count.bpf.h"

#if !defined(TDP_TP_SPTE_CHANGED) || !defined(TDP_WITH_SPANS)
#error "statistics settings missing: compile the probes through tdptrace/live/programs.py"
#endif

#if TDP_TP_SPTE_CHANGED
TRACEPOINT_PROBE(kvmmmu, kvm_tdp_mmu_spte_changed)
{
	u32 vm = vm_of_current();
	if (filtered(vm))
		return TDP_TP_PASS;
	struct vm_stats *v = stats_of(vm);
	if (v)
		count_spte_change(v, vm, args->as_id, args->gfn, args->level, args->old_spte, args->new_spte);
	return TDP_TP_PASS;
}
#endif

TRACEPOINT_PROBE(kvmmmu, kvm_mmu_get_page)
{
	if (!args->created)
		return TDP_TP_PASS;
	u32 vm = vm_of_current();
	if (filtered(vm))
		return TDP_TP_PASS;
	struct vm_stats *v = stats_of(vm);
	u32 level = role_level(args->role);
	if (v && level < STATS_LEVELS)
		v->pt_alloc[level]++;
	return TDP_TP_PASS;
}

TRACEPOINT_PROBE(kvmmmu, kvm_mmu_prepare_zap_page)
{
	u32 vm = vm_of_current();
	if (filtered(vm))
		return TDP_TP_PASS;
	struct vm_stats *v = stats_of(vm);
	u32 level = role_level(args->role);
	if (v && level < STATS_LEVELS)
		v->pt_free[level]++;
	return TDP_TP_PASS;
}

TRACEPOINT_PROBE(kvmmmu, kvm_mmu_zap_all_fast)
{
	u32 vm = vm_of_current();
	if (filtered(vm))
		return TDP_TP_PASS;
	struct vm_stats *v = stats_of(vm);
	if (v)
		v->zap_all_fast++;
	return TDP_TP_PASS;
}

#if TDP_WITH_SPANS
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
#endif /* TDP_WITH_SPANS */
