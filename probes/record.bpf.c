/* record.bpf.c - what `tdptrace record` attaches in the kernel (BCC).
 *
 * Tracepoints (kvmmmu:*) stream page-table allocations/frees and fast zaps, and feed in-kernel counters:
 * zaps per level (leaf/non-leaf) and retained non-leaf page tables per level (docs/metrics.md). SPTE changes
 * are streamed only with --sptes. With kprobes, every call of a zap function is one span kept in per-task
 * state, and its return emits one tdp_span record (record_spans.bpf.h).
 *
 * This file holds the attach points; what they share with record_selftest.bpf.c is in the headers:
 *   record.h                 records, flags and counters shared with user space (tdptrace/live/records.py)
 *   spte.bpf.h               SPTE presence and leaf rules by kernel era
 *   record_transport.bpf.h   ring buffer / perf buffer, drops, the stats counters
 *   record_tables.bpf.h      zaps by level, retained page tables
 *   record_spans.bpf.h       per-task span and yield state, the -p filter
 *   record_handlers.bpf.h    what an SPTE change and a page-table event do
 *
 * Settings: validated integers from tdptrace/live/bcc_recorder.py program_defines(), passed as -D (each header
 * lists its own); here TDP_TP_SPTE_CHANGED, TDP_TP_GET_PAGE, TDP_TP_PREPARE_ZAP, TDP_TP_ZAP_ALL_FAST,
 * TDP_TP_SPLIT: 1 where the running kernel has that tracepoint; TDP_SPAN_FUNCS and TDP_VMM_CALLS: how many
 * span_entry_N/span_return_N and vmm_call_N programs to compile (the plan's functions); TDP_RAW_SPTE: SPTE
 * changes through a raw tracepoint.
 */
#include <uapi/linux/ptrace.h>
#include "record.h"
#include "spte.bpf.h"
#include "tracepoint.bpf.h"
#include "record_transport.bpf.h"
#include "record_tables.bpf.h"
#include "record_spans.bpf.h"
#include "record_handlers.bpf.h"

#if !defined(TDP_TP_SPTE_CHANGED) || !defined(TDP_TP_GET_PAGE) || !defined(TDP_TP_PREPARE_ZAP) || \
	!defined(TDP_TP_ZAP_ALL_FAST) || !defined(TDP_TP_SPLIT) || !defined(TDP_SPAN_FUNCS) || !defined(TDP_VMM_CALLS) || \
	!defined(TDP_RAW_SPTE)
#error "tracepoint settings missing: compile the probes through tdptrace/live/programs.py"
#endif

/* The hot one (every SPTE a zap clears): as a raw tracepoint where the kernel has them with the ring
 * buffer (TDP_RAW_SPTE), so no trace record is assembled before the program runs; its arguments are
 * TP_PROTO(int as_id, gfn_t gfn, int level, u64 old_spte, u64 new_spte), the same since the event was added. */
#if TDP_RAW_SPTE && TDP_TP_SPTE_CHANGED
RAW_TRACEPOINT_PROBE(kvm_tdp_mmu_spte_changed)
{
	return spte_change(ctx, bpf_get_current_pid_tgid(), (u32)ctx->args[0], ctx->args[1], (u32)ctx->args[2],
			   ctx->args[3], ctx->args[4]);
}
#endif

#if TDP_TP_SPTE_CHANGED && !TDP_RAW_SPTE
TRACEPOINT_PROBE(kvmmmu, kvm_tdp_mmu_spte_changed)
{
	return (spte_change(args, bpf_get_current_pid_tgid(), args->as_id, args->gfn, args->level, args->old_spte,
			   args->new_spte), TDP_TP_PASS);
}
#endif

#if TDP_TP_GET_PAGE
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_get_page)
{
	return (emit_page(args, TDP_KIND_GET_PAGE, args->gfn, args->role, args->root_count, args->mmu_valid_gen,
			 args->unsync, args->created), TDP_TP_PASS);
}
#endif

#if TDP_TP_PREPARE_ZAP
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_prepare_zap_page)
{
	return (emit_page(args, TDP_KIND_PREPARE_ZAP, args->gfn, args->role, args->root_count, args->mmu_valid_gen,
			 args->unsync, false), TDP_TP_PASS);
}
#endif

#if TDP_TP_ZAP_ALL_FAST
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_zap_all_fast)
{
	u64 id = bpf_get_current_pid_tgid();
	if (!selected(id >> 32, task_lookup((u32)id)))
		return TDP_TP_PASS;
	struct tdp_event *e = event_reserve();
	if (!e)
		return TDP_TP_PASS;
	event_head(e, TDP_KIND_ZAP_ALL_FAST);
	e->u.page.mmu_valid_gen = args->mmu_valid_gen;
	e->u.page.used_pages = args->mmu_used_pages;
	event_submit(args, e);
	return TDP_TP_PASS;
}
#endif

