"""capture.pagetables: presence classification and the retained non-leaf table series, on hand-made SPTE frames."""
from __future__ import annotations

import numpy as np
import pandas as pd

from tdptrace.capture.pagetables import classify, retained_series
from tdptrace.kernel.spte import Encoding

P = 1 << 11          # SPTE_MMU_PRESENT_MASK
HUGE = 1 << 7        # PT_PAGE_SIZE_MASK
FROZEN_610 = 0x80000000000005A0
NONPRESENT_610 = 1 << 63


def frame(rows: list[tuple[int, int, int, int]]) -> pd.DataFrame:
    """(gfn, level, old, new) rows, in event order."""
    g, lv, old, new = (np.array(c, dtype=np.uint64) for c in zip(*rows))
    n = len(rows)
    return pd.DataFrame({"seq": np.arange(n, dtype=np.int64), "ts": np.arange(n, dtype=np.int64) * 10,
                         "as_id": np.zeros(n, np.uint8), "gfn": g, "level": lv.astype(np.uint8),
                         "old_spte": old, "new_spte": new})


def test_classify_decides_presence_by_bit_11_and_leaf_by_old_value():
    f = frame([(0, 1, P | 0x1000, 0), (0, 2, P | HUGE, FROZEN_610), (0x200, 2, P | 0x5000, NONPRESENT_610),
               (0, 1, 0, P | 0x2000), (0, 1, P | 1, P | 3)])
    c = classify(f, Encoding.PRESENT_BIT)
    assert c["zap"].tolist() == [True, True, True, False, False]
    assert c["old_leaf"].tolist() == [True, True, False, False, True]
    assert c["install"].tolist() == [False, False, False, True, False]


def test_classify_legacy_counts_the_removed_marker_and_mmio_as_not_present():
    removed, mmio = 1 << 59, 3 << 52
    f = frame([(0, 1, 0x1007, removed), (0, 1, mmio | 5, 0), (0, 1, 0, 0x1007)])
    c = classify(f, Encoding.LEGACY)
    assert c["zap"].tolist() == [True, False, False] and c["install"].tolist() == [False, False, True]


def test_a_table_emptied_while_linked_is_retained_until_its_parent_is_zapped():
    """The 4K table is retained once emptied and gone when its 2M parent entry is zapped; that zap empties the
    2M table, which is still linked from above (its parent was never seen zapped), so it is retained then."""
    child = P | 0x9000   # non-leaf level-2 entry at gfn 0 linking the level-1 table with base gfn 0
    rows = [(0, 2, 0, child), (0, 1, 0, P | 1), (1, 1, 0, P | 1),      # link, then two installs
            (0, 1, P | 1, 0), (1, 1, P | 1, 0),                        # both zapped: table kept, empty
            (0, 2, child, 0)]                                          # parent zapped: unlinked
    f = frame(rows)
    s = retained_series(f, classify(f, Encoding.PRESENT_BIT))
    assert s.changes["retained"].tolist() == [1, 0, 1]
    assert s.changes["seq"].tolist() == [4, 5, 5] and s.changes["level"].tolist() == [1, 1, 2]
    assert s.at(np.array([4, 5, 6])).tolist() == [0, 1, 1]
    assert s.by_level_at_end() == {2: 1}


def test_a_table_zapped_before_the_capture_saw_its_installs_still_counts():
    """Entries populated before the capture began: the zaps alone show the table once had entries."""
    f = frame([(0x400, 1, P | 1, 0), (0x401, 1, P | 1, 0)])
    s = retained_series(f, classify(f, Encoding.PRESENT_BIT))
    assert s.changes["retained"].tolist() == [1] and s.by_level_at_end() == {1: 1}


def test_roots_are_never_retained():
    f = frame([(0, 4, P | 0x1000, 0)])
    s = retained_series(f, classify(f, Encoding.PRESENT_BIT))
    assert s.changes.empty and s.root_level == 4
