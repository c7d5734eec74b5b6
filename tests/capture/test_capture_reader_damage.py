"""Named cases of the damage the structural fuzzer (tests/robustness/test_fuzz_capture_structure.py) explores:
each is one line naming what is wrong, through the real command, and never a traceback."""
from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tracegen import Trace, leaf4k, nonleaf

import tdptrace
from tdptrace.cli import main
from tdptrace.importers import import_file


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    d = tmp_path_factory.mktemp("reader")
    t = (Trace().get_page(0, 1).spte(0, 2, 0, nonleaf(5)).spte(1, 1, 0, leaf4k(1))
         .enter("tdp_mmu_zap_leafs", "root=0xffff8946134bab80 start=0x0 end=0x200 can_yield=1 flush=0")
         .enter("tdp_mmu_zap_leafs", "root=0xffff8946134bab80 start=0x0 end=0x100 can_yield=1 flush=0")
         .spte(1, 1, leaf4k(1), 0).yield_().ret("tdp_mmu_zap_leafs", args="ret=1")
         .yield_(write=False).ret("tdp_mmu_zap_leafs", args="ret=0").prepare_zap(0, 1))
    (d / "t.txt").write_text(t.text())
    import_file(d / "t.txt", d / "c.tdp", kernel_release="6.1.0")
    return d / "c.tdp"


def _one_line(cap, capsys, *needles):
    capsys.readouterr()
    rc = main(["summary", str(cap)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc != 0 and len(err) == 1 and "Traceback" not in err[0], err
    assert all(n in err[0] for n in needles), err


def _part(cap, table):
    return sorted((cap / table).glob("part-*.parquet"))[0]


def test_a_chunk_from_another_table(pristine, tmp_path, capsys):
    cap = tmp_path / "c.tdp"
    shutil.copytree(pristine, cap)
    shutil.copy(_part(cap, "sptes"), _part(cap, "spans"))
    _one_line(cap, capsys, "table 'spans' is damaged", "is missing")


def test_a_dropped_column(pristine, tmp_path, capsys):
    cap = tmp_path / "c.tdp"
    shutil.copytree(pristine, cap)
    f = _part(cap, "sptes")
    pq.write_table(pq.read_table(f).drop_columns(["level"]), f)
    _one_line(cap, capsys, "table 'sptes' is damaged", "column 'level' is missing")


def test_nulls_where_the_format_has_none(pristine, tmp_path, capsys):
    cap = tmp_path / "c.tdp"
    shutil.copytree(pristine, cap)
    f = _part(cap, "sptes")
    t = pq.read_table(f)
    i = t.column_names.index("level")
    t = t.set_column(i, pa.field("level", pa.uint8(), nullable=True), pa.nulls(t.num_rows, pa.uint8()))
    pq.write_table(t, f)
    _one_line(cap, capsys, "column 'level' has")


def test_a_span_that_is_its_own_parent(pristine, tmp_path, capsys):
    cap = tmp_path / "c.tdp"
    shutil.copytree(pristine, cap)
    f = _part(cap, "spans")
    t = pq.read_table(f)
    i = t.column_names.index("parent_id")
    t = t.set_column(i, t.schema.field(i), t.column("span_id").cast(pa.int64()))
    pq.write_table(t, f)
    _one_line(cap, capsys, "table 'spans' is damaged", "not a tree")


def test_a_yield_printed_after_its_spans_return_but_timed_inside_it(tmp_path):
    """Trace lines out of time order (per-CPU buffers merge so): the yield is attributed to the span by its
    order in the trace, and the import no longer crashes writing into a read-only array."""
    base = Trace().enter("tdp_mmu_zap_leafs", "root=0xffff8946134bab80 start=0x0 end=0x200 can_yield=1 flush=0")
    base.enter("tdp_mmu_zap_leafs", "root=0xffff8946134bab80 start=0x0 end=0x100 can_yield=1 flush=0")
    base.ret("tdp_mmu_zap_leafs", args="ret=1").ret("tdp_mmu_zap_leafs", args="ret=1")
    late = ("            qemu-100     [000] ...1.     1.000002: cr: (__cond_resched_rwlock_write+0x0/0x50)",
            "            qemu-100     [000] ...1.     1.000003: cr_ret: (tdp_mmu_zap_leafs+0x196/0x1e0 [kvm] <- "
            "__cond_resched_rwlock_write) ret=1")
    for line in late:
        base.raw(line)
    (tmp_path / "t.txt").write_text(base.text())
    assert main(["import", str(tmp_path / "t.txt"), "-o", str(tmp_path / "c.tdp"), "-q"]) == 0
    cap = tdptrace.open(tmp_path / "c.tdp")
    assert len(cap.spans) == 2 and len(cap.yields) == 1
