"""A damaged capture directory: `tdptrace summary` prints one line and exits non-zero, never a traceback.

Every table of a small capture (SPTEs, spans, yields, page tables, markers, lost) is damaged in turn - missing,
truncated, garbage, the wrong schema - and so is meta.json - missing, not JSON, the wrong shape, an unknown
format version. Most cases run the CLI in this process (cli.main, fast); two run it as a real subprocess.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tracegen import Trace, leaf4k, nonleaf

from tdptrace.capture.schema import TABLES
from tdptrace.cli import main
from tdptrace.importers import import_file

TABLES_WRITTEN = ("sptes", "spans", "yields", "page_tables", "markers", "lost")
META_FIELDS = ("source", "kernel", "kvm", "host", "clock", "probes", "capabilities", "events", "lost_events",
               "spte_encoding", "status", "tables", "created_unix_ns", "tool_version", "format", "format_version", "notes")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A capture with a row in every table the importer writes."""
    d = tmp_path_factory.mktemp("pristine")
    t = (Trace().get_page(0, 1).spte(0, 2, 0, nonleaf(5)).spte(1, 1, 0, leaf4k(1))
         .enter("tdp_mmu_zap_leafs", "root=0xffff8946134bab80 start=0x0 end=0x200 can_yield=1 flush=0")
         .spte(1, 1, leaf4k(1), 0).yield_().ret("tdp_mmu_zap_leafs", args="ret=1").prepare_zap(0, 1)
         .enter("kvm_tdp_mmu_put_root", "root=0xffff8946134bab80").raw("CPU:0 [LOST 2 EVENTS]")
         .spte(2, 1, 0, leaf4k(2)))
    (d / "t.txt").write_text(t.text())
    import_file(d / "t.txt", d / "c.tdp", kernel_release="6.1.0")
    for name in TABLES_WRITTEN:
        assert list((d / "c.tdp" / name).glob("part-*.parquet")), name
    return d / "c.tdp"


