/* record_bench.bpf.c - the recorder's transport under a high event rate, for bench/ and the transport tests.
 *
 * A stand-in for the kvmmmu tracepoints that user space can fire at will: every syscall of process
 * TDP_BENCH_TGID emits one tdp_event (TDP_KIND_SYSCALL, gfn = the syscall number) through the same ring or
 * perf buffer and drop counters as record.bpf.c. Never attached by a recording.
 * Settings: those of record_transport.bpf.h, and TDP_BENCH_TGID.
 */
#include "record.h"
#include "tracepoint.bpf.h"
#include "record_transport.bpf.h"

#ifndef TDP_BENCH_TGID
#error "TDP_BENCH_TGID is not set: compile the probes through tdptrace/live/programs.py"
#endif

TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
	if ((bpf_get_current_pid_tgid() >> 32) != TDP_BENCH_TGID)
		return TDP_TP_PASS;
	struct tdp_event *e = event_reserve();
	if (!e)
		return TDP_TP_PASS;
	event_head(e, TDP_KIND_SYSCALL);
	e->u.spte.gfn = args->id;
	event_submit(args, e);
	return TDP_TP_PASS;
}
