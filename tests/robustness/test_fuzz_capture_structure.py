"""Structural fuzzing of capture reading: chunks that are well-formed Parquet but wrong for their table (another
table's chunk, a column dropped, retyped, renamed or full of nulls, absurd values: levels past 5, negative or
reversed times, ids that point nowhere or at themselves), meta.json values of the wrong kind or range, and
byte damage on top. Each case is opened and run through summary and triage (the analysis every command
shares): it either works or raises TdpError (one line on the command line); no other exception may escape.

The number of cases is fixed per run: TDPTRACE_FUZZ_CASES (default 300 in the suite; a release check runs
5,000) with derandomize=True, so a failure reproduces on every run.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tracegen import Trace, leaf4k, nonleaf

import tdptrace
from tdptrace.errors import TdpError
from tdptrace.importers import import_file
from tdptrace.metrics.summary import summarize
from tdptrace.oncall.triage import triage

CASES = int(os.environ.get("TDPTRACE_FUZZ_CASES", "300"))
WRITTEN = ("sptes", "spans", "yields", "page_tables", "markers", "lost")
COUNTER = {"cases": 0, "clean_errors": 0}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzzstruct")
    t = Trace().get_page(0, 4).get_page(0, 3).get_page(0, 2).get_page(0, 1)
    t.spte(0, 4, 0, nonleaf(3)).spte(0, 3, 0, nonleaf(4)).spte(0, 2, 0, nonleaf(5)).spte(1, 1, 0, leaf4k(1))
    t.enter("tdp_mmu_zap_leafs", "root=0xffff8946134bab80 start=0x0 end=0x200 can_yield=1 flush=0")
    t.enter("tdp_mmu_zap_leafs", "root=0xffff8946134bab80 start=0x0 end=0x100 can_yield=1 flush=0")
    t.spte(1, 1, leaf4k(1), 0).yield_().spte(0, 2, nonleaf(5), 0).ret("tdp_mmu_zap_leafs", args="ret=1")
    t.yield_(write=False).ret("tdp_mmu_zap_leafs", args="ret=0").prepare_zap(0, 1)
    t.enter("kvm_tdp_mmu_put_root", "root=0xffff8946134bab80").raw("CPU:0 [LOST 2 EVENTS]")
    t.spte(2, 1, 0, leaf4k(2), tid=200).enter("tdp_mmu_zap_leafs", "root=0xffff8946134bab80", tid=200)
    (d / "t.txt").write_text(t.text())
    import_file(d / "t.txt", d / "c.tdp", kernel_release="6.1.0")
    for name in WRITTEN:
        assert list((d / "c.tdp" / name).glob("part-*.parquet")), name
    return d / "c.tdp"


def _chunk(cap: Path, table: str) -> Path:
    return sorted((cap / table).glob("part-*.parquet"))[0]


# Values of each Arrow kind that break assumptions: sign, range, order, size.
_ODD_INTS = [0, -1, 1, 5, 6, 7, 255, -128, 2**31 - 1, -2**31, 2**62, -2**62, 10**15]
_ODD_STRS = ["", " ", "\x1b]0;x\x07", "0" * 300, "tdp_mmu_zap_leafs", "__cond_resched_rwlock_write", "free", "alloc",
             "lookup", "call", "return", "ptr:00", "\u202e", "none"]


def _odd_values(draw, field: pa.Field, n: int) -> pa.Array:
    t = field.type
    if pa.types.is_boolean(t):
        vals = draw(st.lists(st.sampled_from([True, False, None]), min_size=n, max_size=n))
    elif pa.types.is_integer(t):
        info = np.iinfo(t.to_pandas_dtype())
        pool = [v for v in _ODD_INTS if info.min <= v <= info.max] + [int(info.min), int(info.max)]
        vals = draw(st.lists(st.sampled_from(pool + [None]), min_size=n, max_size=n))
    elif pa.types.is_string(t):
        vals = draw(st.lists(st.sampled_from(_ODD_STRS + [None]), min_size=n, max_size=n))
    else:
        vals = [None] * n
    return pa.array(vals, type=t)


@st.composite
def table_damage(draw, cap: Path):
    """One structural edit of one chunk, applied to the copy at `cap`."""
    table = draw(st.sampled_from(WRITTEN))
    f = _chunk(cap, table)
    tbl = pq.read_table(f)
    op = draw(st.sampled_from(["other_table", "drop", "retype", "rename", "nulls", "values", "values", "values",
                               "empty", "reorder", "extra_chunk", "duplicate_rows"]))
    if op == "other_table":
        src = draw(st.sampled_from([t for t in WRITTEN if t != table]))
        shutil.copy(_chunk(cap, src), f)
        return op
    if op == "extra_chunk":  # a chunk beyond what meta lists, possibly from another table
        src = draw(st.sampled_from(WRITTEN))
        shutil.copy(_chunk(cap, src), f.with_name("part-000099.parquet"))
        return op
    name = draw(st.sampled_from(tbl.column_names))
    i = tbl.column_names.index(name)
    if op == "drop":
        tbl = tbl.remove_column(i)
    elif op == "retype":
        to = draw(st.sampled_from([pa.string(), pa.int64(), pa.float64(), pa.uint8(), pa.bool_(), pa.int8()]))
        try:
            col = tbl.column(i).cast(to, safe=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            col = pa.nulls(tbl.num_rows, type=to)
        tbl = tbl.set_column(i, pa.field(name, to), col)
    elif op == "rename":
        tbl = tbl.rename_columns([c if j != i else c + "_x" for j, c in enumerate(tbl.column_names)])
    elif op == "nulls":
        field = tbl.schema.field(i)
        tbl = tbl.set_column(i, pa.field(name, field.type, nullable=True), pa.nulls(tbl.num_rows, type=field.type))
    elif op == "values":
        field = tbl.schema.field(i)
        tbl = tbl.set_column(i, field.with_nullable(True), _odd_values(draw, field, tbl.num_rows))
    elif op == "empty":
        tbl = tbl.slice(0, 0)
    elif op == "reorder":
        tbl = tbl.take(pa.array(list(range(tbl.num_rows))[::-1], type=pa.int64()))
    elif op == "duplicate_rows":
        tbl = pa.concat_tables([tbl, tbl])
    pq.write_table(tbl, f)
    return op


_META_VALUES = [None, 0, -1, 1, 2**70, "", "x", "6.1.0", "5.10.0", "legacy", "present-bit", "complete", "recording",
                [], {}, [1], {"a": 1}, {"rows": 1, "chunks": 5}, True, 1.5]


@st.composite
def meta_damage(draw, cap: Path):
    meta = json.loads((cap / "meta.json").read_text())
    key = draw(st.sampled_from(sorted(meta)))
    if isinstance(meta[key], dict) and meta[key] and draw(st.booleans()):
        inner = draw(st.sampled_from(sorted(meta[key])))
        meta[key][inner] = draw(st.sampled_from(_META_VALUES))
    else:
        meta[key] = draw(st.sampled_from(_META_VALUES))
    (cap / "meta.json").write_text(json.dumps(meta))
    return f"meta.{key}"


@settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_structurally_damaged_captures_analyse_or_fail_cleanly(pristine, data):
    with tempfile.TemporaryDirectory() as d:
        cap = Path(d) / "c.tdp"
        shutil.copytree(pristine, cap)
        edits = [data.draw(st.one_of(table_damage(cap), meta_damage(cap))) for _ in range(data.draw(st.integers(1, 3)))]
        COUNTER["cases"] += 1
        try:
            c = tdptrace.open(cap)
            s = summarize(c)
            json.dumps(s)
            try:
                triage(c, 10_000_000)
            except TdpError:
                pass
        except TdpError as exc:
            COUNTER["clean_errors"] += 1
            line = exc.line()
            assert line.strip() and "\n" not in line, edits
            return
        except Exception as exc:  # noqa: BLE001 - the point of the test
            raise AssertionError(f"{edits}: {type(exc).__name__}: {exc}") from exc


def test_fuzz_case_count_is_reported():
    """Runs after the fuzzer (same module): the count it ran, printed for the record (pytest -s shows it)."""
    if COUNTER["cases"]:
        print(f"\nstructural capture fuzz: {COUNTER['cases']} cases, {COUNTER['clean_errors']} one-line errors, "
              "0 tracebacks")
        assert COUNTER["cases"] >= min(CASES, 1)
