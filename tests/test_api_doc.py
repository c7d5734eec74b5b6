"""docs/api.md lists every public name (tdptrace.__all__) and exactly the schema's columns of every table, in
order, with the dtypes the reader gives: a column added to the schema, or a public name added to the package,
without its documentation fails here."""
from __future__ import annotations

import re
from pathlib import Path

import tdptrace
from tdptrace.capture.frames import frames_markdown
from tdptrace.capture.schema import TABLES
from tdptrace.capture.store import table_frame

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _sections(text: str) -> dict[str, str]:
    return dict(re.findall(r"^### (\w+)\n(.*?)(?=^### |^## |\Z)", text, re.M | re.S))


def test_every_public_name_is_documented():
    text = DOC.read_text()
    headings = set(re.findall(r"^### (\w+)$", text, re.M))
    rows = set(re.findall(r"^\| (\w+) \|", text, re.M))
    missing = [n for n in tdptrace.__all__ if n not in headings | rows]
    assert not missing, f"docs/api.md does not document {missing}"


def test_the_frame_columns_are_exactly_the_schemas():
    text = DOC.read_text()
    block = text.split("<!-- frames:begin -->\n")[1].split("<!-- frames:end -->")[0]
    assert block == frames_markdown(), ("docs/api.md's frame columns are stale: paste "
                                        "tdptrace.capture.frames.frames_markdown() between the frames markers")
    sections = _sections(block)
    assert list(sections) == list(TABLES)
    for table, body in sections.items():
        rows = re.findall(r"^\| (\w+) \| (\w+) \| (yes|no) \|", body, re.M)
        assert [r[0] for r in rows] == TABLES[table].names, table
        dtypes = table_frame(table).dtypes
        assert [r[1] for r in rows] == [str(dtypes[c]) for c in TABLES[table].names], table
        assert [r[2] == "yes" for r in rows] == [f.nullable for f in TABLES[table]], table


def test_the_generator_would_notice_a_new_column(monkeypatch):
    import pyarrow as pa

    from tdptrace.capture import schema

    wider = pa.schema(list(schema.MARKERS) + [pa.field("extra_ns", pa.int64())])
    monkeypatch.setitem(schema.TABLES, "markers", wider)
    assert "| extra_ns | Int64 | yes | ns |" not in DOC.read_text()
    assert "| extra_ns | Int64 | yes | ns |" in frames_markdown()
