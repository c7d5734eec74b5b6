"""The native tracefs scanner gives the pure parser's capture to the value: on every reference trace, and on text
that mixes every kind of line it must leave to the pure path (tgid columns, lost-event lines, tabs, UTF-8,
odd SPTE bodies, kprobes, markers, comments), including the same one-line error for a damaged line."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from refdata import REFERENCE, reference_trace

from tdptrace.errors import BadInput
from tdptrace.importers import fastscan, import_file

pytestmark = pytest.mark.skipif(not fastscan.available(), reason="the native scanner is not built here "
                                "(pip install -e . with a C compiler builds it)")

# Columns holding keyed hashes differ between two captures by their salt; the rest must be identical.
HASHED = {"vm", "root", "lock", "detail"}


def tables(cap: Path) -> dict[str, pa.Table]:
    out = {}
    for d in sorted(p for p in cap.iterdir() if p.is_dir()):
        out[d.name] = pa.concat_tables([pq.read_table(f) for f in sorted(d.glob("*.parquet"))])
    return out


def import_both(trace: Path, tmp_path: Path, monkeypatch, **kw) -> tuple[Path, Path]:
    native = tmp_path / "native.tdp"
    pure = tmp_path / "pure.tdp"
    import_file(trace, native, **kw)
    monkeypatch.setenv("TDPTRACE_PURE", "1")
    import_file(trace, pure, **kw)
    monkeypatch.delenv("TDPTRACE_PURE")
    return native, pure


def assert_same(native: Path, pure: Path) -> None:
    a, b = tables(native), tables(pure)
    assert a.keys() == b.keys()
    for name in a:
        cols = [c for c in a[name].column_names if c not in HASHED]
        assert a[name].select(cols).equals(b[name].select(cols)), name
        for c in set(a[name].column_names) & HASHED:  # same values hash alike within each capture
            ka = pa.table({"x": a[name].column(c)}).group_by("x").aggregate([]).num_rows
            kb = pa.table({"x": b[name].column(c)}).group_by("x").aggregate([]).num_rows
            assert ka == kb, (name, c)
    ma, mb = (json.loads((p / "meta.json").read_text()) for p in (native, pure))
    for key in ("events", "lost_events", "capabilities", "notes", "tables", "spte_encoding"):
        assert ma[key] == mb[key], key


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_traces_same_capture(name, tmp_path, monkeypatch):
    assert_same(*import_both(reference_trace(name), tmp_path, monkeypatch, kernel_release="6.1.0-56-amd64"))


MIXED = """\
# tracer: nop
#
# entries-in-buffer/entries-written: 30/33   #P:2
#
#        kvmtouch-134     [000] ...1.     3.541397: kvm_mmu_get_page: a comment that reads like an event line
        kvmtouch-134     [000] ...1.     3.541398: kvm_mmu_get_page: sp gen 0 gfn 0 l4 8-byte q0 direct wux nxe ad root 0 sync new
        kvmtouch-134     [000] ...1.     3.544214: kvm_tdp_mmu_spte_changed: as id 0 gfn 0 level 4 old_spte 0 new_spte 12c88827
        kvmtouch-134     [000] ...1.     3.544214: kvmmmu:kvm_tdp_mmu_spte_changed: as id 0 gfn 1 level 1 old_spte 0 new_spte 2be3e67
        kvmtouch-134     [000] ...1.     3.5442: kvm_tdp_mmu_spte_changed: as id 0 gfn 0x2 level 1 old_spte 0 new_spte 2be4e67
        kvmtouch-134     [000] ...1.     3.544215: kvm_tdp_mmu_spte_changed: as id 0 gfn 3 level 01 old_spte 0 new_spte 2be5e67
        kvmtouch-134     [000] ...1.     3.544216: kvm_tdp_mmu_spte_changed: xx yy 0 gfn 3 zz 1 old_spte 0 new_spte 2be5e67
        kvmtouch-134     [000] ...1.     3.544217: kvm_tdp_mmu_spte_changed: [FAILED TO PARSE] as_id=0 gfn=0x4 level=1 old_spte=0x0 new_spte=0x2be6e67
        kvm touch-135    ( 130) [001] d..1.     3.544218: kvm_tdp_mmu_spte_changed: as id 0 gfn 5 level 1 old_spte 0 new_spte 2be7e67
        kvm touch-135    (-------) [001] d..1.     3.544219: kvm_mmu_set_spte: gfn 5 spte 2be7e67 (rwxu) level 1 at 12c86028
        kvm touch-135    [001] d..1.     3.544220: kvm_mmu_spte_requested: gfn 6 pfn 2be8 level 1
