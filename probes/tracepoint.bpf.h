/* tracepoint.bpf.h - what every tracepoint program of tdptrace returns.
 *
 * For a tracepoint, the kernel ANDs the return values of all BPF programs attached to it and delivers the
 * event to perf users only when the result is non-zero (perf_trace_run_bpf_submit, kernel/events/core.c,
 * since 4.7): returning 0 would hide these events from every `perf record -e kvmmmu:...` on the host while
 * tdptrace runs. */
#ifndef TDP_TRACEPOINT_BPF_H
#define TDP_TRACEPOINT_BPF_H
#define TDP_TP_PASS 1
#endif
