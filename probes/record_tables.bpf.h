/* record_tables.bpf.h - zaps by level and the retained non-leaf page tables, counted in the kernel.
 *
 * zap_totals[2 * (level - 1) + (leaf ? 0 : 1)] counts present -> not present changes by the OLD value's kind;
 * retained[level] counts the tables with entries at that level that are linked, once had present entries and
 * have none now, with the peak of their sum in stats[TDP_STAT_RETAINED_PEAK] (docs/metrics.md; the same rules
 * tdptrace/capture/pagetables.py applies to imported traces).
 *
 * Setting: TDP_MAX_TABLES (capacity of the page-table map; tables past it count in TDP_STAT_TABLES_FULL).
 * Spliced into the program's text by tdptrace/live/programs.py (map methods).
 */
#ifndef TDPTRACE_RECORD_TABLES_BPF_H
#define TDPTRACE_RECORD_TABLES_BPF_H

#ifndef TDP_MAX_TABLES
#error "TDP_MAX_TABLES is not set: compile the probes through tdptrace/live/programs.py"
#endif

#define GFN_BITS 52 /* table keys: as_id << 55 | level << 52 | base gfn */

BPF_PERCPU_ARRAY(zap_totals, u64, TDP_ZAP_COUNTERS);
BPF_ARRAY(retained, s64, TDP_LEVELS + 1); /* index = level of the table's entries */

struct table_state {
	s64 count;   /* present entries (clamped at 0 for tables populated before the recording) */
	u8 linked;   /* the non-leaf SPTE one level up at the base gfn is present */
	u8 ever;     /* had present entries since it was last linked */
	u8 pad[6];
};
BPF_HASH(tables, u64, struct table_state, TDP_MAX_TABLES);

static __always_inline u64 table_key(u32 as_id, u32 level, u64 gfn)
{
	return ((u64)as_id << (GFN_BITS + 3)) | ((u64)level << GFN_BITS) | table_base(gfn, level);
}

static __always_inline bool eligible(u32 tlevel)
{
	int i = TDP_STAT_MAX_LEVEL;
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
		int k = TDP_STAT_RETAINED_PEAK;
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
			stat_add(TDP_STAT_TABLES_FULL, 1);
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

#endif /* TDPTRACE_RECORD_TABLES_BPF_H */
