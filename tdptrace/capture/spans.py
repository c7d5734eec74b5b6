"""Zap spans and yield points from function entry/return events (docs/metrics.md "Zap span", "Yield point and gap").

Used for every text capture (importers, the ftrace backend); the BCC recorder computes the same aggregates in
the kernel. All steps are vectorised: pairing by shifting within (task, function) groups, nesting by
as-of merges per depth, zap attribution by binary search over per-task cumulative counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tdptrace.capture.schema import LEVELS
from tdptrace.kernel.functions import YIELD_FUNCTIONS, ZAP_FUNCTIONS

_SEQ_BITS = 40
_NO_END = np.int64(1) << np.int64(_SEQ_BITS - 1)


@dataclass
class ZapIndex:
    """Zaps in the capture, keyed for per-task range counts: (tid, seq, level, leaf)."""

    tid: np.ndarray
    seq: np.ndarray
    level: np.ndarray
    leaf: np.ndarray

    @classmethod
    def empty(cls) -> "ZapIndex":
        z = np.zeros(0, dtype=np.int64)
        return cls(z.astype(np.int32), z, z.astype(np.uint8), z.astype(bool))

    @classmethod
    def concat(cls, parts: list["ZapIndex"]) -> "ZapIndex":
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("tid", "seq", "level", "leaf")))

    def count_in(self, tid: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict[str, np.ndarray]:
        """For each (tid, lo, hi): zaps by that task with lo < seq < hi, per level and leaf/non-leaf."""
        out: dict[str, np.ndarray] = {}
        key_all = (self.tid.astype(np.int64) << np.int64(_SEQ_BITS)) | self.seq
        base = np.asarray(tid, dtype=np.int64) << np.int64(_SEQ_BITS)
        for level in LEVELS:
            for kind, leaf in (("leaf", True), ("nonleaf", False)):
                sel = (self.level == level) & (self.leaf == leaf)
                keys = np.sort(key_all[sel])
                out[f"{kind}_l{level}"] = (np.searchsorted(keys, base | np.asarray(hi), side="left")
                                           - np.searchsorted(keys, base | np.asarray(lo), side="right"))
        return out


def _pair(calls: pd.DataFrame) -> pd.DataFrame:
    """Pair each entry with the return that immediately follows it in its (tid, function) group."""
    c = calls.sort_values(["tid", "function", "seq"], kind="stable", ignore_index=True)
    same = (c["tid"].shift(-1) == c["tid"]) & (c["function"].shift(-1) == c["function"])
    nxt_ret = same & c["is_return"].shift(-1, fill_value=False).astype(bool)
    entries = c[~c["is_return"]].copy()
    paired = nxt_ret[~c["is_return"]].to_numpy()
    idx = np.flatnonzero(~c["is_return"].to_numpy())
    ret_rows = c.iloc[np.minimum(idx + 1, len(c) - 1)]
    entries["end_seq"] = np.where(paired, ret_rows["seq"].to_numpy(), -1)
    entries["end_ts"] = np.where(paired, ret_rows["ts"].to_numpy(), -1)
    entries["ret"] = pd.array(np.where(paired, ret_rows["arg_ret"].fillna(0).to_numpy(dtype=np.int64), 0),
                              dtype="Int64")
    entries.loc[~paired, "ret"] = pd.NA
    entries["caller_ret"] = pd.Series(np.where(paired, ret_rows["caller"].fillna("").to_numpy(dtype=object), ""),
                                      index=entries.index, dtype="string")
    entries["paired"] = paired
    # Returns without an entry before them (the call began before the capture).
    prev_entry = (c["tid"].shift(1) == c["tid"]) & (c["function"].shift(1) == c["function"]) \
        & ~c["is_return"].shift(1, fill_value=True).astype(bool)
    orphan = c[c["is_return"] & ~prev_entry]
    entries.attrs["orphan_returns"] = int(len(orphan))
    # Where an entry has no return: attribute events up to the next entry of the same function on that task.
    nxt_entry_seq = entries.groupby(["tid", "function"], sort=False)["seq"].shift(-1)
    entries["attr_end"] = np.where(paired, entries["end_seq"], nxt_entry_seq.fillna(_NO_END).to_numpy(np.int64))
    return entries.reset_index(drop=True)


def _nest(spans: pd.DataFrame) -> pd.DataFrame:
    """Depth and parent span (same task) of each span, from interval containment."""
    spans = spans.sort_values("seq", kind="stable", ignore_index=True)
    spans["span_id"] = np.arange(len(spans), dtype=np.int64)
    ev = pd.DataFrame({
        "tid": np.concatenate([spans["tid"].to_numpy(), spans["tid"].to_numpy()]),
        "seq": np.concatenate([spans["seq"].to_numpy(), spans["attr_end"].to_numpy()]),
        "d": np.concatenate([np.ones(len(spans), np.int64), -np.ones(len(spans), np.int64)]),
        "i": np.concatenate([np.arange(len(spans)), np.full(len(spans), -1)]),
    }).sort_values(["tid", "seq", "d"], kind="stable", ignore_index=True)
    ev["active"] = ev.groupby("tid")["d"].cumsum()
    starts = ev[ev["i"] >= 0]
    depth = np.zeros(len(spans), dtype=np.int64)
    depth[starts["i"].to_numpy()] = starts["active"].to_numpy() - 1
    spans["depth"] = depth.astype(np.int16)
    spans["parent_id"] = pd.array([pd.NA] * len(spans), dtype="Int64")
    for d in range(1, int(depth.max(initial=0)) + 1):
        child = spans[spans["depth"] == d][["span_id", "tid", "seq"]].sort_values("seq")
        par = spans[spans["depth"] == d - 1][["span_id", "tid", "seq"]].sort_values("seq")
        m = pd.merge_asof(child, par.rename(columns={"span_id": "pid_"}), on="seq", by="tid",
                          direction="backward")
        spans.loc[m["span_id"].to_numpy(), "parent_id"] = m["pid_"].astype("Int64").to_numpy()
    return spans


def _last_before(points: pd.DataFrame, spans: pd.DataFrame) -> np.ndarray:
    """For each point (sorted by seq), the span_id of the last span of the same task started at or before it
    (-1 if none): one searchsorted per task. (pandas' merge_asof refused such keys as unsorted on a 7.3
    recording.)"""
    out = np.full(len(points), -1, dtype=np.int64)
    ps, pt = points["seq"].to_numpy(np.int64), points["tid"].to_numpy()
    st, ss, sid = spans["tid"].to_numpy(), spans["seq"].to_numpy(np.int64), spans["span_id"].to_numpy(np.int64)
    for tid in np.intersect1d(np.unique(pt), np.unique(st)):  # per task, not per row
        pi, si = np.flatnonzero(pt == tid), np.flatnonzero(st == tid)
        pos = np.searchsorted(ss[si], ps[pi], side="right") - 1
        ok = pos >= 0
        out[pi[ok]] = sid[si[pos[ok]]]
    return out


def _innermost(points: pd.DataFrame, spans: pd.DataFrame) -> np.ndarray:
    """span_id of the innermost span of the same task containing each point (by seq); -1 if none."""
    if points.empty or spans.empty:
        return np.full(len(points), -1, dtype=np.int64)
    p = points[["tid", "seq"]].copy()
    p["_row"] = np.arange(len(p))
    known = p["seq"].notna().to_numpy()  # a point with no position (a return seen without its entry) is in no span
    out = np.full(len(points), -1, dtype=np.int64)
    if not known.all():
        inner = _innermost(points[known], spans)
        out[known] = inner
        return out
    p["seq"] = p["seq"].astype(np.int64)
    m = p.sort_values("seq", kind="stable").reset_index(drop=True)
    s = spans[["span_id", "tid", "seq"]]
    s = s[s["seq"].notna()].astype({"seq": np.int64}).sort_values("seq", kind="stable")
    cand = _last_before(m, s)
    end = spans.set_index("span_id")["attr_end"]
    parent = spans.set_index("span_id")["parent_id"]
    q = m["seq"].to_numpy()
    for _ in range(int(spans["depth"].max()) + 2):
        has = cand >= 0
        inside = np.zeros(len(cand), dtype=bool)
        inside[has] = end.reindex(cand[has]).to_numpy() > q[has]
        walk = has & ~inside
        if not walk.any():
            break
        cand[walk] = parent.reindex(cand[walk]).fillna(-1).to_numpy(np.int64)
    out = np.full(len(points), -1, dtype=np.int64)
    out[m["_row"].to_numpy()] = cand
    return out


def ancestor_pairs(inner: np.ndarray, parent: pd.Series) -> pd.DataFrame:
    """(span_id, i) for point i in its innermost span inner[i] and in every span enclosing that one."""
    pairs = []
    cur = pd.DataFrame({"span_id": np.asarray(inner, dtype=np.int64), "i": np.arange(len(inner))})
    cur = cur[cur["span_id"] >= 0]
    while not cur.empty:
        pairs.append(cur)
        nxt = parent.reindex(cur["span_id"].to_numpy()).to_numpy()
        keep = ~pd.isna(nxt)
        cur = pd.DataFrame({"span_id": np.asarray(nxt[keep], dtype=np.int64), "i": cur["i"].to_numpy()[keep]})
    if not pairs:
        return pd.DataFrame({"span_id": np.zeros(0, np.int64), "i": np.zeros(0, np.int64)})
    return pd.concat(pairs, ignore_index=True)


def build_yields(calls: pd.DataFrame) -> pd.DataFrame:
    """Yield-point entries paired with their returns (ret_ts/ret null when the return is not traced)."""
    y = calls[calls["function"].isin(YIELD_FUNCTIONS)]
    if y.empty:
        return y.assign(ret_ts=pd.array([], dtype="Int64"), ret=pd.array([], dtype="Int64"))
    e = _pair(y)
    e["ret_ts"] = pd.array(np.where(e["paired"], e["end_ts"], 0), dtype="Int64")
    e.loc[~e["paired"], "ret_ts"] = pd.NA
    return e


def build_spans(calls: pd.DataFrame, zaps: ZapIndex) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(spans, yields, entry_only_calls) from kprobe entry/return events of zap functions and yield points.

    A zap function is a span source when its return is traced somewhere in the capture; functions traced on
    entry only come back as plain calls (kept as markers).
    """
    zc = calls[calls["function"].isin(ZAP_FUNCTIONS)]
    with_ret = set(zc.loc[zc["is_return"], "function"].unique())
    entry_only = zc[~zc["function"].isin(with_ret)]
    sc = zc[zc["function"].isin(with_ret)]
    spans = _pair(sc) if not sc.empty else None
    yields = build_yields(calls)
    if spans is None or spans.empty:
        y = yields.assign(span_id=pd.array([pd.NA] * len(yields), dtype="Int64"))
        return _empty_spans(), y, entry_only
    orphans = spans.attrs.get("orphan_returns", 0)
    spans = _nest(spans)
    spans.attrs["orphan_returns"] = orphans
    # Yields: innermost span, then every enclosing span sees the yield too.
    inner = _innermost(yields, spans)
    yields = yields.assign(span_id=pd.array(inner, dtype="Int64"))
    yields.loc[inner < 0, "span_id"] = pd.NA
    pairs = ancestor_pairs(inner, spans.set_index("span_id")["parent_id"])
    spans = _aggregate_yields(spans, yields, pairs)
    counts = zaps.count_in(spans["tid"].to_numpy(), spans["seq"].to_numpy(), spans["attr_end"].to_numpy())
    for name, v in counts.items():
        spans[name] = v.astype(np.int64)
    return spans, yields, entry_only


