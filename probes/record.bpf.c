/* record.bpf.c - what `tdptrace record` runs in the kernel (BCC).
 *
 * Tracepoints (kvmmmu:*) stream page-table allocations/frees and fast zaps, and feed in-kernel counters:
 * zaps per level (leaf/non-leaf) and retained non-leaf page tables per level (docs/metrics.md). SPTE changes are
 * streamed only with --sptes. With kprobes, every call of a zap function is one span kept in per-task state:
 * yield points inside it close gaps, and its return emits ONE tdp_span record carrying duration, yields,
 * max gap, zaps by level and the retained count - a span that zaps millions of SPTEs costs one record.
 * The definitions are the ones tdptrace/capture/spans.py and tdptrace/capture/pagetables.py use for imported traces.
 *
 * Settings (validated integers from tdptrace/live/bcc_recorder.py, passed as -D):
 *   TDP_PERF_BUFFER      1 = perf buffer (kernels older than 5.8), 0 = ring buffer
 *   TDP_EVENT_PAGES, TDP_SPAN_PAGES   ring buffer pages for tdp_event / tdp_span records (powers of two)
 *   TDP_WAKEUP           0 = no wakeup per record (user space drains on a timer), 1 = kernel decides
 *   TDP_BENCH            1 = only the stand-in high-rate tracepoint (raw_syscalls:sys_enter) for bench/
 *   TDP_SELFTEST         1 = the test process replays trace events into the aggregation (no kvmmmu probes)
 *   TDP_PRESENT_BIT      1: SPTE present = bit 11 (5.13+); 0: legacy rule (non-zero, not MMIO, not removed)
 *   TDP_WITH_SPTES       stream every kvm_tdp_mmu_spte_changed
 *   TDP_WITH_SPANS       compile the kprobe programs (span/yield state)
 *   TDP_YIELD_RETURN     kretprobes on the yield points are attached (else the entry closes the yield)
 *   TDP_FILTER_PIDS      keep only the VMs of the tgids in map `pids`
 *   TDP_STACKS, TDP_STACK_MIN_GAP_NS   keep the entry stack of spans whose max gap reaches the threshold
 *   TDP_MAX_TABLES       capacity of the page-table map
 *   TDP_TP_SPTE_CHANGED, TDP_TP_GET_PAGE, TDP_TP_PREPARE_ZAP, TDP_TP_ZAP_ALL_FAST, TDP_TP_SPLIT
 *                        1 where the running kernel has that tracepoint
 */
#include <uapi/linux/ptrace.h>
/* ---- transport: BPF ring buffer (5.8+) or perf buffer, drops counted per CPU ----
 * A failed reservation (or perf_submit) increments drops[DROPS_*] on this CPU: drops are never silent.
 * (Map calls must stay in this file: BCC rewrites map methods in the main source only.)
 */
#include "tdptrace.h"

#define DROPS_EVENTS 0
#define DROPS_SPANS 1
BPF_PERCPU_ARRAY(drops, u64, 2);

static __always_inline void count_drop(int which)
{
	u64 *n = drops.lookup(&which);
	if (n)
		(*n)++;
}

#if TDP_WAKEUP
#define TDP_SUBMIT_FLAGS 0
#else
#define TDP_SUBMIT_FLAGS BPF_RB_NO_WAKEUP
#endif

#if TDP_PERF_BUFFER
BPF_PERF_OUTPUT(events);
BPF_PERF_OUTPUT(spans);
BPF_PERCPU_ARRAY(event_scratch, struct tdp_event, 1);
BPF_PERCPU_ARRAY(span_scratch, struct tdp_span, 1);

static __always_inline struct tdp_event *event_reserve(void)
{
	int zero = 0;
	return event_scratch.lookup(&zero);
}

static __always_inline void event_submit(void *ctx, struct tdp_event *e)
{
	if (events.perf_submit(ctx, e, sizeof(*e)) < 0)
		count_drop(DROPS_EVENTS);
}