def summary_fails_in_one_line(cap: Path, capsys, needle: str) -> str:
    rc = main(["summary", str(cap)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("tdptrace: error: "), err
    assert needle in err[0], err[0]
    return err[0]


def _meta(cap: Path) -> dict:
    return json.loads((cap / "meta.json").read_text())


def _set_meta(cap: Path, **changes) -> None:
    (cap / "meta.json").write_text(json.dumps(_meta(cap) | changes))


def _chunk(cap: Path, table: str) -> Path:
    return sorted((cap / table).glob("part-*.parquet"))[0]


META_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (lambda c: (c / "meta.json").unlink(), "meta.json is missing"),
    "chunk counts not numbers": (lambda c: _set_meta(c, tables={"sptes": {"rows": "x", "chunks": 1}}), "meta.json"),
    "empty": (lambda c: (c / "meta.json").write_text(""), "unreadable meta.json"),
    "truncated": (lambda c: (c / "meta.json").write_text((c / "meta.json").read_text()[:100]), "unreadable meta.json"),
    "binary": (lambda c: (c / "meta.json").write_bytes(b"\xff\xfe\x00garbage"), "unreadable meta.json"),
    "a list": (lambda c: (c / "meta.json").write_text("[1, 2]"), "not a tdptrace capture"),
    "a directory": (lambda c: ((c / "meta.json").unlink(), (c / "meta.json").mkdir()), "meta.json"),
    "other format": (lambda c: _set_meta(c, format="something-else"), "not a tdptrace capture"),
    "version 2": (lambda c: _set_meta(c, format_version=2), "format version 2 is not supported"),
    "version as text": (lambda c: _set_meta(c, format_version="1"), "format version 1 is not supported"),
    "no source": (lambda c: (lambda m: (m.pop("source"), (c / "meta.json").write_text(json.dumps(m))))(_meta(c)),
                  "no 'source'"),
    "tables not a dict": (lambda c: _set_meta(c, tables=["sptes"]), "meta.json"),
    "table info not a dict": (lambda c: _set_meta(c, tables={"sptes": 5}), "meta.json"),
    "events not a dict": (lambda c: _set_meta(c, events="x"), "meta.json"),
    "notes not a list": (lambda c: _set_meta(c, notes=5), "meta.json"),
    "lost_events not a dict": (lambda c: _set_meta(c, lost_events=[]), "meta.json"),
    "unexpected field type": (lambda c: _set_meta(c, source="import"), "meta.json"),
}


@pytest.mark.parametrize("damage", list(META_DAMAGE))
def test_damaged_meta(pristine, tmp_path, capsys, damage):
    cap = tmp_path / "c.tdp"
    shutil.copytree(pristine, cap)
    fn, needle = META_DAMAGE[damage]
    fn(cap)
    summary_fails_in_one_line(cap, capsys, needle)


def _wrong_schema(path: Path) -> None:
    pq.write_table(pa.table({"ts": pa.array(["not", "numbers"])}), path)


CHUNK_DAMAGE: dict[str, Callable[[Path], None]] = {
    "removed directory": lambda p: shutil.rmtree(p.parent),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "empty file": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(os.urandom(600)),
    "garbage with parquet magic": lambda p: p.write_bytes(b"PAR1" + os.urandom(600) + b"PAR1"),
    "wrong schema": _wrong_schema,
    "a directory": lambda p: (p.unlink(), p.mkdir()),
}


@pytest.mark.parametrize("table", [t for t in TABLES_WRITTEN if t != "lost"])
@pytest.mark.parametrize("damage", list(CHUNK_DAMAGE))
def test_damaged_table(pristine, tmp_path, capsys, table, damage):
    cap = tmp_path / "c.tdp"
    shutil.copytree(pristine, cap)
    CHUNK_DAMAGE[damage](_chunk(cap, table))
    line = summary_fails_in_one_line(cap, capsys, table)
    assert "missing" in line if damage == "removed directory" else "damaged" in line


@pytest.mark.parametrize("damage", list(CHUNK_DAMAGE))
def test_damaged_lost_table(pristine, tmp_path, damage):
    """summary takes lost-event totals from meta.json; whoever reads the lost table gets BadCapture."""
    import tdptrace
    from tdptrace.errors import BadCapture

    cap = tmp_path / "c.tdp"
    shutil.copytree(pristine, cap)
    CHUNK_DAMAGE[damage](_chunk(cap, "lost"))
    with pytest.raises(BadCapture, match="lost"):
        tdptrace.open(cap).lost


def test_a_removed_chunk_is_noticed(tmp_path, capsys):
    """meta.json counts the chunks: a table with one chunk file fewer is damaged, not silently shorter."""
    from smallcaps import _frame

    from tdptrace.capture import CaptureMeta, CaptureWriter

    with CaptureWriter(tmp_path / "c.tdp", CaptureMeta(source={"kind": "test"})) as w:
        for i in range(3):
            w.append("sptes", _frame("sptes", [{"ts": i, "gfn": i, "old_spte": 0, "new_spte": 1 << 11}], i))
    (tmp_path / "c.tdp" / "sptes" / "part-000001.parquet").unlink()
    summary_fails_in_one_line(tmp_path / "c.tdp", capsys, "2 of 3 chunk files")


def test_pristine_capture_is_fine(pristine, capsys):
    """The damage tests above fail because of the damage, not because the capture was bad to begin with."""
    assert main(["summary", str(pristine), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["zaps_by_level"] == {"1": {"leaf": 1, "nonleaf": 0}}
    assert (len(s["spans"]), s["yields"]["count"], s["lost_events"]) == (1, 1, 2)


def test_unfinished_capture_is_read_with_a_note(pristine, tmp_path, capsys):
    """A writer killed half-way leaves status 'recording': readable, and the summary says it is incomplete."""
    cap = tmp_path / "c.tdp"
    shutil.copytree(pristine, cap)
    _set_meta(cap, status="recording")
    assert main(["summary", str(cap), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["zaps_by_level"] == {"1": {"leaf": 1, "nonleaf": 0}}
    assert any("incomplete" in n or "recording" in n for n in s["notes"]), s["notes"]


@pytest.mark.parametrize("what", ["meta", "chunk"])
def test_damage_through_the_real_command(pristine, tmp_path, what):
    cap = tmp_path / "c.tdp"
    shutil.copytree(pristine, cap)
    if what == "meta":
        (cap / "meta.json").write_text("{")
    else:
        _chunk(cap, "sptes").write_bytes(b"PAR1")
    p = subprocess.run([sys.executable, "-m", "tdptrace.cli", "summary", str(cap)], capture_output=True, text=True)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert len(lines) == 1 and "damaged" in lines[0], p.stderr


def test_every_table_has_a_schema_the_damage_tests_cover():
    assert set(TABLES_WRITTEN) <= set(TABLES)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 2**65) | st.floats() | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                     max_leaves=6)


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(field=st.sampled_from(sorted(META_FIELDS)), inner=st.one_of(st.none(), st.integers(0, 9)), value=_JSON)
def test_fuzzed_meta_values(pristine, capsys, field, inner, value):
    """Any JSON value in any meta.json field (or in a key inside one): summary works or fails in one line."""
    with tempfile.TemporaryDirectory() as d:
        cap = Path(d) / "c.tdp"
        shutil.copytree(pristine, cap)
        meta = _meta(cap)
        if inner is not None and isinstance(meta[field], dict) and meta[field]:
            meta[field][sorted(meta[field])[inner % len(meta[field])]] = value
        else:
            meta[field] = value
        (cap / "meta.json").write_text(json.dumps(meta))
        capsys.readouterr()
        rc = main(["summary", "--json", str(cap)])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert rc == 0 or (len(err) == 1 and err[0].startswith("tdptrace: error: ")), err
