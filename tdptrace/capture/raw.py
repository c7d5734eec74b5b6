"""RawChunk: typed events decoded from one block of trace text or one batch of live records, the one shape
every writer hands to the assembler."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa


@dataclass
class RawChunk:
    """Typed events decoded from one block of lines (pandas frames, columns as in schema.py where shared)."""

    sptes: pd.DataFrame | pa.Table  # a Table (SPTES schema) from the native import path
    calls: pd.DataFrame
    page_tables: pd.DataFrame
    markers: pd.DataFrame
    counts: Counter = field(default_factory=Counter)
    unknown: Counter = field(default_factory=Counter)
    from_handle_changed_spte: bool = False  # SPTE rows came from the 5.10-style __handle_changed_spte kprobe
    waits: pd.DataFrame | None = None  # raw waiter events (capture.waits.RAW_COLUMNS), paired by the assembler
    marker_table: pa.Table | None = None  # more markers, already in the MARKERS schema (the native import path)

    def shifted(self, base: int) -> "RawChunk":
        """The same events with seq moved by `base` (blocks are decoded independently, numbered from 0)."""
        if base:
            if isinstance(self.sptes, pa.Table):
                if self.sptes.num_rows:
                    seq = self.sptes.column("seq").to_numpy() + np.int64(base)
                    self.sptes = self.sptes.set_column(1, "seq", pa.array(seq))
            for df in (self.calls, self.page_tables, self.markers, self.waits) + (
                    () if isinstance(self.sptes, pa.Table) else (self.sptes,)):
                if df is not None and len(df):
                    df["seq"] = df["seq"].to_numpy() + base
            if self.marker_table is not None and self.marker_table.num_rows:
                seq = self.marker_table.column("seq").to_numpy() + np.int64(base)
                self.marker_table = self.marker_table.set_column(1, "seq", pa.array(seq))
        return self
