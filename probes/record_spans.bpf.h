/* record_spans.bpf.h - per-task span state: every call of a probed zap function is one span.
 *
 * Entry pushes a frame on the task's state (nesting up to TDP_MAX_DEPTH), yield points inside it close gaps
 * (max gap, time away, lock drops), and the return emits ONE tdp_span record with duration, yields, max gap,
 * zaps by level and the retained count: a span that zaps millions of SPTEs costs one record. Also here: each
 * VM's owner and the -p filter. The owner is the process whose own calls (memslot ioctls, VM creation: the
 * vmm_call_N kprobes) name the VM; until such a call is seen, the first task seen zapping it. -p keeps the
 * spans of the selected processes' VMs whoever runs them (kworkers, kswapd, another process's direct reclaim)
 * and nothing of other VMs, even when a selected process zaps them.
 *
 * Settings: TDP_WITH_SPANS (compile the span state; kprobes only), TDP_YIELD_RETURN (kretprobes on the yield
 * points are attached, else the entry closes the yield), TDP_FILTER_PIDS (keep only the VMs of the tgids in
 * map `pids`), TDP_STACKS and TDP_STACK_MIN_GAP_NS (keep the entry stack of spans whose max gap reaches the
 * threshold). Spliced into the program's text by tdptrace/live/programs.py (map methods).
 */
#ifndef TDPTRACE_RECORD_SPANS_BPF_H
#define TDPTRACE_RECORD_SPANS_BPF_H

#if !defined(TDP_WITH_SPANS) || !defined(TDP_YIELD_RETURN) || !defined(TDP_FILTER_PIDS) || \
	!defined(TDP_STACKS) || !defined(TDP_STACK_MIN_GAP_NS)
#error "span settings missing: compile the probes through tdptrace/live/programs.py"
#endif

#define TDP_MAX_DEPTH 4    /* nesting of zap functions on one task (observed: 2); a power of two */

BPF_HASH(pids, u32, u8, TDP_MAX_PIDS);

struct frame {
	u64 start;
	u64 last_resume;  /* span start, or the last yield's return (its entry without a return probe) */
	u64 max_gap;
	u64 away;
	u64 kvm;
	u64 root;
	u64 gfn_start;
	u64 gfn_end;
	s64 span_id;
	u64 zaps_at_entry[TDP_ZAP_COUNTERS];
	u32 yields;
	u32 drops;
	s32 stack_id;
	u8 func_id;
	s8 zap_level;
	s8 shared;
	s8 can_yield;
	s8 flush;
	u8 selected;
	u8 pad[6];
};

struct task_state {
	u64 zaps[TDP_ZAP_COUNTERS];  /* cumulative zaps by this task while inside a span */
	u64 yield_entry;
	u64 yield_lock;
	u32 depth;
	u32 yield_flags;
	struct frame f[TDP_MAX_DEPTH];
};

#if TDP_WITH_SPANS
BPF_HASH(tasks, u32, struct task_state, 4096);
BPF_PERCPU_ARRAY(task_zero, struct task_state, 1);  /* never written: the initial value of a task */
BPF_ARRAY(func_args, struct tdp_func_args, TDP_MAX_FUNCS);
BPF_HASH(vm_owner, u64, struct tdp_vm_owner, 1024);
BPF_ARRAY(vmm_args, struct tdp_func_args, TDP_MAX_VMM_CALLS);
#if TDP_STACKS
BPF_STACK_TRACE(stack_traces, 4096);
#endif
#endif

static __always_inline struct task_state *task_lookup(u32 tid)
{
#if TDP_WITH_SPANS
	return tasks.lookup(&tid);
#else
	return 0;
#endif
}

/* Does the current event belong to what the user asked for (-p)? Inside a span: whether the span's VM is
 * selected; outside: whether the task is one of the selected processes. */
static __always_inline bool selected(u32 tgid, struct task_state *st)
{
#if TDP_FILTER_PIDS
	if (st && st->depth > 0)
		return st->f[0].selected;
	return pids.lookup(&tgid) != 0;
#else
	return true;
#endif
}

#if TDP_WITH_SPANS
/* The argument registers of a span function, read once at fixed offsets (the verifier refuses a computed
 * ctx offset). */
struct regs6 {
	u64 r[TDP_ARG_REGS];
};

/* The six argument registers of a kprobe's context, for span_begin and vmm_call. */
static __always_inline void regs6_read(struct pt_regs *ctx, struct regs6 *r)
{
	r->r[0] = PT_REGS_PARM1(ctx);
	r->r[1] = PT_REGS_PARM2(ctx);
	r->r[2] = PT_REGS_PARM3(ctx);
	r->r[3] = PT_REGS_PARM4(ctx);
	r->r[4] = PT_REGS_PARM5(ctx);
	r->r[5] = PT_REGS_PARM6(ctx);
}

