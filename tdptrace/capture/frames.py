"""Capture tables held in memory: a live stream's chunks accumulated as they arrive.

`Frames` is a `Capture` whose tables come from chunks handed to `add` instead of Parquet files, converted to
pandas exactly as the reader converts a capture on disk, so every metric that takes a capture takes these.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from tdptrace.capture.schema import TABLES, TITLES, unit
from tdptrace.capture.store import Capture, CaptureMeta, columns_doc, dtype_name, table_frame


class Frames(Capture):
    """The tables of a capture being recorded, in memory; `meta` is the recorder's own (it fills as it goes)."""

    def __init__(self, meta: CaptureMeta, path: Path | None = None) -> None:
        super().__init__(Path(path) if path is not None else Path("<live>"), meta)
        self._chunks: dict[str, list[pa.Table]] = {name: [] for name in TABLES}

    def add(self, table: str, chunk: pa.Table) -> None:
        """Append one chunk of `table` (its schema's columns); frames read before are recomputed on next use."""
        if table not in TABLES:
            raise KeyError(table)
        if chunk.num_rows:
            self._chunks[table].append(chunk.select(TABLES[table].names).cast(TABLES[table]))
            self._frames.clear()  # derived frames (e.g. SPTE classes) too

    def rows(self, table: str) -> int:
        """Rows of `table` held so far."""
        return sum(c.num_rows for c in self._chunks[table])

    def has(self, table: str) -> bool:
        return self.rows(table) > 0

    def table(self, name: str, columns=None) -> pd.DataFrame:
        """Every chunk of the table so far as one frame (empty with the schema's columns when none)."""
        if name not in TABLES:
            raise KeyError(name)
        cols = list(columns) if columns is not None else None
        key = name if cols is None else f"{name}:{','.join(cols)}"
        if key not in self._frames:
            chunks = self._chunks[name]
            tbl = pa.concat_tables(chunks) if chunks else None
            df = table_frame(name, tbl)
            self._frames[key] = df[cols] if cols is not None else df
        return self._frames[key]

    # The reader caches these once per opened capture; here they change with every chunk.
    sptes = property(lambda self: self.table("sptes"), doc=f"{TITLES['sptes']}; {columns_doc('sptes')}.")
    spans = property(lambda self: self.table("spans"), doc=f"{TITLES['spans']}; {columns_doc('spans')}.")
    yields = property(lambda self: self.table("yields"), doc=f"{TITLES['yields']}; {columns_doc('yields')}.")
    page_tables = property(lambda self: self.table("page_tables"),
                           doc=f"{TITLES['page_tables']}; {columns_doc('page_tables')}.")
    markers = property(lambda self: self.table("markers"), doc=f"{TITLES['markers']}; {columns_doc('markers')}.")
    lost = property(lambda self: self.table("lost"), doc=f"{TITLES['lost']}; {columns_doc('lost')}.")
    stacks = property(lambda self: self.table("stacks"), doc=f"{TITLES['stacks']}; {columns_doc('stacks')}.")
    waits = property(lambda self: self.table("waits"), doc=f"{TITLES['waits']}; {columns_doc('waits')}.")

# The capture-format sections that say what each table's rows and columns mean.
_ANCHORS = {
    "sptes": "sptes-one-row-per-spte-change", "spans": "spans-one-row-per-call-of-a-zap-function-zap-span",
    "yields": "yields-one-row-per-call-of-a-yield-point", "page_tables": "page_tables-page-table-allocations-and-frees",
    "markers": "markers-everything-else-worth-keeping-in-time-order", "lost": "lost-where-events-were-lost",
    "stacks": "stacks-kernel-stacks-of-spans-record---stacks", "waits": "waits-who-waited-record---waiters",
}


def frames_markdown() -> str:
    """The frame reference of docs/api.md: per table, every column with its pandas dtype, whether it can be
    missing (<NA>) and its unit, in schema order; generated from the schema so the page cannot drift."""
    out = []
    for table, schema in TABLES.items():
        out += [f"### {table}", "", f"Meaning of rows and columns: [capture format](capture-format.md#{_ANCHORS[table]}).",
                "", "| column | dtype | missing values | unit |", "|---|---|---|---|"]
        for f in schema:
            out.append(f"| {f.name} | {dtype_name(f)} | {'yes' if f.nullable else 'no'} | {unit(f.name)} |")
        out.append("")
    return "\n".join(out)