static __always_inline struct tdp_span *span_reserve(void)
{
	int zero = 0;
	return span_scratch.lookup(&zero);
}

static __always_inline void span_submit(void *ctx, struct tdp_span *s)
{
	if (spans.perf_submit(ctx, s, sizeof(*s)) < 0)
		count_drop(DROPS_SPANS);
}
#else
BPF_RINGBUF_OUTPUT(events, TDP_EVENT_PAGES);
BPF_RINGBUF_OUTPUT(spans, TDP_SPAN_PAGES);

static __always_inline struct tdp_event *event_reserve(void)
{
	struct tdp_event *e = events.ringbuf_reserve(sizeof(struct tdp_event));
	if (!e)
		count_drop(DROPS_EVENTS);
	return e;
}

static __always_inline void event_submit(void *ctx, struct tdp_event *e)
{
	events.ringbuf_submit(e, TDP_SUBMIT_FLAGS);
}

static __always_inline struct tdp_span *span_reserve(void)
{
	struct tdp_span *s = spans.ringbuf_reserve(sizeof(struct tdp_span));
	if (!s)
		count_drop(DROPS_SPANS);
	return s;
}

static __always_inline void span_submit(void *ctx, struct tdp_span *s)
{
	spans.ringbuf_submit(s, TDP_SUBMIT_FLAGS);
}
#endif

/* The common head of every streamed event. */
static __always_inline void event_head(struct tdp_event *e, u8 kind)
{
	u64 id = bpf_get_current_pid_tgid();

	e->ts = bpf_ktime_get_ns();
	e->tid = (u32)id;
	e->pid = id >> 32;
	e->cpu = bpf_get_smp_processor_id();
	e->kind = kind;
	e->level = 0;
	e->as_id = 0;
	e->flags = 0;
	e->ret = 0;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	e->u.spte.gfn = 0;
	e->u.spte.old_spte = 0;
	e->u.spte.new_spte = 0;
}

#define TDP_MAX_DEPTH 4    /* nesting of zap functions on one task (observed: 2) */
#define TDP_MAX_FUNCS 16   /* span probe programs below; keep in sync with attach.py MAX_SPAN_FUNCS */

#define SPTE_PRESENT_BIT (1ULL << 11)
#define PT_PAGE_SIZE_BIT (1ULL << 7)
#define LEGACY_SPECIAL_MASK (3ULL << 52)
#define LEGACY_REMOVED_SPTE (1ULL << 59)
#define GFN_BITS 52

/* Settings the recorder reads back, and errors it reports. */
#define STAT_SPAN_ID 0        /* next span id */
#define STAT_DEPTH_OVERFLOW 1 /* spans deeper than TDP_MAX_DEPTH, not measured */
#define STAT_TABLES_FULL 2    /* page tables not tracked: map full */
#define STAT_MAX_LEVEL 3      /* highest SPTE level seen (5 = 5-level paging) */
#define STAT_UNMATCHED_RETURN 4
#define STAT_RETAINED_PEAK 5  /* most retained non-leaf tables at any one time */
#define STAT_COUNT 6
BPF_ARRAY(stats, s64, STAT_COUNT);

BPF_PERCPU_ARRAY(zap_totals, u64, TDP_ZAP_COUNTERS);
BPF_ARRAY(retained, s64, TDP_LEVELS + 1); /* index = level of the table's entries */
BPF_HASH(pids, u32, u8, 1024);

struct table_state {
	s64 count;   /* present entries (clamped at 0 for tables populated before the recording) */
	u8 linked;   /* the non-leaf SPTE one level up at the base gfn is present */
	u8 ever;     /* had present entries since it was last linked */
	u8 pad[6];
};
BPF_HASH(tables, u64, struct table_state, TDP_MAX_TABLES);

static __always_inline void stat_add(int i, s64 v)
{
	s64 *p = stats.lookup(&i);
	if (p)
		__sync_fetch_and_add(p, v);
}