static __always_inline u64 reg_arg(struct regs6 *a, s8 i)
{
	if (i < 0 || i >= TDP_ARG_REGS)
		return 0;
	return a->r[i & 7];
}

static __always_inline s8 small_arg(struct regs6 *a, s8 i)
{
	return i < 0 ? -1 : (s8)reg_arg(a, i);
}

static __always_inline void emit_yield(void *ctx, struct task_state *st, u64 ret_ts, s16 ret, u8 returned)
{
	u32 d = st->depth;
	if (d == 0 || d > TDP_MAX_DEPTH)
		return;
	struct tdp_event *e = event_reserve();
	if (!e)
		return;
	event_head(e, TDP_KIND_YIELD);
	e->ts = st->yield_entry;
	e->flags = st->yield_flags | (returned ? TDP_F_RETURNED : 0);
	e->ret = ret;
	e->u.yield.lock = st->yield_lock;
	e->u.yield.ret_ts = ret_ts;
	e->u.yield.span_id = st->f[(d - 1) & (TDP_MAX_DEPTH - 1)].span_id;
	event_submit(ctx, e);
}

/* Entry of zap function func_id by task `id` at `now`, with its argument registers r. */
static __always_inline int span_begin(void *ctx, u64 id, u64 now, u32 func_id, struct regs6 *rp)
{
	u32 tid = (u32)id, tgid = id >> 32;
	struct tdp_func_args *a = func_args.lookup(&func_id);
	if (!a)
		return 0;
	struct regs6 r = *rp;
	u64 kvm = reg_arg(&r, a->kvm);
	u8 sel = 1;
	/* The VM's owner: a VMM call decided it (vmm_call), or the first task seen zapping it does for now. */
	u32 owner = tgid;
	if (kvm) {
		struct tdp_vm_owner first = {.tgid = tgid, .how = TDP_OWNER_FIRST_ZAP};
		struct tdp_vm_owner *o = vm_owner.lookup(&kvm);
		if (o)
			owner = o->tgid;
		else
			vm_owner.insert(&kvm, &first);
	}
#if TDP_FILTER_PIDS
	sel = pids.lookup(&owner) != 0;
#endif
	struct task_state *st = tasks.lookup(&tid);
	if (!st) {
		if (!sel)
			return 0;
		int zero = 0;
		struct task_state *z = task_zero.lookup(&zero);
		if (!z)
			return 0;
		tasks.update(&tid, z);
		st = tasks.lookup(&tid);
		if (!st)
			return 0;
	}
	u32 d = st->depth;
	if (d >= TDP_MAX_DEPTH) {
		st->depth = d + 1;
		stat_add(TDP_STAT_DEPTH_OVERFLOW, 1);
		return 0;
	}
	struct frame *f = &st->f[d & (TDP_MAX_DEPTH - 1)];
	f->start = now;
	f->last_resume = now;
	f->max_gap = 0;
	f->away = 0;
	f->kvm = kvm;
	f->root = a->root >= 0 ? reg_arg(&r, a->root) : 0;
	f->gfn_start = a->start >= 0 ? reg_arg(&r, a->start) : 0;
	f->gfn_end = a->end >= 0 ? reg_arg(&r, a->end) : 0;
	f->zap_level = small_arg(&r, a->zap_level);
	f->shared = small_arg(&r, a->shared);
	f->can_yield = small_arg(&r, a->can_yield);
	f->flush = small_arg(&r, a->flush);
	f->func_id = func_id;
	f->yields = 0;
	f->drops = 0;
	f->selected = d > 0 ? st->f[0].selected | sel : sel;
	int sid = TDP_STAT_SPAN_ID;
	s64 *next = stats.lookup(&sid);
	f->span_id = next ? __sync_fetch_and_add(next, 1) : -1;
#pragma unroll
	for (int i = 0; i < TDP_ZAP_COUNTERS; i++)
		f->zaps_at_entry[i] = st->zaps[i];
#if TDP_STACKS
	f->stack_id = stack_traces.get_stackid(ctx, 0);
#else
	f->stack_id = -1;
#endif
	st->depth = d + 1;
	return 0;
}

/* A VMM call (vmm_args[idx]: memslot ioctl, VM creation) by task `id`: its process owns the VM for good. */
static __always_inline int vmm_call(u64 id, u32 idx, struct regs6 *rp)
{
	struct tdp_func_args *a = vmm_args.lookup(&idx);
	if (!a)
		return 0;
	struct regs6 r = *rp;
	u64 kvm = reg_arg(&r, a->kvm);
	if (!kvm)
		return 0;
	struct tdp_vm_owner o = {.tgid = id >> 32, .how = TDP_OWNER_VMM_CALL};
	vm_owner.update(&kvm, &o);
	return 0;
}

