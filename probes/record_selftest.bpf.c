/* record_selftest.bpf.c - the recorder's in-kernel aggregation, fed a recorded trace by a test.
 *
 * tests/live/test_live_aggregation.py replays reference traces event by event into the very functions
 * record.bpf.c's tracepoints and kprobes call (record_handlers.bpf.h, record_spans.bpf.h): the test process
 * TDP_SELFTEST_TGID makes syscall(SYS_getpid, op, a1, a2, a3, a4, TDP_SELFTEST_MAGIC) (ops: TDP_SELFTEST_* in
 * record.h), and nothing else reaches this handler. Never attached by a recording.
 * Settings: those of record.bpf.c's headers (with TDP_WITH_SPANS=1), and TDP_SELFTEST_TGID.
 */
#include <uapi/linux/ptrace.h>
#include "record.h"
#include "spte.bpf.h"
#include "tracepoint.bpf.h"
#include "record_transport.bpf.h"
#include "record_tables.bpf.h"
#include "record_spans.bpf.h"
#include "record_handlers.bpf.h"

#if !TDP_WITH_SPANS || !defined(TDP_SELFTEST_TGID)
#error "the selftest needs TDP_WITH_SPANS=1 and TDP_SELFTEST_TGID"
#endif

#define SYS_GETPID 39 /* x86-64 */

TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
	if ((bpf_get_current_pid_tgid() >> 32) != TDP_SELFTEST_TGID || args->id != SYS_GETPID)
		return TDP_TP_PASS;
	if ((u64)args->args[5] != TDP_SELFTEST_MAGIC)
		return TDP_TP_PASS;
	u64 op = args->args[0], a1 = args->args[1], a2 = args->args[2], a3 = args->args[3], a4 = args->args[4];
	u64 tgid = (u64)TDP_SELFTEST_TGID << 32;
	if (op == TDP_SELFTEST_SPTE)
		return (spte_change(args, tgid | (a4 >> 16), (a4 >> 8) & 0xff, a1, a4 & 0xff, a2, a3), TDP_TP_PASS);
	if (op == TDP_SELFTEST_SPAN_ENTRY) {
		struct regs6 r = {};
		r.r[3] = a4; /* zap_level, for a func_args entry that says register 3 */
		return (span_begin(args, tgid | a1, a2, a3, &r), TDP_TP_PASS);
	}
	if (op == TDP_SELFTEST_SPAN_ENTRY_VM) {
		struct regs6 r = {};
		r.r[0] = a4; /* kvm, for a func_args entry that says register 0 */
		return (span_begin(args, a1, a2, a3, &r), TDP_TP_PASS);
	}
	if (op == TDP_SELFTEST_VMM_CALL) {
		struct regs6 r = {};
		r.r[0] = a3;
		return (vmm_call(a1, a2, &r), TDP_TP_PASS);
	}
	if (op == TDP_SELFTEST_SPAN_RETURN)
		return (span_end(args, (a1 >> 32) ? a1 : (tgid | a1), a2, a3, a4), TDP_TP_PASS);
	if (op == TDP_SELFTEST_YIELD_ENTRY)
		return (yield_begin(args, tgid | a1, a2, a3, a4), TDP_TP_PASS);
	if (op == TDP_SELFTEST_YIELD_RETURN)
		return (yield_end(args, tgid | a1, a2, a3), TDP_TP_PASS);
	return TDP_TP_PASS;
}