static __always_inline bool spte_present(u64 spte)
{
#if TDP_PRESENT_BIT
	return (spte & SPTE_PRESENT_BIT) != 0;
#else
	return spte != 0 && (spte & LEGACY_SPECIAL_MASK) != LEGACY_SPECIAL_MASK && spte != LEGACY_REMOVED_SPTE;
#endif
}

static __always_inline bool spte_leaf(u64 spte, u32 level)
{
	return level == 1 || (spte & PT_PAGE_SIZE_BIT) != 0;
}

static __always_inline u64 table_key(u32 as_id, u32 level, u64 gfn)
{
	u64 shift = 9 * (u64)(level & 7);
	u64 base = shift >= 64 ? 0 : gfn & ~((1ULL << shift) - 1);
	return ((u64)as_id << (GFN_BITS + 3)) | ((u64)level << GFN_BITS) | base;
}

static __always_inline bool eligible(u32 tlevel)
{
	int i = STAT_MAX_LEVEL;
	s64 *maxl = stats.lookup(&i);
	s64 root = (maxl && *maxl > 4) ? *maxl : 4;
	return tlevel >= 1 && (s64)tlevel < root;
}

static __always_inline bool is_retained(struct table_state *t, u32 tlevel)
{
	return t->linked && t->ever && t->count == 0 && eligible(tlevel);
}

static __always_inline s64 retained_total(void)
{
	s64 sum = 0;
#pragma unroll
	for (int i = 1; i <= TDP_LEVELS; i++) {
		int k = i;
		s64 *r = retained.lookup(&k);
		if (r)
			sum += *r;
	}
	return sum;
}

static __always_inline void retained_move(u32 tlevel, bool before, bool after)
{
	if (before == after)
		return;
	int i = tlevel;
	s64 *r = retained.lookup(&i);
	if (r)
		__sync_fetch_and_add(r, after ? 1 : -1);
	if (after) {
		int k = STAT_RETAINED_PEAK;
		s64 *peak = stats.lookup(&k);
		s64 total = retained_total();
		if (peak && total > *peak)
			*peak = total;
	}
}

static __always_inline struct table_state *table_get(u64 key, u8 linked)
{
	struct table_state *t = tables.lookup(&key);
	if (t)
		return t;
	struct table_state init = {.count = 0, .linked = linked, .ever = 0};
	if (tables.insert(&key, &init) != 0) {
		t = tables.lookup(&key);  /* lost a race: someone else created it */
		if (!t)
			stat_add(STAT_TABLES_FULL, 1);
		return t;
	}
	return tables.lookup(&key);
}

/* An entry of table (tlevel, gfn) became present (d = 1) or not present (d = -1). */
static __always_inline void table_count(u32 as_id, u32 tlevel, u64 gfn, int d)
{
	u64 key = table_key(as_id, tlevel, gfn);
	struct table_state *t = table_get(key, 1);
	if (!t)
		return;
	bool before = is_retained(t, tlevel);
	s64 old = __sync_fetch_and_add(&t->count, d);
	if (d < 0 && old <= 0)  /* populated before the recording: assume the fewest entries consistent */
		__sync_fetch_and_add(&t->count, 1);
	t->ever = 1;
	bool after = is_retained(t, tlevel);
	retained_move(tlevel, before, after);
	if (!t->linked && t->count == 0)
		tables.delete(&key);
}

/* The non-leaf SPTE linking table (tlevel, gfn) became present (1) or not (0). */
static __always_inline void table_link(u32 as_id, u32 tlevel, u64 gfn, u8 linked)
{
	u64 key = table_key(as_id, tlevel, gfn);
	struct table_state *t = table_get(key, linked);
	if (!t)
		return;
	bool before = is_retained(t, tlevel);
	t->linked = linked;
	if (linked)
		t->ever = t->count > 0;
	bool after = is_retained(t, tlevel);
	retained_move(tlevel, before, after);
	if (!linked && t->count == 0)
		tables.delete(&key);
}