/* Return of zap function func_id (value ret) on task `id` at `now`: emit the span record. */
static __always_inline int span_end(void *ctx, u64 id, u64 now, u32 func_id, s64 ret)
{
	u32 tid = (u32)id;
	struct task_state *st = tasks.lookup(&tid);
	if (!st || st->depth == 0)
		return 0;
	if (st->yield_entry) {  /* a yield point whose return was not seen: it closed at its entry */
		emit_yield(ctx, st, 0, 0, 0);
		st->yield_entry = 0;
	}
	u32 d = st->depth - 1;
	st->depth = d;
	if (d >= TDP_MAX_DEPTH)
		return 0;
	struct frame *f = &st->f[d & (TDP_MAX_DEPTH - 1)];
	if (f->func_id != func_id)
		stat_add(TDP_STAT_UNMATCHED_RETURN, 1);
	u8 sel = f->selected;
	if (sel) {
		struct tdp_span *s = span_reserve();
		if (s) {
			u64 tail = now - f->last_resume;
			s->start_ts = f->start;
			s->end_ts = now;
			s->span_id = f->span_id;
			s->parent_id = d > 0 ? st->f[(d - 1) & (TDP_MAX_DEPTH - 1)].span_id : -1;
			s->kvm = f->kvm;
			s->root = f->root;
			s->gfn_start = f->gfn_start;
			s->gfn_end = f->gfn_end;
			s->ret = ret;
			s->away_ns = f->away;
			s->max_gap_ns = tail > f->max_gap ? tail : f->max_gap;
			s->retained_after = retained_total();
#pragma unroll
			for (int i = 0; i < TDP_ZAP_COUNTERS; i++)
				s->zaps[i] = st->zaps[i] - f->zaps_at_entry[i];
			s->tid = tid;
			s->pid = id >> 32;
			s->yields = f->yields;
			s->lock_drops = f->drops;
#if TDP_STACKS
			s->stack_id = s->max_gap_ns >= TDP_STACK_MIN_GAP_NS ? f->stack_id : -1;
#else
			s->stack_id = -1;
#endif
			s->cpu = bpf_get_smp_processor_id();
			s->func_id = f->func_id;
			s->depth = d;
			s->zap_level = f->zap_level;
			s->shared = f->shared;
			s->can_yield = f->can_yield;
			s->flush = f->flush;
			bpf_get_current_comm(&s->comm, sizeof(s->comm));
			span_submit(ctx, s);
		}
	}
	if (d == 0)
		tasks.delete(&tid);
	return 0;
}

/* A yield point (flavour `which`, a TDP_F_YIELD_* bit): for every enclosing span of the task, the gap since
 * its last resume ends here. */
static __always_inline int yield_begin(void *ctx, u64 id, u64 now, u64 lock, u32 which)
{
	u32 tid = (u32)id;
	struct task_state *st = tasks.lookup(&tid);
	if (!st || st->depth == 0)
		return 0;
#pragma unroll
	for (int i = 0; i < TDP_MAX_DEPTH; i++) {
		if (i < st->depth) {
			struct frame *f = &st->f[i];
			u64 gap = now - f->last_resume;
			if (gap > f->max_gap)
				f->max_gap = gap;
			f->yields++;
			f->last_resume = now;
		}
	}
	if (st->yield_entry)  /* the previous yield point's return was not seen */
		emit_yield(ctx, st, 0, 0, 0);
	st->yield_entry = now;
	st->yield_lock = lock;
	st->yield_flags = which;
#if !TDP_YIELD_RETURN
	emit_yield(ctx, st, 0, 0, 0);
	st->yield_entry = 0;  /* no return will come; emitted already */
#endif
	return 0;
}

static __always_inline int yield_end(void *ctx, u64 id, u64 now, int ret)
{
	u32 tid = (u32)id;
	struct task_state *st = tasks.lookup(&tid);
	if (!st || st->depth == 0 || st->yield_entry == 0)
		return 0;
	u64 away = now - st->yield_entry;
#pragma unroll
	for (int i = 0; i < TDP_MAX_DEPTH; i++) {
		if (i < st->depth) {
			struct frame *f = &st->f[i];
			f->last_resume = now;
			f->away += away;
			if (ret == 1)
				f->drops++;
		}
	}
	emit_yield(ctx, st, now, ret, 1);
	st->yield_entry = 0;
	return 0;
}
#endif /* TDP_WITH_SPANS */

#endif /* TDPTRACE_RECORD_SPANS_BPF_H */