def _aggregate_yields(spans: pd.DataFrame, yields: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Per span: yield count, lock drops, time away, and the longest gap between yield points."""
    complete = spans["paired"].to_numpy()
    start = spans["ts"].to_numpy(np.int64)
    end = spans["end_ts"].to_numpy(np.int64)
    n = len(spans)
    ycount = np.zeros(n, np.int64)
    drops = np.zeros(n, np.int64)
    drops_known = np.ones(n, bool)
    away = np.zeros(n, np.int64)
    last_resume = start.copy()
    max_gap = np.zeros(n, np.int64)
    if len(pairs):
        p = pairs.copy()
        yy = yields.iloc[p["i"].to_numpy()]
        p["ts"] = yy["ts"].to_numpy(np.int64)
        p["seq"] = yy["seq"].to_numpy(np.int64)
        has_ret = yy["paired"].to_numpy()
        p["resume"] = np.where(has_ret, yy["end_ts"].to_numpy(np.int64), p["ts"].to_numpy())
        p["has_ret"] = has_ret
        p["dropped"] = has_ret & (yy["ret"].fillna(0).to_numpy(np.int64) == 1)
        p = p.sort_values(["span_id", "seq"], kind="stable", ignore_index=True)
        prev = p.groupby("span_id")["resume"].shift(1)
        sid = p["span_id"].to_numpy()
        prev = prev.fillna(pd.Series(start[sid])).to_numpy(np.int64)
        p["gap"] = p["ts"].to_numpy() - prev
        g = p.groupby("span_id")
        ycount[g.size().index] = g.size().to_numpy()
        drops[g["dropped"].sum().index] = g["dropped"].sum().to_numpy()
        allret = g["has_ret"].all()
        drops_known[allret.index] = allret.to_numpy()
        aw = (p["resume"] - p["ts"]).groupby(p["span_id"]).sum()
        away[aw.index] = aw.to_numpy()
        mg = g["gap"].max()
        max_gap[mg.index] = mg.to_numpy()
        lr = g["resume"].last()
        last_resume[lr.index] = lr.to_numpy()
    tail = end - last_resume
    max_gap = np.maximum(max_gap, tail)
    spans["yields"] = ycount.astype(np.int32)
    spans["lock_drops"] = pd.array(drops, dtype="Int32")
    spans.loc[~drops_known, "lock_drops"] = pd.NA
    spans["away_ns"] = pd.array(away, dtype="Int64")
    spans["max_gap_ns"] = pd.array(max_gap, dtype="Int64")
    spans.loc[~complete, "max_gap_ns"] = pd.NA
    return spans


def _empty_spans() -> pd.DataFrame:
    return pd.DataFrame({"span_id": pd.array([], dtype="int64")})
