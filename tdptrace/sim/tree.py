"""The TDP paging structure under one root, kept per page table (two 512-bit bitmaps each), not per SPTE.

A table is (level of its entries, base gfn), as in docs/metrics.md. It holds a present bitmap and a leaf bitmap of
512 bits (8 x uint64), so a 1 TiB VM mapped with 4 KiB pages (268M SPTEs) is 524,288 level-1 tables, ~70 MB.
Installs and zap passes are vectorised over tables. A zap pass reports its work per iterated table (and per
zapped non-leaf SPTE, whose subtree is torn down recursively) for the cost and yield model; for small trees it
can also list every SPTE change in the kernel's iteration order (pre-order by gfn, upper levels first).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

ENTRIES = 512
WORDS = ENTRIES // 64
_LOW = np.array([(1 << k) - 1 for k in range(65)], dtype=np.uint64)
_WORD_BASE = np.arange(WORDS, dtype=np.int64) * 64

# SPTE values written into simulated events. Presence is bit 11 (SPTE_MMU_PRESENT_MASK, 5.13+) and a huge leaf
# has bit 7 (PT_PAGE_SIZE_MASK), which is all the metrics read; the pfn bits are made up (gfn + 1 GiB).
_PRESENT = 0x800 | 0x7
_HUGE = 0x80
_PFN_OFFSET = 1 << 18


def entry_pages(level: int) -> int:
    """4 KiB pages covered by one SPTE at `level`."""
    return ENTRIES ** (level - 1)


def table_pages(level: int) -> int:
    """4 KiB pages covered by one page table whose entries are at `level`."""
    return ENTRIES ** level


def bit_range(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(n, 8) uint64 bitmaps with bits [lo, hi) set per row (empty where hi <= lo)."""
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    out = np.full((len(lo), WORDS), np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
    part = np.flatnonzero((lo > 0) | (hi < ENTRIES))  # most tables are wholly in range: only edges computed
    if len(part):
        a = lo[part][:, None] - _WORD_BASE
        b = hi[part][:, None] - _WORD_BASE
        out[part] = _LOW[np.clip(b, 0, 64)] & ~_LOW[np.clip(a, 0, 64)]
    return out


def popcount(bits: np.ndarray) -> np.ndarray:
    """Set bits per row of an (n, 8) bitmap array."""
    return np.bitwise_count(bits).sum(axis=1, dtype=np.int64)


def set_bits(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, entry index) of every set bit, row-major (entries ascending within a row)."""
    rows = np.flatnonzero(bits.any(axis=1)) if len(bits) else np.zeros(0, dtype=np.int64)
    if len(rows) == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z
    u = np.unpackbits(np.ascontiguousarray(bits[rows]).view(np.uint8).reshape(len(rows), WORDS * 8), axis=1,
                      bitorder="little")
    r, i = np.nonzero(u)
    return rows[r].astype(np.int64), i.astype(np.int64)


def spte_value(gfn: np.ndarray, level: int, leaf: np.ndarray | bool) -> np.ndarray:
    """A present SPTE value for each gfn (bit 11 set; bit 7 for huge leaves)."""
    gfn = np.asarray(gfn, dtype=np.uint64)
    huge = np.uint64(_HUGE) * (np.asarray(leaf, dtype=np.uint64) & np.uint64(level > 1))
    return ((gfn + np.uint64(_PFN_OFFSET)) << np.uint64(12)) | np.uint64(_PRESENT) | huge


@dataclass
class ZapRule:
    """Which SPTEs one kernel loop zaps while iterating [start, end) down to `min_level`.

    only_level: __tdp_mmu_zap_root(zap_level): zap every present SPTE at exactly that level and no other.
    Otherwise zap leaf SPTEs (when zap_leaf) and non-leaf SPTEs lying wholly inside the range at levels up to
    nonleaf_max_level (0 = never: tdp_mmu_zap_leafs). A zapped non-leaf SPTE tears its subtree down
    recursively (handle_removed_pt), without a yield check.
    """

    min_level: int
    zap_leaf: bool = True
    nonleaf_max_level: int = 0
    only_level: int | None = None


@dataclass
class Tables:
    """All page tables of one level: sorted base gfns and their bitmaps."""

    base: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    present: np.ndarray = field(default_factory=lambda: np.zeros((0, WORDS), dtype=np.uint64))
    leaf: np.ndarray = field(default_factory=lambda: np.zeros((0, WORDS), dtype=np.uint64))
    ever: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return len(self.base)

    def ensure(self, bases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the tables with these (sorted, unique) bases, creating missing ones. Returns
        (indices, bases of the tables created)."""
        pos = np.searchsorted(self.base, bases)
        found = (pos < len(self.base)) & (self.base[np.minimum(pos, max(len(self.base) - 1, 0))] == bases) \
            if len(self.base) else np.zeros(len(bases), dtype=bool)
        new = bases[~found]
        if len(new):
            allb = np.concatenate([self.base, new])
            order = np.argsort(allb, kind="stable")
            zeros = np.zeros((len(new), WORDS), dtype=np.uint64)
            self.base = allb[order]
            self.present = np.concatenate([self.present, zeros])[order]
            self.leaf = np.concatenate([self.leaf, zeros])[order]
            self.ever = np.concatenate([self.ever, np.zeros(len(new), dtype=bool)])[order]
        return np.searchsorted(self.base, bases), new

    def overlapping(self, start: int, end: int, level: int) -> np.ndarray:
        """Indices of the tables covering any gfn in [start, end)."""
        lo = np.searchsorted(self.base, start - table_pages(level), side="right")
        hi = np.searchsorted(self.base, end, side="left")
        return np.arange(lo, hi, dtype=np.int64)

    def drop(self, keep: np.ndarray) -> None:
        self.base, self.present, self.leaf, self.ever = (self.base[keep], self.present[keep], self.leaf[keep],
                                                         self.ever[keep])


def _entries(base: np.ndarray, start: int, end: int, level: int, whole: bool) -> tuple[np.ndarray, np.ndarray]:
    """Entry index range per table: entries overlapping [start, end), or only those wholly inside it."""
    u = entry_pages(level)
    if whole:
        lo = -((base - start) // u)  # ceil((start - base) / u)
        hi = (end - base) // u
    else:
        lo = (start - base) // u
        hi = -((base - end) // u)  # ceil((end - base) / u)
    return np.clip(lo, 0, ENTRIES), np.clip(hi, 0, ENTRIES)


@dataclass
class Work:
    """Work of one zap pass, one row per segment in iteration order.

    A 'scan' segment is the iteration over one table's in-range entries (a yield check per entry, leaf zaps
    spread over it); a 'teardown' segment is one zapped non-leaf SPTE: one check, then its whole subtree
    removed without any check. Columns: gfn, level, checks, leaf_zaps, nonleaf_zaps, tables_freed,
    removed_writes (non-present entries of freed tables overwritten with the removed marker: shared mode
    writes every entry, exclusive mode skips non-present ones), teardown.
    """

    segments: pd.DataFrame
    zaps: np.ndarray  # (6, 2) zaps per level (index 1..5), [leaf, non-leaf]
    freed: np.ndarray  # (6,) tables freed per level of their entries
    events: pd.DataFrame  # table frees always, SPTE changes when asked for; with the segment of each


@dataclass
class Installed:
    """Result of installing mappings: new SPTEs and tables per level, and optionally the events."""

    new_sptes: np.ndarray  # (6, 2) per level [leaf, non-leaf]
    new_tables: np.ndarray  # (6,)
    events: pd.DataFrame  # table allocations always, SPTE installs when asked for


EVENT_COLUMNS = ("gfn", "level", "old_spte", "new_spte", "kind", "order_gfn", "order_level", "order_sub",
                 "segment")


def _events(gfn, level, old, new, kind: str, order_gfn, order_level, order_sub, segment) -> pd.DataFrame:
    n = len(gfn)
    b = lambda v, dt: np.broadcast_to(np.asarray(v, dtype=dt), (n,))  # noqa: E731
    return pd.DataFrame({
        "gfn": b(gfn, np.int64), "level": b(level, np.int64), "old_spte": b(old, np.uint64),
        "new_spte": b(new, np.uint64), "kind": np.full(n, kind, dtype=object),
        "order_gfn": b(order_gfn, np.int64), "order_level": b(order_level, np.int64),
        "order_sub": b(order_sub, np.int64), "segment": b(segment, np.int64),
    })


class TdpTree:
    """Page tables under one TDP root of `root_level` (4 or 5), as created by faults and removed by zaps."""

    def __init__(self, root_level: int = 4, max_gfn: int | None = None) -> None:
        if root_level not in (4, 5):
            raise ValueError("root level must be 4 or 5")
        self.root_level = root_level
        self.max_gfn = max_gfn if max_gfn is not None else table_pages(root_level)
        self.levels: dict[int, Tables] = {lv: Tables() for lv in range(1, root_level + 1)}
        self.levels[root_level].ensure(np.zeros(1, dtype=np.int64))

    # -- state -------------------------------------------------------------------------------------------
    def table_count(self) -> dict[int, int]:
        """Linked tables per level (root included)."""
        return {lv: len(t) for lv, t in self.levels.items()}

    def present_count(self) -> np.ndarray:
        """(6, 2) present SPTEs per level [leaf, non-leaf]."""
        out = np.zeros((6, 2), dtype=np.int64)
        for lv, t in self.levels.items():
            out[lv, 0] = int(popcount(t.present & t.leaf).sum())
            out[lv, 1] = int(popcount(t.present & ~t.leaf).sum())
        return out

    def retained(self) -> dict[int, int]:
        """Retained non-leaf tables per level (docs/metrics.md): linked, once had present entries, none now."""
        out = {}
        for lv, t in self.levels.items():
            if lv == self.root_level or not len(t):
                continue
            n = int((t.ever & (popcount(t.present) == 0)).sum())
            if n:
                out[lv] = n
        return out

    # -- installs ----------------------------------------------------------------------------------------
    def install(self, starts: np.ndarray, ends: np.ndarray, level: int, want_sptes: bool = False) -> Installed:
        """Map the gfn ranges [starts[i], ends[i]) (rounded out to `level`'s page size) with leaf SPTEs at
        `level`, creating the non-leaf SPTEs and tables above them as the fault path does. Present mappings
        are left alone. Events: table allocations always, SPTE installs when want_sptes."""
        u = entry_pages(level)
        starts = np.asarray(starts, dtype=np.int64) // u * u
        ends = -(-np.asarray(ends, dtype=np.int64) // u) * u
        keep = ends > starts
        starts, ends = starts[keep], ends[keep]
        new_sptes = np.zeros((6, 2), dtype=np.int64)
        new_tables = np.zeros(6, dtype=np.int64)
        parts: list[pd.DataFrame] = []
        for lv in range(self.root_level, level - 1, -1):
            t = self.levels[lv]
            bases, mask = _table_masks(starts, ends, lv)
            idx, created = t.ensure(bases)
            is_leaf = lv == level
            # Entries already present (as a leaf or a table) stay as they are.
            new = mask & ~t.present[idx]
            t.present[idx] |= new
            if is_leaf:
                t.leaf[idx] |= new
            t.ever[idx] |= new.any(axis=1)
            n = popcount(new)
            new_sptes[lv, 0 if is_leaf else 1] += int(n.sum())
            if lv < self.root_level:
                new_tables[lv] += len(created)
                parts.append(_events(created, lv, 0, 0, "alloc", created, lv + 1, -1, -1))
            if want_sptes:
                r, i = set_bits(new)
                g = bases[r] + i * entry_pages(lv)
                parts.append(_events(g, lv, 0, spte_value(g, lv, is_leaf), "spte", g, lv, 0, -1))
        return Installed(new_sptes, new_tables, _sorted(parts))

    # -- zaps --------------------------------------------------------------------------------------------
    def zap(self, start: int, end: int, rule: ZapRule, shared: bool, removed_spte: int = 0x5a0,
            nonpresent_spte: int = 0, want_events: bool = False) -> Work:
        """One kernel zap loop over [start, end): what it zaps, frees and iterates, and the new state.

        Iterates every entry in range of every table from the root down to rule.min_level (non-present ones
        too, as tdp_iter does), stepping down only into present non-leaf SPTEs it does not zap.
        """
        end = min(end, self.max_gfn)
        zaps = np.zeros((6, 2), dtype=np.int64)
        freed = np.zeros(6, dtype=np.int64)
        seg_parts: list[pd.DataFrame] = []
        ev_parts: list[pd.DataFrame] = []
        nseg = 0
        for lv in range(self.root_level, rule.min_level - 1, -1):
            t = self.levels[lv]
            idx = t.overlapping(start, end, lv)
            if not len(idx):
                continue
            base = t.base[idx]
            lo, hi = _entries(base, start, end, lv, whole=False)
            m_in = bit_range(lo, hi)
            present = t.present[idx] & m_in
            leaf = present & t.leaf[idx]
            nonleaf = present & ~t.leaf[idx]
            if rule.only_level is not None:
                z = present if lv == rule.only_level else np.zeros_like(present)
            else:
                z = leaf if rule.zap_leaf else np.zeros_like(present)
                if lv <= rule.nonleaf_max_level:
                    wlo, whi = _entries(base, start, end, lv, whole=True)
                    z = z | (nonleaf & bit_range(wlo, whi))
            zl, zn = z & leaf, z & nonleaf
            n_zl, n_zn = popcount(zl), popcount(zn)
            zaps[lv, 0] += int(n_zl.sum())
            zaps[lv, 1] += int(n_zn.sum())
            # The iterator checks every in-range entry; a zapped non-leaf entry is its own (teardown) segment,
            # so each table's scan is cut into pieces between its zapped non-leaf entries.
            td_r, td_i = set_bits(zn)
            p_row = np.concatenate([np.arange(len(idx)), td_r])
            p_lo = np.concatenate([np.zeros(len(idx), dtype=np.int64), td_i + 1])
            o = np.lexsort((p_lo, p_row))
            p_row, p_lo = p_row[o], p_lo[o]
            same = np.concatenate([p_row[1:] == p_row[:-1], [False]])
            p_hi = np.where(same, np.concatenate([p_lo[1:], [0]]) - 1, ENTRIES)
            piece = bit_range(p_lo, p_hi)
            scan = pd.DataFrame({"gfn": base[p_row] + p_lo * entry_pages(lv), "level": lv,
                                 "checks": popcount(piece & m_in[p_row]), "leaf_zaps": popcount(piece & zl[p_row]),
                                 "nonleaf_zaps": 0, "tables_freed": 0, "removed_writes": 0, "teardown": False})
            scan_ids = np.arange(nseg, nseg + len(scan))
            nseg += len(scan)
            seg_parts.append(scan)
            if want_events and n_zl.any():
                r, i = set_bits(zl)
                # piece of each zapped leaf: the last piece of its row starting at or before its index
                key = r * (ENTRIES + 1) + i
                pkey = p_row * (ENTRIES + 1) + p_lo
                g = base[r] + i * entry_pages(lv)
                ev_parts.append(_events(g, lv, spte_value(g, lv, True), nonpresent_spte, "spte", g, lv, 0,
                                        scan_ids[np.searchsorted(pkey, key, side="right") - 1]))
            t.present[idx] &= ~z
            t.leaf[idx] &= ~z
            if n_zn.any():
                r, i = td_r, td_i
                g = base[r] + i * entry_pages(lv)
                td, tev = self._teardown(g, lv, shared, removed_spte, nonpresent_spte, nseg, want_events)
                seg_parts.append(td)
                zaps[:, 0] += td.attrs["zaps"][:, 0]
                zaps[:, 1] += td.attrs["zaps"][:, 1]
                freed += td.attrs["freed"]
                nseg += len(td)
                ev_parts.append(tev)
                if want_events:
                    ev_parts.append(_events(g, lv, spte_value(g, lv, False), nonpresent_spte, "spte", g, lv, 0,
                                            np.arange(nseg - len(td), nseg)))
        segs = pd.concat(seg_parts, ignore_index=True) if seg_parts else pd.DataFrame(
            {"gfn": [], "level": [], "checks": [], "leaf_zaps": [], "nonleaf_zaps": [], "tables_freed": [],
             "removed_writes": [], "teardown": []})
        segs["seg"] = np.arange(len(segs))
        order = np.lexsort((segs["teardown"].to_numpy(), -segs["level"].to_numpy(np.int64),
                            segs["gfn"].to_numpy(np.int64)))
        segs = segs.iloc[order].reset_index(drop=True)
        events = _sorted(ev_parts)
        if len(events):
            # Segment ids were assigned before sorting the segments: map them to positions.
            pos = np.empty(len(segs), dtype=np.int64)
            pos[segs["seg"].to_numpy()] = np.arange(len(segs))
            events["segment"] = pos[events["segment"].to_numpy()]
        segs = segs.drop(columns="seg").astype({"gfn": np.int64, "level": np.int64, "checks": np.int64,
                                                "leaf_zaps": np.int64, "nonleaf_zaps": np.int64,
                                                "tables_freed": np.int64, "removed_writes": np.int64,
                                                "teardown": bool})
        return Work(segs, zaps, freed, events)

    def _teardown(self, g: np.ndarray, lv: int, shared: bool, removed: int, nonpresent: int, seg0: int,
                  want_events: bool) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """Remove the subtrees under the zapped non-leaf SPTEs at gfns g (sorted) of level lv.

        handle_removed_pt visits all 512 entries of each freed table: present ones become the removed marker
        (zaps), and in shared mode non-present ones are overwritten too (a change, not a zap).
        """
        span = entry_pages(lv)
        n = len(g)
        leafs = np.zeros(n, dtype=np.int64)
        nonleafs = np.ones(n, dtype=np.int64)  # the zapped SPTE itself
        frees = np.zeros(n, dtype=np.int64)
        writes = np.zeros(n, dtype=np.int64)  # non-present entries overwritten (shared mode only)
        zaps = np.zeros((6, 2), dtype=np.int64)
        freed = np.zeros(6, dtype=np.int64)
        evs: list[pd.DataFrame] = []
        for low in range(lv - 1, 0, -1):
            t = self.levels[low]
            if not len(t):
                continue
            owner = np.searchsorted(g, t.base, side="right") - 1
            inside = (owner >= 0) & (t.base < g[np.maximum(owner, 0)] + span)
            if not inside.any():
                continue
            ow = owner[inside]
            pres = t.present[inside]
            lf = pres & t.leaf[inside]
            nl = pres & ~t.leaf[inside]
            n_lf, n_nl = popcount(lf), popcount(nl)
            leafs += np.bincount(ow, weights=n_lf, minlength=n).astype(np.int64)
            nonleafs += np.bincount(ow, weights=n_nl, minlength=n).astype(np.int64)
            frees += np.bincount(ow, minlength=n)
            if shared:
                writes += np.bincount(ow, weights=ENTRIES - n_lf - n_nl, minlength=n).astype(np.int64)
            zaps[low, 0] += int(n_lf.sum())
            zaps[low, 1] += int(n_nl.sum())
            freed[low] += int(inside.sum())
            bases = t.base[inside]
            seg = seg0 + ow
            evs.append(_events(bases, low, 0, 0, "free", bases, low + 1, 1, seg))
            if want_events:
                r, i = set_bits(pres)
                gg = bases[r] + i * entry_pages(low)
                is_lf = ((lf[r, i // 64] >> (i % 64).astype(np.uint64)) & np.uint64(1)).astype(bool)
                evs.append(_events(gg, low, spte_value(gg, low, is_lf), removed, "spte", gg, low, 0, seg[r]))
                if shared:
                    r, i = set_bits(~pres)
                    gg = bases[r] + i * entry_pages(low)
                    evs.append(_events(gg, low, nonpresent, removed, "spte", gg, low, 0, seg[r]))
            t.drop(~inside)
        td = pd.DataFrame({"gfn": g, "level": lv, "checks": 1, "leaf_zaps": leafs, "nonleaf_zaps": nonleafs,
                           "tables_freed": frees, "removed_writes": writes, "teardown": True})
        td.attrs["zaps"] = zaps
        td.attrs["freed"] = freed
        return td, (pd.concat(evs, ignore_index=True) if evs else None)


def _table_masks(starts: np.ndarray, ends: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Tables at `level` overlapped by any of the ranges, and per table the bitmap of entries overlapped."""
    tp = table_pages(level)
    first, last = starts // tp, (ends - 1) // tp
    cnt = last - first + 1
    rid = np.repeat(np.arange(len(starts)), cnt)
    off = np.arange(int(cnt.sum()), dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    tb = (first[rid] + off) * tp
    u = entry_pages(level)
    lo = np.clip((starts[rid] - tb) // u, 0, ENTRIES)
    hi = np.clip(-((tb - ends[rid]) // u), 0, ENTRIES)
    mask = bit_range(lo, hi)
    order = np.argsort(tb, kind="stable")
    tb, mask = tb[order], mask[order]
    if len(tb) == 0:
        return tb, mask
    bases, first_idx = np.unique(tb, return_index=True)
    if len(bases) < len(tb):
        mask = np.bitwise_or.reduceat(mask, first_idx, axis=0)
    return bases, mask


def _sorted(parts: list[pd.DataFrame | None]) -> pd.DataFrame:
    """Events in the kernel's iteration order: pre-order by gfn, an SPTE before the table below it."""
    parts = [p for p in parts if p is not None and len(p)]
    if not parts:
        return pd.DataFrame({c: [] for c in EVENT_COLUMNS})
    ev = pd.concat(parts, ignore_index=True)
    order = np.lexsort((ev["order_sub"].to_numpy(), -ev["order_level"].to_numpy(), ev["order_gfn"].to_numpy()))
    return ev.iloc[order].reset_index(drop=True)
