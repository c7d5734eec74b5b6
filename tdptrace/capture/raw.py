"""RawChunk: typed events decoded from one block of trace text or one batch of live records, the one shape
every writer hands to the assembler."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd


@dataclass
class RawChunk:
    """Typed events decoded from one block of lines (pandas frames, columns as in schema.py where shared)."""

    sptes: pd.DataFrame
    calls: pd.DataFrame
    page_tables: pd.DataFrame
    markers: pd.DataFrame
    counts: Counter = field(default_factory=Counter)
    unknown: Counter = field(default_factory=Counter)
    from_handle_changed_spte: bool = False  # SPTE rows came from the 5.10-style __handle_changed_spte kprobe
    waits: pd.DataFrame | None = None  # raw waiter events (capture.waits.RAW_COLUMNS), paired by the assembler

    def shifted(self, base: int) -> "RawChunk":
        """The same events with seq moved by `base` (blocks are decoded independently, numbered from 0)."""
        if base:
            for df in (self.sptes, self.calls, self.page_tables, self.markers, self.waits):
                if df is not None and len(df):
                    df["seq"] = df["seq"].to_numpy() + base
        return self
