"""Zap operations: what kind of work a zap span does, and which spans make up one operation.

A root teardown on 6.1 is two top-level __tdp_mmu_zap_root passes when only they are traced, or one
kvm_tdp_mmu_zap_invalidated_roots span around them; on 6.12 it is tdp_mmu_zap_root around four passes.
Grouping top-level spans into operations makes "yields per teardown" comparable across those shapes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from tdptrace.capture import Capture
from tdptrace.capture.spans import ancestor_pairs
from tdptrace.kernel.functions import operation_class


def df_operations(cap: Capture) -> pd.DataFrame:
    """Per span, its top-level ancestor and operation.

    Columns: span_id, top_id, op_id, op_class. An operation is a run of consecutive top-level spans on one
    task with the same class, root and caller function (the passes of one teardown); nested spans belong
    to their top-level ancestor's operation.
    """
    sp = cap.spans
    if sp.empty:
        return pd.DataFrame({"span_id": [], "top_id": [], "op_id": [], "op_class": []})
    ids = sp["span_id"].to_numpy(np.int64)
    parent = sp.set_index("span_id")["parent_id"]
    pairs = ancestor_pairs(ids, parent)
    # the top-level ancestor is the last one reached walking up: the pair whose span has no parent
    is_top = parent.reindex(pairs["span_id"]).isna().to_numpy()
    top_of = pd.Series(pairs["span_id"].to_numpy()[is_top], index=pairs["i"].to_numpy()[is_top])
    top = sp[sp["parent_id"].isna()].sort_values(["tid", "ts", "seq"], kind="stable")
    caller_fn = top["caller"].fillna("").astype(str).str.split("+", n=1).str[0]
    key = pd.DataFrame({"tid": top["tid"].to_numpy(), "cls": top["function"].map(operation_class).to_numpy(),
                        "root": top["root"].fillna("").astype(str).to_numpy(), "caller": caller_fn.to_numpy()})
    changed = (key != key.shift(1)).any(axis=1).to_numpy()
    op_of_top = pd.Series(np.cumsum(changed) - 1, index=top["span_id"].to_numpy())
    cls_of_top = pd.Series(key["cls"].to_numpy(), index=top["span_id"].to_numpy())
    top_ids = top_of.reindex(np.arange(len(ids))).to_numpy(np.int64)
    return pd.DataFrame({"span_id": ids, "top_id": top_ids, "op_id": op_of_top.reindex(top_ids).to_numpy(np.int64),
                         "op_class": cls_of_top.reindex(top_ids).to_numpy()})