/* ---- per-task span state (kprobes) ---- */

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
BPF_HASH(vm_owner, u64, u32, 1024);
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

/* Is the current task one the user asked for (-p), or inside a span on such a VM? */
static __always_inline bool selected(u32 tgid, struct task_state *st)
{
#if TDP_FILTER_PIDS
	if (pids.lookup(&tgid))
		return true;
	if (st && st->depth > 0 && st->f[0].selected)
		return true;
	return false;
#else
	return true;
#endif
}

/* One SPTE change (kvm_tdp_mmu_spte_changed) by task `id` (tgid << 32 | tid): zap counters and tables. */
static __always_inline int spte_change(void *ctx, u64 id, u32 as_id, u64 gfn, u32 level, u64 old, u64 new)
{
	u32 tid = (u32)id;
	struct task_state *st = task_lookup(tid);
	if (!selected(id >> 32, st))
		return 0;
	if (level < 1 || level > TDP_LEVELS)
		return 0;
	bool po = spte_present(old), pn = spte_present(new);
	bool old_leaf = po && spte_leaf(old, level), new_leaf = pn && spte_leaf(new, level);

	int ml = STAT_MAX_LEVEL;
	s64 *maxl = stats.lookup(&ml);
	if (maxl && (s64)level > *maxl)
		*maxl = level;

	if (po && !pn) {
		int idx = 2 * (level - 1) + (old_leaf ? 0 : 1);
		u64 *tot = zap_totals.lookup(&idx);
		if (tot)
			(*tot)++;
		if (st && st->depth > 0 && idx >= 0 && idx < TDP_ZAP_COUNTERS)
			st->zaps[idx]++;
	}
	if (po != pn)
		table_count(as_id, level, gfn, pn ? 1 : -1);
	bool nl_old = po && !old_leaf, nl_new = pn && !new_leaf;
	if (nl_old != nl_new && level >= 2)
		table_link(as_id, level - 1, gfn, nl_new);

#if TDP_WITH_SPTES
	struct tdp_event *e = event_reserve();
	if (!e)
		return 0;
	event_head(e, TDP_KIND_SPTE);
	e->level = level;
	e->as_id = as_id;
	e->u.spte.gfn = gfn;
	e->u.spte.old_spte = old;
	e->u.spte.new_spte = new;
	event_submit(ctx, e);
#endif
	return 0;
}

#if TDP_TP_SPTE_CHANGED
TRACEPOINT_PROBE(kvmmmu, kvm_tdp_mmu_spte_changed)
{
	return spte_change(args, bpf_get_current_pid_tgid(), args->as_id, args->gfn, args->level, args->old_spte,
			   args->new_spte);
}
#endif

static __always_inline int emit_page(void *ctx, u8 kind, u64 gfn, u32 role, u32 root_count, u32 gen,
				     bool unsync, bool created)
{
	u64 id = bpf_get_current_pid_tgid();
	if (!selected(id >> 32, task_lookup((u32)id)))
		return 0;
	struct tdp_event *e = event_reserve();
	if (!e)
		return 0;
	event_head(e, kind);
	e->level = role & 0xf;
	e->flags = (created ? TDP_F_CREATED : 0) | (unsync ? TDP_F_UNSYNC : 0);
	e->u.page.gfn = gfn;
	e->u.page.role = role;
	e->u.page.root_count = root_count;
	e->u.page.mmu_valid_gen = gen;
	event_submit(ctx, e);
	return 0;
}

#if TDP_TP_GET_PAGE
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_get_page)
{
	return emit_page(args, TDP_KIND_GET_PAGE, args->gfn, args->role, args->root_count, args->mmu_valid_gen,
			 args->unsync, args->created);
}
#endif

#if TDP_TP_PREPARE_ZAP
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_prepare_zap_page)
{
	return emit_page(args, TDP_KIND_PREPARE_ZAP, args->gfn, args->role, args->root_count, args->mmu_valid_gen,
			 args->unsync, false);
}
#endif