CPU:1 [LOST 3 EVENTS]
        kvmtouch-134\t[000] ...1.     3.544221: kvm_mmu_spte_requested: gfn 7 pfn 2be9 level 1
        kvmtöuch-134     [000] ...1.     3.544222: kvm_mmu_spte_requested: gfn 8 pfn 2bea level 1
        kvmtouch-134     [000] ...1.     3.544223: zap_leafs_enter: (tdp_mmu_zap_leafs+0x0/0x1e0 [kvm]) kvm=0xffff8880a1b2c000 root=0xffff8880a1b2d000 start=0x0 end=0x100 can_yield=1 flush=0
        kvmtouch-134     [000] ...1.     3.544224: kvm_tdp_mmu_spte_changed: as id 0 gfn 0 level 1 old_spte 2be3e67 new_spte 0
        kvmtouch-134     [000] ...1.     3.544225: cond_resched_w: (__cond_resched_rwlock_write+0x0/0x90) lock=0xffff8880a1b2e000
        kvmtouch-134     [000] ...1.     3.544226: cond_resched_w_ret: (tdp_mmu_zap_leafs+0x74/0x1e0 [kvm] <- __cond_resched_rwlock_write) arg1=0x0
        kvmtouch-134     [000] ...1.     3.544227: zap_leafs_exit: (kvm_tdp_mmu_zap_leafs+0x60/0x90 [kvm] <- tdp_mmu_zap_leafs) arg1=0x1
        kvmtouch-134     [000] ...1.     3.544228: kvm_mmu_prepare_zap_page: sp gen 0 gfn 0 l1 8-byte q0 direct wux nxe ad root 0 sync
        kvmtouch-134     [000] ...1.     3.544229: some_other_event: hello at ffff8880a1b2f000
        -134     [000] ...1.     3.544230: kvm_mmu_zap_all_fast: kvm 0xffff8880a1b2c000
        kvmtouch-134     [000] ...1.     3.544231: (odd): (not a kprobe
this line is not a trace line
"""


def test_mixed_lines_same_capture(tmp_path, monkeypatch):
    trace = tmp_path / "mixed.txt"
    trace.write_text(MIXED)
    assert_same(*import_both(trace, tmp_path, monkeypatch, kernel_release="6.1.0-56-amd64"))


@pytest.mark.parametrize("bad", [
    "as id 0 gfn 0 level 9 old_spte 0 new_spte 1",
    "as id 300 gfn 0 level 1 old_spte 0 new_spte 1",
    "as id 0 gfn 12345678901234567 level 1 old_spte 0 new_spte 1",
    "as id 0 gfn zz level 1 old_spte 0 new_spte 1",
    "as id 0 gfn 0 level 1",
])
def test_damaged_spte_line_same_error(bad, tmp_path, monkeypatch):
    trace = tmp_path / "bad.txt"
    trace.write_text(MIXED.replace("as id 0 gfn 0 level 1 old_spte 2be3e67 new_spte 0", bad))
    errors = []
    for pure in ("0", "1"):
        monkeypatch.setenv("TDPTRACE_PURE", pure)
        with pytest.raises(BadInput) as exc:
            import_file(trace, tmp_path / f"x{pure}.tdp", kernel_release="6.1.0-56-amd64")
        errors.append(str(exc.value))
    assert errors[0] == errors[1]
