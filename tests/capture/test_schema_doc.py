"""docs/capture-format.md documents every column of every table: a column added to schema.py without its
documentation fails here."""
from __future__ import annotations

import re
from pathlib import Path

from tdptrace.capture.schema import TABLES, ZAP_COUNT_COLUMNS

DOC = Path(__file__).resolve().parents[2] / "docs" / "capture-format.md"


def test_every_table_and_column_documented():
    text = DOC.read_text()
    sections = dict(re.findall(r"### (\w+):(.*?)(?=\n### |\n## |\Z)", text, re.S))
    common = text.split("## Common columns")[1].split("## Tables")[0]
    for table, schema in TABLES.items():
        assert table in sections, f"table {table} not documented"
        body = sections[table]
        for f in schema:
            if f.name in ("ts", "seq", "cpu", "tid", "pid", "comm") and f.name in common and table != "lost":
                continue
            if f.name in ZAP_COUNT_COLUMNS:
                assert "leaf_l1 .. leaf_l5" in body
                continue
            assert re.search(rf"\b{f.name}\b", body), f"{table}.{f.name} not documented"