#if TDP_TP_SPLIT
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_split_huge_page)
{
	u64 id = bpf_get_current_pid_tgid();
	if (!selected(id >> 32, task_lookup((u32)id)))
		return TDP_TP_PASS;
	struct tdp_event *e = event_reserve();
	if (!e)
		return TDP_TP_PASS;
	event_head(e, TDP_KIND_SPLIT);
	e->level = args->level;
	e->ret = args->errno;
	e->u.spte.gfn = args->gfn;
	e->u.spte.old_spte = args->spte;
	event_submit(args, e);
	return TDP_TP_PASS;
}
#endif

#if TDP_WITH_SPANS
/* Zap functions: span_entry_N / span_return_N for the function user space put at func_args[N]. */
static __always_inline int on_span_entry(struct pt_regs *ctx, u32 func_id)
{
	struct regs6 r;
	regs6_read(ctx, &r);
	return span_begin(ctx, bpf_get_current_pid_tgid(), bpf_ktime_get_ns(), func_id, &r);
}

static __always_inline int on_span_return(struct pt_regs *ctx, u32 func_id)
{
	return span_end(ctx, bpf_get_current_pid_tgid(), bpf_ktime_get_ns(), func_id, PT_REGS_RC(ctx));
}

#define SPAN_PROBES(i) \
	int span_entry_##i(struct pt_regs *ctx) { return on_span_entry(ctx, i); } \
	int span_return_##i(struct pt_regs *ctx) { return on_span_return(ctx, i); }
/* Only the programs the plan attaches are compiled (TDP_SPAN_FUNCS of them): each pair is a copy of the
 * span state code, and compiling all sixteen doubled BCC's compile time in a TCG guest. */
#if TDP_SPAN_FUNCS > 0
SPAN_PROBES(0)
#endif
#if TDP_SPAN_FUNCS > 1
SPAN_PROBES(1)
#endif
#if TDP_SPAN_FUNCS > 2
SPAN_PROBES(2)
#endif
#if TDP_SPAN_FUNCS > 3
SPAN_PROBES(3)
#endif
#if TDP_SPAN_FUNCS > 4
SPAN_PROBES(4)
#endif
#if TDP_SPAN_FUNCS > 5
SPAN_PROBES(5)
#endif
#if TDP_SPAN_FUNCS > 6
SPAN_PROBES(6)
#endif
#if TDP_SPAN_FUNCS > 7
SPAN_PROBES(7)
#endif
#if TDP_SPAN_FUNCS > 8
SPAN_PROBES(8)
#endif
#if TDP_SPAN_FUNCS > 9
SPAN_PROBES(9)
#endif
#if TDP_SPAN_FUNCS > 10
SPAN_PROBES(10)
#endif
#if TDP_SPAN_FUNCS > 11
SPAN_PROBES(11)
#endif
#if TDP_SPAN_FUNCS > 12
SPAN_PROBES(12)
#endif
#if TDP_SPAN_FUNCS > 13
SPAN_PROBES(13)
#endif
#if TDP_SPAN_FUNCS > 14
SPAN_PROBES(14)
#endif
#if TDP_SPAN_FUNCS > 15
SPAN_PROBES(15)
#endif
_Static_assert(TDP_MAX_FUNCS == 16, "one SPAN_PROBES(i) above per func_args entry");
_Static_assert(TDP_SPAN_FUNCS <= TDP_MAX_FUNCS, "more span functions than func_args entries");

/* VMM calls: vmm_call_N for the function user space put at vmm_args[N]; entry only. */
static __always_inline int on_vmm_call(struct pt_regs *ctx, u32 idx)
{
	struct regs6 r;
	regs6_read(ctx, &r);
	return vmm_call(bpf_get_current_pid_tgid(), idx, &r);
}

#if TDP_VMM_CALLS > 0
int vmm_call_0(struct pt_regs *ctx) { return on_vmm_call(ctx, 0); }
#endif
#if TDP_VMM_CALLS > 1
int vmm_call_1(struct pt_regs *ctx) { return on_vmm_call(ctx, 1); }
#endif
#if TDP_VMM_CALLS > 2
int vmm_call_2(struct pt_regs *ctx) { return on_vmm_call(ctx, 2); }
#endif
#if TDP_VMM_CALLS > 3
int vmm_call_3(struct pt_regs *ctx) { return on_vmm_call(ctx, 3); }
#endif
_Static_assert(TDP_MAX_VMM_CALLS == 4, "one vmm_call_N above per vmm_args entry");

/* Yield points; the lock is their first argument, the flavour rides in tdp_event.flags. */
static __always_inline int on_yield_entry(struct pt_regs *ctx, u32 which)
{
	return yield_begin(ctx, bpf_get_current_pid_tgid(), bpf_ktime_get_ns(), PT_REGS_PARM1(ctx), which);
}

int yield_entry_read(struct pt_regs *ctx) { return on_yield_entry(ctx, TDP_F_YIELD_READ); }
int yield_entry_write(struct pt_regs *ctx) { return on_yield_entry(ctx, TDP_F_YIELD_WRITE); }
int yield_entry_spin(struct pt_regs *ctx) { return on_yield_entry(ctx, TDP_F_YIELD_SPIN); }
int yield_return(struct pt_regs *ctx) { return yield_end(ctx, bpf_get_current_pid_tgid(), bpf_ktime_get_ns(),
							 PT_REGS_RC(ctx)); }
#endif /* TDP_WITH_SPANS */
