"""The compiled retained-table pass gives the numpy definition's series change for change: random SPTE
histories over a few tables (installs, zaps, relinks, tables populated before the capture, huge pages, two
address spaces), and the reference-shaped synthetic teardown."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from refdata import REPO

from tdptrace.capture import pagetables
from tdptrace.capture.pagetables import classify, retained_series
from tdptrace.kernel.spte import Encoding

pytestmark = pytest.mark.skipif(pagetables._pagetables_scan is None, reason="the compiled pass is not built here")

P = 1 << 11  # present bit (the 6.x encoding)
HUGE = 1 << 7


def frame(rows: list[tuple[int, int, int, int, int]]) -> pd.DataFrame:
    as_id, gfn, level, old, new = (np.array(c, dtype=np.uint64) for c in zip(*rows))
    n = len(rows)
    return pd.DataFrame({"ts": np.arange(n, dtype=np.int64) * 7, "seq": np.arange(n, dtype=np.int64) * 2 + 1,
                         "tid": np.ones(n, np.int32), "as_id": as_id.astype(np.uint8), "gfn": gfn,
                         "level": level.astype(np.uint8), "old_spte": old, "new_spte": new})


@contextmanager
def pure_path():
    """The numpy definitions instead of the compiled passes (hypothesis runs many cases per test, so no
    function-scoped monkeypatch)."""
    os.environ["TDPTRACE_PURE"] = "1"
    try:
        yield
    finally:
        del os.environ["TDPTRACE_PURE"]


def both(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    cls = classify(df, Encoding.PRESENT_BIT)
    native = retained_series(df, cls)
    with pure_path():
        pure = retained_series(df, cls)
    assert native.root_level == pure.root_level
    return native.changes, pure.changes


spte = st.sampled_from([0, P | 0x1000, P | HUGE | 0x2000, 0x3000, P | 0x4000])
row = st.tuples(st.integers(0, 1), st.sampled_from([0, 1, 511, 512, 513, 262144, 262145]), st.integers(1, 4),
                spte, spte)


@settings(max_examples=300, deadline=None)
@given(st.lists(row, min_size=1, max_size=60))
def test_random_histories_same_series(rows):
    a, b = both(frame(rows))
    pd.testing.assert_frame_equal(a, b)


def test_synthetic_teardown_same_series():
    sys.path.insert(0, str(REPO / "bench"))
    from metrics_bench import synthetic_sptes

    a, b = both(synthetic_sptes(300_000))
    assert len(a) > 100
    pd.testing.assert_frame_equal(a, b)


def test_out_of_order_rows_take_the_numpy_path():
    df = frame([(0, 0, 2, 0, P | 0x1000), (0, 0, 1, 0, P | 0x5000), (0, 0, 1, P | 0x5000, 0)]).iloc[::-1]
    a, b = both(df.reset_index(drop=True))
    pd.testing.assert_frame_equal(a, b)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1 << 20), st.integers(1, 5),
                          st.sampled_from([0, P, P | HUGE, HUGE, 1 << 59, 3 << 52, (3 << 52) | P, 0x5A0, 0xFFFF]),
                          st.integers(0, (1 << 64) - 1)), min_size=1, max_size=40),
       st.sampled_from(list(Encoding)))
def test_classify_same_columns(rows, encoding):
    df = frame(rows)
    native = classify(df, encoding)
    with pure_path():
        pure = classify(df, encoding)
    pd.testing.assert_frame_equal(native, pure)
