"""metrics.operations: consecutive top-level passes of one teardown form one operation; nested spans join
their top-level ancestor's operation; another task, root or class starts a new one."""
from __future__ import annotations

from smallcaps import span, write_capture

import tdptrace
from tdptrace.metrics.operations import df_operations

MS = 1_000_000


def test_passes_of_one_teardown_are_one_operation(tmp_path):
    spans = [
        span(0, 0, 5 * MS, "tdp_mmu_zap_leafs", root="r0", caller="kvm_tdp_mmu_zap_leafs+0x5/0x90"),
        span(1, 10 * MS, 20 * MS, "__tdp_mmu_zap_root", root="r0", caller="kvm_tdp_mmu_zap_all+0x1/0x2",
             zap_level=3),
        span(2, 20 * MS, 21 * MS, "__tdp_mmu_zap_root", root="r0", caller="kvm_tdp_mmu_zap_all+0x1/0x2",
             zap_level=4),
        span(3, 22 * MS, 23 * MS, "__tdp_mmu_zap_root", root="r1", caller="kvm_tdp_mmu_zap_all+0x1/0x2"),
        span(4, 30 * MS, 40 * MS, "tdp_mmu_zap_root", root="r1"),
        span(5, 31 * MS, 39 * MS, "__tdp_mmu_zap_root", root="r1", parent_id=4, depth=1),
        span(6, 24 * MS, 25 * MS, "__tdp_mmu_zap_root", root="r1", tid=200, pid=200,
             caller="kvm_tdp_mmu_zap_all+0x1/0x2"),
    ]
    cap = tdptrace.open(write_capture(tmp_path / "c.tdp", spans=spans))
    ops = df_operations(cap).set_index("span_id")
    assert ops.loc[0, "op_class"] == "leaf zap"
    assert ops.loc[1, "op_id"] == ops.loc[2, "op_id"] != ops.loc[0, "op_id"]   # two passes, one teardown
    assert ops.loc[3, "op_id"] != ops.loc[2, "op_id"]                            # another root
    assert ops.loc[5, "top_id"] == 4 and ops.loc[5, "op_id"] == ops.loc[4, "op_id"]  # nested pass
    assert ops.loc[6, "op_id"] not in set(ops.loc[[0, 1, 2, 3, 4], "op_id"])     # another task
    assert set(ops["op_class"]) == {"leaf zap", "root teardown"}


def test_no_spans_no_operations(tmp_path):
    cap = tdptrace.open(write_capture(tmp_path / "e.tdp", sptes=[{"ts": 1, "gfn": 0, "old_spte": 0,
                                                                   "new_spte": 1 << 11}]))
    assert df_operations(cap).empty
