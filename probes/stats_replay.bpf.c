/* stats_replay.bpf.c - stats.bpf.c's counting, fed recorded SPTE changes by a test (BPF_PROG_TEST_RUN).
 *
 * tests/live/test_stats_replay.py runs the XDP program `replay` once per struct replay_event (stats.h, after
 * STATS_REPLAY_PAD bytes) through the same count_spte_change() as the kvm_tdp_mmu_spte_changed handler, to
 * check it against captures of real kernels. Never attached.
 * Settings: those of spte.bpf.h and stats_count.bpf.h.
 */
#include "stats.h"
#include "spte.bpf.h"
#include "stats_count.bpf.h"

int replay(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct replay_event *e = data + STATS_REPLAY_PAD;
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