#if TDP_TP_ZAP_ALL_FAST
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_zap_all_fast)
{
	u64 id = bpf_get_current_pid_tgid();
	if (!selected(id >> 32, task_lookup((u32)id)))
		return 0;
	struct tdp_event *e = event_reserve();
	if (!e)
		return 0;
	event_head(e, TDP_KIND_ZAP_ALL_FAST);
	e->u.page.mmu_valid_gen = args->mmu_valid_gen;
	e->u.page.used_pages = args->mmu_used_pages;
	event_submit(args, e);
	return 0;
}
#endif

#if TDP_TP_SPLIT
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_split_huge_page)
{
	u64 id = bpf_get_current_pid_tgid();
	if (!selected(id >> 32, task_lookup((u32)id)))
		return 0;
	struct tdp_event *e = event_reserve();
	if (!e)
		return 0;
	event_head(e, TDP_KIND_SPLIT);
	e->level = args->level;
	e->ret = args->errno;
	e->u.spte.gfn = args->gfn;
	e->u.spte.old_spte = args->spte;
	event_submit(args, e);
	return 0;
}
#endif

#if TDP_WITH_SPANS
/* The six argument registers, read once at fixed offsets (the verifier refuses a computed ctx offset). */
struct regs6 {
	u64 r[6];
};

static __always_inline void read_args(struct pt_regs *ctx, struct regs6 *a)
{
	a->r[0] = PT_REGS_PARM1(ctx);
	a->r[1] = PT_REGS_PARM2(ctx);
	a->r[2] = PT_REGS_PARM3(ctx);
	a->r[3] = PT_REGS_PARM4(ctx);
	a->r[4] = PT_REGS_PARM5(ctx);
	a->r[5] = PT_REGS_PARM6(ctx);
}

