/* record_transport.bpf.h - how the recorder's records and counters reach user space.
 *
 * Records go through a BPF ring buffer (5.8+) or, on older kernels, a perf buffer. A failed reservation (or
 * perf_submit) increments drops[TDP_DROPS_*] on this CPU: drops are never silent. Map `stats` holds the
 * TDP_STAT_* counters user space reads back at the end.
 *
 * Settings: TDP_PERF_BUFFER (1 = perf buffer), TDP_EVENT_PAGES / TDP_SPAN_PAGES (ring buffer pages, powers of
 * two), TDP_WAKEUP (0 = no wakeup per record: user space drains on a timer; 1 = the kernel decides).
 * It calls map methods, which BCC rewrites in the main source only: tdptrace/live/programs.py splices the
 * probes' own headers into the program's text before BCC sees it.
 */
#ifndef TDPTRACE_RECORD_TRANSPORT_BPF_H
#define TDPTRACE_RECORD_TRANSPORT_BPF_H

#if !defined(TDP_PERF_BUFFER) || !defined(TDP_EVENT_PAGES) || !defined(TDP_SPAN_PAGES) || !defined(TDP_WAKEUP)
#error "transport settings missing: compile the probes through tdptrace/live/programs.py"
#endif

BPF_PERCPU_ARRAY(drops, u64, TDP_DROPS_COUNT);
BPF_ARRAY(stats, s64, TDP_STAT_COUNT);

static __always_inline void count_drop(int which)
{
	u64 *n = drops.lookup(&which);
	if (n)
		(*n)++;
}

static __always_inline void stat_add(int i, s64 v)
{
	s64 *p = stats.lookup(&i);
	if (p)
		__sync_fetch_and_add(p, v);
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
		count_drop(TDP_DROPS_EVENTS);
}

static __always_inline struct tdp_span *span_reserve(void)
{
	int zero = 0;
	return span_scratch.lookup(&zero);
}

static __always_inline void span_submit(void *ctx, struct tdp_span *s)
{
	if (spans.perf_submit(ctx, s, sizeof(*s)) < 0)
		count_drop(TDP_DROPS_SPANS);
}
#else
BPF_RINGBUF_OUTPUT(events, TDP_EVENT_PAGES);
BPF_RINGBUF_OUTPUT(spans, TDP_SPAN_PAGES);

static __always_inline struct tdp_event *event_reserve(void)
{
	struct tdp_event *e = events.ringbuf_reserve(sizeof(struct tdp_event));
	if (!e)
		count_drop(TDP_DROPS_EVENTS);
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
		count_drop(TDP_DROPS_SPANS);
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

#endif /* TDPTRACE_RECORD_TRANSPORT_BPF_H */
