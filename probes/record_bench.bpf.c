/* record_bench.bpf.c - the recorder's transport under a high event rate, for bench/ and the transport tests.
 *
 * A stand-in for the kvmmmu tracepoints that user space can fire at will: every syscall of process
 * TDP_BENCH_TGID emits one tdp_event (TDP_KIND_SYSCALL, gfn = the syscall number) through the same ring or
 * perf buffer and drop counters as record.bpf.c. With TDP_BENCH_SPTES=1 each syscall is instead one SPTE change
 * of a teardown (the next 4 KiB leaf of this CPU's range zapped) handed to record.bpf.c's own spte_change():
 * in-kernel counters and tables, and with TDP_WITH_SPTES=1 the full event stream of `record --sptes`
 * (bench/record_sptes_bench.py). Never attached by a recording.
 * Settings: those of record_transport.bpf.h, TDP_BENCH_TGID, and for TDP_BENCH_SPTES those of record.bpf.c's
 * headers.
 */
#include <uapi/linux/ptrace.h>
#include "record.h"
#include "tracepoint.bpf.h"
#include "record_transport.bpf.h"

#ifndef TDP_BENCH_TGID
#error "TDP_BENCH_TGID is not set: compile the probes through tdptrace/live/programs.py"
#endif
#ifndef TDP_BENCH_SPTES
#define TDP_BENCH_SPTES 0
#endif

#if TDP_BENCH_SPTES
#include "spte.bpf.h"
#include "record_tables.bpf.h"
#include "record_spans.bpf.h"
#include "record_handlers.bpf.h"

BPF_PERCPU_ARRAY(bench_next_gfn, u64, 1);
#endif

TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
	if ((bpf_get_current_pid_tgid() >> 32) != TDP_BENCH_TGID)
		return TDP_TP_PASS;
#if TDP_BENCH_SPTES
	if (args->id != 110) /* getppid on x86-64: the producer's other syscalls are not SPTE changes */
		return TDP_TP_PASS;
	u32 zero = 0;
	u64 *next = bench_next_gfn.lookup(&zero);
	if (!next)
		return TDP_TP_PASS;
	u64 gfn = ((u64)bpf_get_smp_processor_id() << 36) | (*next)++;
	u64 leaf = ((gfn + 0x100000) << 12) | 0xe67; /* present (bit 11), accessed, dirty, RWX, WB */
	return (spte_change(args, bpf_get_current_pid_tgid(), 0, gfn, 1, leaf, 0), TDP_TP_PASS);
#else
	struct tdp_event *e = event_reserve();
	if (!e)
		return TDP_TP_PASS;
	event_head(e, TDP_KIND_SYSCALL);
	e->u.spte.gfn = args->id;
	event_submit(args, e);
	return TDP_TP_PASS;
#endif
}