static __always_inline u64 reg_arg(struct regs6 *a, s8 i)
{
	if (i < 0 || i > 5)
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
#if TDP_FILTER_PIDS
	if (pids.lookup(&tgid)) {
		if (kvm)
			vm_owner.update(&kvm, &tgid);
	} else {
		u32 *owner = kvm ? vm_owner.lookup(&kvm) : 0;
		sel = owner != 0;
	}
#else
	/* The VM's owner: the VMM's own calls (memslot ioctls) decide; otherwise the first task seen. */
	if (kvm && a->vmm_call)
		vm_owner.update(&kvm, &tgid);
	else if (kvm)
		vm_owner.insert(&kvm, &tgid);
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
		stat_add(STAT_DEPTH_OVERFLOW, 1);
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
	int sid = STAT_SPAN_ID;
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
		stat_add(STAT_UNMATCHED_RETURN, 1);
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

static __always_inline int on_span_entry(struct pt_regs *ctx, u32 func_id)
{
	struct regs6 r;
	read_args(ctx, &r);
	return span_begin(ctx, bpf_get_current_pid_tgid(), bpf_ktime_get_ns(), func_id, &r);
}

static __always_inline int on_span_return(struct pt_regs *ctx, u32 func_id)
{
	return span_end(ctx, bpf_get_current_pid_tgid(), bpf_ktime_get_ns(), func_id, PT_REGS_RC(ctx));
}

#define SPAN_PROBES(i) \
	int span_entry_##i(struct pt_regs *ctx) { return on_span_entry(ctx, i); } \
	int span_return_##i(struct pt_regs *ctx) { return on_span_return(ctx, i); }
SPAN_PROBES(0) SPAN_PROBES(1) SPAN_PROBES(2) SPAN_PROBES(3)
SPAN_PROBES(4) SPAN_PROBES(5) SPAN_PROBES(6) SPAN_PROBES(7)
SPAN_PROBES(8) SPAN_PROBES(9) SPAN_PROBES(10) SPAN_PROBES(11)
SPAN_PROBES(12) SPAN_PROBES(13) SPAN_PROBES(14) SPAN_PROBES(15)

/* A yield point: for every enclosing span of the task, the gap since its last resume ends here. */
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

/* The yield point's flavour rides in tdp_event.flags (records.py YIELD_FUNCTION). */
#define YIELD_READ 0x10
#define YIELD_WRITE 0x20
#define YIELD_SPIN 0x40
static __always_inline int on_yield_entry(struct pt_regs *ctx, u32 which)
{
	return yield_begin(ctx, bpf_get_current_pid_tgid(), bpf_ktime_get_ns(), PT_REGS_PARM1(ctx), which);
}

int yield_entry_read(struct pt_regs *ctx) { return on_yield_entry(ctx, YIELD_READ); }
int yield_entry_write(struct pt_regs *ctx) { return on_yield_entry(ctx, YIELD_WRITE); }
int yield_entry_spin(struct pt_regs *ctx) { return on_yield_entry(ctx, YIELD_SPIN); }
int yield_return(struct pt_regs *ctx) { return yield_end(ctx, bpf_get_current_pid_tgid(), bpf_ktime_get_ns(),
							 PT_REGS_RC(ctx)); }
#if TDP_SELFTEST
/* tests/live/test_live_aggregation.py: replay a recorded trace through the functions above. The test process
 * calls syscall(SYS_getpid, op, a1, a2, a3, a4, TDP_SELFTEST_MAGIC); nothing else reaches this path. */
#define SELFTEST_SPTE 1       /* a1 gfn, a2 old, a3 new, a4 level | as_id << 8 | tid << 16 */
#define SELFTEST_SPAN_ENTRY 2 /* a1 tid, a2 ts, a3 func_id, a4 zap_level */
#define SELFTEST_SPAN_RETURN 3 /* a1 tid, a2 ts, a3 func_id, a4 ret */
#define SELFTEST_YIELD_ENTRY 4 /* a1 tid, a2 ts, a3 lock, a4 flavour */
#define SELFTEST_YIELD_RETURN 5 /* a1 tid, a2 ts, a3 ret */
TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
	if ((bpf_get_current_pid_tgid() >> 32) != TDP_SELFTEST_TGID || args->id != 39 /* getpid */)
		return 0;
	if ((u64)args->args[5] != TDP_SELFTEST_MAGIC)
		return 0;
	u64 op = args->args[0], a1 = args->args[1], a2 = args->args[2], a3 = args->args[3], a4 = args->args[4];
	u64 tgid = (u64)TDP_SELFTEST_TGID << 32;
	if (op == SELFTEST_SPTE)
		return spte_change(args, tgid | (a4 >> 16), (a4 >> 8) & 0xff, a1, a4 & 0xff, a2, a3);
	if (op == SELFTEST_SPAN_ENTRY) {
		struct regs6 r = {};
		r.r[3] = a4; /* zap_level, for a func_args entry that says register 3 */
		return span_begin(args, tgid | a1, a2, a3, &r);
	}
	if (op == SELFTEST_SPAN_RETURN)
		return span_end(args, tgid | a1, a2, a3, a4);
	if (op == SELFTEST_YIELD_ENTRY)
		return yield_begin(args, tgid | a1, a2, a3, a4);
	if (op == SELFTEST_YIELD_RETURN)
		return yield_end(args, tgid | a1, a2, a3);
	return 0;
}
#endif
#endif /* TDP_WITH_SPANS */

#if TDP_BENCH
/* bench/transport_bench.py: a stand-in high-rate tracepoint user space can fire, through the same transport. */
TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
	if ((bpf_get_current_pid_tgid() >> 32) != TDP_BENCH_TGID)
		return 0;
	struct tdp_event *e = event_reserve();
	if (!e)
		return 0;
	event_head(e, TDP_KIND_SYSCALL);
	e->u.spte.gfn = args->id;
	event_submit(args, e);
	return 0;
}
#endif
