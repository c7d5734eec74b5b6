"""capture.spans: pairing entries with returns, nesting, yield points inside spans, gaps, zap counts."""
from __future__ import annotations

import numpy as np
import pandas as pd

from tdptrace.capture.spans import ZapIndex, ancestor_pairs, build_spans

US = 1000


def calls(rows: list[tuple]) -> pd.DataFrame:
    """(ts_us, tid, function, is_return, ret) rows in event order; seq = row number."""
    ts, tid, fn, is_ret, ret = zip(*rows)
    n = len(rows)
    return pd.DataFrame({
        "ts": np.array(ts, np.int64) * US, "seq": np.arange(n, dtype=np.int64), "cpu": np.zeros(n, np.int16),
        "tid": np.array(tid, np.int32), "pid": np.array(tid, np.int32),
        "comm": pd.Series(["kvm"] * n, dtype="string"), "symbol": pd.Series(fn, dtype="string"),
        "function": pd.Series(fn, dtype="string"), "caller": pd.Series([None] * n, dtype="string"),
        "args": pd.Series([None] * n, dtype="string"), "is_return": np.array(is_ret, bool),
        "at_entry": ~np.array(is_ret, bool), "arg_ret": pd.array(ret, dtype="Int64"),
    })


R, W = "__cond_resched_rwlock_read", "__cond_resched_rwlock_write"


def test_nested_spans_share_the_yield_and_each_has_its_own_gaps():
    c = calls([(0, 7, "kvm_tdp_mmu_zap_leafs", False, None),
               (10, 7, "tdp_mmu_zap_leafs", False, None),
               (30, 7, W, False, None), (40, 7, W, True, 1),       # yield 30..40, lock dropped
               (100, 7, "tdp_mmu_zap_leafs", True, None),
               (105, 7, "kvm_tdp_mmu_zap_leafs", True, None)])
    spans, yields, entry_only = build_spans(c, ZapIndex.empty())
    assert entry_only.empty and len(spans) == 2
    outer, inner = spans.sort_values("depth").to_dict("records")
    assert (outer["depth"], inner["depth"], inner["parent_id"]) == (0, 1, outer["span_id"])
    assert outer["yields"] == inner["yields"] == 1 and outer["lock_drops"] == 1
    assert inner["max_gap_ns"] == 60 * US      # 40 .. 100
    assert outer["max_gap_ns"] == 65 * US      # 40 .. 105 (30 from the start, 65 to the end)
    assert outer["away_ns"] == 10 * US
    assert yields["span_id"].tolist() == [inner["span_id"]]


def test_a_yield_without_its_return_counts_from_its_entry():
    c = calls([(0, 1, "__tdp_mmu_zap_root", False, None), (50, 1, R, False, None),
               (80, 1, "__tdp_mmu_zap_root", True, None)])
    spans, yields, _ = build_spans(c, ZapIndex.empty())
    s = spans.iloc[0]
    assert s["yields"] == 1 and s["max_gap_ns"] == 50 * US and pd.isna(s["lock_drops"])
    assert pd.isna(yields["ret_ts"].iloc[0])


def test_a_span_that_never_returns_has_no_max_gap_and_other_tasks_do_not_mix_in():
    c = calls([(0, 1, "tdp_mmu_zap_leafs", False, None), (5, 2, "tdp_mmu_zap_leafs", False, None),
               (8, 2, W, False, None), (9, 2, W, True, 0), (20, 2, "tdp_mmu_zap_leafs", True, None)])
    spans, _, _ = build_spans(c, ZapIndex.empty())
    by_tid = spans.set_index("tid")
    assert bool(by_tid.loc[2, "paired"]) and not bool(by_tid.loc[1, "paired"])
    assert pd.isna(by_tid.loc[1, "max_gap_ns"]) and by_tid.loc[1, "yields"] == 0
    assert by_tid.loc[2, "yields"] == 1 and by_tid.loc[2, "lock_drops"] == 0


def test_functions_traced_on_entry_only_are_calls_not_spans():
    c = calls([(0, 1, "kvm_tdp_mmu_put_root", False, None), (5, 1, R, False, None)])
    spans, yields, entry_only = build_spans(c, ZapIndex.empty())
    assert spans.empty and len(entry_only) == 1 and yields["span_id"].isna().all()


def test_zaps_are_counted_in_the_span_of_their_task_and_level():
    c = calls([(0, 1, "tdp_mmu_zap_leafs", False, None), (10, 1, "tdp_mmu_zap_leafs", True, None)])
    c["seq"] = [0, 10]
    z = ZapIndex(tid=np.array([1, 1, 1, 2, 1], np.int32), seq=np.array([5, 6, 7, 5, 11], np.int64),
                 level=np.array([1, 1, 2, 1, 1], np.uint8), leaf=np.array([True, True, False, True, True]))
    spans, _, _ = build_spans(c, z)  # tid 2's zap and the one after the return are not this span's
    assert spans["leaf_l1"].tolist() == [2] and spans["nonleaf_l2"].tolist() == [1]
    assert spans["leaf_l2"].tolist() == [0]


def test_ancestor_pairs_walks_to_the_top():
    parent = pd.Series(pd.array([pd.NA, 0, 1], dtype="Int64"), index=[0, 1, 2])
    pairs = ancestor_pairs(np.array([2, -1, 0]), parent)
    assert sorted(map(tuple, pairs[["span_id", "i"]].to_numpy().tolist())) == [(0, 0), (0, 2), (1, 0), (2, 0)]


def test_a_point_without_a_position_is_in_no_span_and_the_others_still_are():
    """A yield return seen without its entry has no seq: it belongs to no span (and merge_asof, which needs
    sorted keys without gaps, is not handed it); the points around it are placed as before."""
    import numpy as np
    import pandas as pd

    from tdptrace.capture.spans import _innermost

    spans = pd.DataFrame({"span_id": [0, 1], "tid": [7, 7], "seq": [10, 20], "attr_end": [100, 30],
                          "parent_id": pd.array([pd.NA, 0], dtype="Int64"), "depth": [0, 1]})
    points = pd.DataFrame({"tid": [7, 7, 7, 7], "seq": pd.array([25, pd.NA, 50, 5], dtype="Int64")})
    assert _innermost(points, spans).tolist() == [1, -1, 0, -1]
    assert _innermost(points.iloc[[0, 2, 3]], spans).tolist() == [1, 0, -1]
    assert isinstance(_innermost(points, spans), np.ndarray)
