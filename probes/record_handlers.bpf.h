/* record_handlers.bpf.h - what the recorder does for an SPTE change and a page-table event, as functions of
 * the event's fields rather than of a tracepoint's arguments, so that record_selftest.bpf.c can feed them a
 * recorded trace exactly as the kernel would.
 *
 * Setting: TDP_WITH_SPTES (stream every kvm_tdp_mmu_spte_changed; without it SPTE changes only feed the
 * in-kernel counters). Spliced into the program's text by tdptrace/live/programs.py (map methods).
 */
#ifndef TDPTRACE_RECORD_HANDLERS_BPF_H
#define TDPTRACE_RECORD_HANDLERS_BPF_H

#ifndef TDP_WITH_SPTES
#error "TDP_WITH_SPTES is not set: compile the probes through tdptrace/live/programs.py"
#endif

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

	int ml = TDP_STAT_MAX_LEVEL;
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

/* kvm_mmu_get_page (kind TDP_KIND_GET_PAGE) or kvm_mmu_prepare_zap_page (TDP_KIND_PREPARE_ZAP). */
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
	e->level = role_level(role);
	e->flags = (created ? TDP_F_CREATED : 0) | (unsync ? TDP_F_UNSYNC : 0);
	e->u.page.gfn = gfn;
	e->u.page.role = role;
	e->u.page.root_count = root_count;
	e->u.page.mmu_valid_gen = gen;
	event_submit(ctx, e);
	return 0;
}

#endif /* TDPTRACE_RECORD_HANDLERS_BPF_H */
