"""Each rule of docs/metrics.md on a tiny hand-made trace: zaps, spans, yields and gaps, retained tables, losses."""
from __future__ import annotations

import pytest
from tracegen import FROZEN_610, NONPRESENT_610, REMOVED, Trace, leaf2m, leaf4k, nonleaf

import tdptrace
from tdptrace.importers import import_file
from tdptrace.metrics.summary import summarize as summary_of


def summarize(tmp_path, trace: Trace, kernel: str | None = "6.1.0-1-amd64", name: str = "t") -> dict:
    f = tmp_path / f"{name}.txt"
    f.write_text(trace.text())
    import_file(f, tmp_path / f"{name}.tdp", kernel_release=kernel)
    return summary_of(tdptrace.open(tmp_path / f"{name}.tdp"))


def test_zap_needs_present_old_and_not_present_new(tmp_path):
    t = Trace()
    t.spte(0x10, 1, 0, leaf4k(5))                  # install: not a zap
    t.spte(0x10, 1, leaf4k(5), leaf4k(5) | 0x40)   # present -> present (A/D bit): not a zap
    t.spte(0x10, 1, leaf4k(5), REMOVED)            # zap: removed marker is not present
    t.spte(0x11, 1, REMOVED, 0)                    # not present -> not present: nothing
    t.spte(0x12, 1, leaf4k(6), 0)                  # zap
    s = summarize(tmp_path, t)
    assert s["zaps_by_level"] == {"1": {"leaf": 2, "nonleaf": 0}}


def test_leaf_decided_by_old_spte_level_and_bit7(tmp_path):
    t = Trace()
    t.spte(0x200, 2, leaf2m(0x200), 0)             # 2M leaf (bit 7)
    t.spte(0x400, 2, nonleaf(77), REMOVED)         # non-leaf at level 2
    t.spte(0x0, 3, nonleaf(78), 0)                 # non-leaf at level 3
    t.spte(0x1, 1, leaf4k(1) & ~0x80, 0)           # level 1 is always leaf
    s = summarize(tmp_path, t)
    assert s["zaps_by_level"] == {"1": {"leaf": 1, "nonleaf": 0}, "2": {"leaf": 1, "nonleaf": 1},
                                  "3": {"leaf": 0, "nonleaf": 1}}


def test_610_encoding_frozen_and_bit63_nonpresent(tmp_path):
    t = Trace()
    t.spte(0x10, 1, NONPRESENT_610, leaf4k(5))     # install over the 6.10 non-present value
    t.spte(0x10, 1, leaf4k(5), FROZEN_610)         # zap to the frozen marker
    t.spte(0x10, 1, FROZEN_610, NONPRESENT_610)    # not present -> not present
    s = summarize(tmp_path, t, kernel="6.12.5+deb12-amd64")
    assert s["zaps_by_level"] == {"1": {"leaf": 1, "nonleaf": 0}}


def test_legacy_encoding_before_5_13(tmp_path):
    """5.10-5.12: present = non-zero, not MMIO, not the 5.11 removed value; bit 11 means nothing."""
    ro_leaf = (9 << 12) | 0x5          # present, read-only, no bit 11
    mmio = (3 << 52) | 0x1234          # an MMIO SPTE

    def trace(removed: int) -> Trace:
        t = Trace()
        t.spte(0x1, 1, ro_leaf, 0)         # zap under the legacy rule only
        t.spte(0x2, 1, mmio, 0)            # MMIO is not present: no zap
        t.spte(0x3, 1, leaf4k(3), removed)  # zap to 5.11's removed value (only 5.11-5.12 write it)
        return t

    legacy = summarize(tmp_path, trace(1 << 59), kernel="5.11.0-1-amd64", name="legacy")
    modern = summarize(tmp_path, trace(0), kernel="6.1.0-1-amd64", name="modern")
    assert legacy["zaps_by_level"] == {"1": {"leaf": 2, "nonleaf": 0}}
    assert legacy["capture"]["spte_encoding"] == "legacy"
    assert modern["zaps_by_level"] == {"1": {"leaf": 1, "nonleaf": 0}}
    with pytest.raises(tdptrace.errors.TdpError, match="the removed marker 1<<59 in SPTEs"):
        summarize(tmp_path, trace(1 << 59), kernel="6.1.0-1-amd64", name="refused")


def test_5_10_handle_changed_spte_kprobe_is_an_spte_change(tmp_path):
    t = Trace()
    t.raw("        qemu-100     [000] ...1.     1.000001: hcs: (__handle_changed_spte+0x0/0x580 [kvm]) "
          "as_id=0x0 gfn=0x20 old_spte=0x1234067 new_spte=0x0 level=1")
    t.raw("        qemu-100     [000] ...1.     1.000002: hcs: (__handle_changed_spte+0x0/0x580 [kvm]) "
          "as_id=0x0 gfn=0x0 old_spte=0x2345007 new_spte=0x0 level=2")
    s = summarize(tmp_path, t, kernel=None)
    assert s["zaps_by_level"] == {"1": {"leaf": 1, "nonleaf": 0}, "2": {"leaf": 0, "nonleaf": 1}}
    assert s["capture"]["spte_encoding"] == "legacy"


def test_7_3_handle_changed_spte_next_to_the_tracepoint_is_not_a_second_spte_source(tmp_path):
    """7.3 has a new __handle_changed_spte that itself fires kvm_tdp_mmu_spte_changed: counted once."""
    t = Trace()
    t.raw("        qemu-100     [000] ...1.     1.000001: hcs: (__handle_changed_spte+0x0/0x580 [kvm]) "
          "as_id=0x0 gfn=0x20 old_spte=0x1234067 new_spte=0x0 level=1")
    t.spte(0x20, 1, leaf4k(1), 0x80000000000001A0)
    s = summarize(tmp_path, t, kernel="7.3.4+deb14-amd64")
    assert s["zaps_by_level"] == {"1": {"leaf": 1, "nonleaf": 0}}


def test_nested_spans_each_measured_on_its_own(tmp_path):
    t = Trace()
    t.enter("kvm_tdp_mmu_zap_leafs", "start=0x0 end=0x400", dt=10)
    t.enter("tdp_mmu_zap_leafs", "root=0xffff888012345000 start=0x0 end=0x400 can_yield=1 flush=0", dt=10)
    t.spte(0x1, 1, leaf4k(1), 0, dt=10)
    t.yield_(ret=1, away=50, dt=100)               # inner gap 110 us, outer gap 120 us
    t.spte(0x2, 1, leaf4k(2), 0, dt=10)
    t.ret("tdp_mmu_zap_leafs", args="ret=1", dt=30)  # last inner gap 40 us
    t.ret("kvm_tdp_mmu_zap_leafs", args="ret=1", dt=5)
    s = summarize(tmp_path, t)
    outer, inner = s["spans"]
    assert (outer["function"], inner["function"]) == ("kvm_tdp_mmu_zap_leafs", "tdp_mmu_zap_leafs")
    assert (outer["depth"], inner["depth"], inner["parent_id"]) == (0, 1, outer["span_id"])
    assert outer["yields"] == inner["yields"] == 1
    assert inner["max_gap_ns"] == 110_000 and inner["duration_ns"] == 200_000
    assert outer["max_gap_ns"] == 120_000 and outer["duration_ns"] == 215_000
    assert outer["zaps_by_level"] == inner["zaps_by_level"] == {"1": {"leaf": 2, "nonleaf": 0}}
    assert s["yields"]["count"] == 1                # one yield point, seen by two spans
    assert inner["gfn_start"] == 0 and inner["gfn_end"] == 0x400 and inner["can_yield"] == 1
    assert inner["lock_drops"] == 1 and inner["away_ns"] == 50_000


def test_yield_without_return_gap_runs_from_its_entry(tmp_path):
    t = Trace()
    t.enter("__tdp_mmu_zap_root", "root=0xffff888012345000 shared=1 zap_level=3", dt=10)
    t.yield_(write=False, ret=None, dt=100)
    t.ret("__tdp_mmu_zap_root", dt=30)
    s = summarize(tmp_path, t)
    sp = s["spans"][0]
    assert (sp["yields"], sp["max_gap_ns"], sp["zap_level"], sp["shared"]) == (1, 100_000, 3, 1)
    assert sp["lock_drops"] is None


def test_span_without_return_is_incomplete_not_zero(tmp_path):
    t = Trace()
    t.enter("tdp_mmu_zap_leafs", "start=0x0 end=0x10", dt=10)
    t.ret("tdp_mmu_zap_leafs", dt=20)
    t.enter("tdp_mmu_zap_leafs", "start=0x10 end=0x20", dt=10)   # trace ends inside this call
    t.spte(0x11, 1, leaf4k(1), 0, dt=5)
    s = summarize(tmp_path, t)
    done, open_ = s["spans"]
    assert done["complete"] and done["duration_ns"] == 20_000
    assert not open_["complete"]
    assert open_["duration_ns"] is None and open_["max_gap_ns"] is None
    assert open_["zaps_by_level"] == {"1": {"leaf": 1, "nonleaf": 0}}
    assert s["yields"]["incomplete_spans"] == 1


def test_yields_outside_spans_are_not_yield_points(tmp_path):
    t = Trace()
    t.yield_(dt=10)                                   # e.g. NX recovery, not inside a zap
    t.enter("tdp_mmu_zap_leafs", dt=10)
    t.ret("tdp_mmu_zap_leafs", dt=10)
    t.yield_(dt=10, tid=200)                          # another task while nobody zaps
    s = summarize(tmp_path, t)
    assert s["yields"]["count"] == 0
    assert s["yields"]["outside_spans"] == 2
    assert s["spans"][0]["yields"] == 0


def test_interleaved_tasks_and_cpus(tmp_path):
    """Two tasks zap at the same time on two CPUs: zaps and yields go to the task's own span."""
    t = Trace()
    t.enter("tdp_mmu_zap_leafs", tid=1, cpu=0, dt=10)
    t.enter("__tdp_mmu_zap_root", tid=2, cpu=1, dt=10)
    t.spte(0x1, 1, leaf4k(1), 0, tid=1, cpu=0)
    t.spte(0x2, 1, leaf4k(2), 0, tid=2, cpu=1)
    t.spte(0x3, 1, leaf4k(3), 0, tid=2, cpu=1)
    t.yield_(tid=2, cpu=1, dt=40)
    t.spte(0x4, 1, leaf4k(4), 0, tid=1, cpu=0)
    t.ret("tdp_mmu_zap_leafs", tid=1, cpu=0, dt=10)
    t.ret("__tdp_mmu_zap_root", tid=2, cpu=1, dt=10)
    s = summarize(tmp_path, t)
    a, b = s["spans"]
    assert (a["tid"], a["cpu"], a["yields"]) == (1, 0, 0)
    assert (b["tid"], b["cpu"], b["yields"]) == (2, 1, 1)
    assert a["zaps_by_level"]["1"]["leaf"] == 2 and b["zaps_by_level"]["1"]["leaf"] == 2


def test_retained_nonleaf_tables(tmp_path):
    """Empty a linked level-1 table (retained), refill it, empty it, then unlink it; the root never counts."""
    t = Trace()
    t.spte(0x0, 4, 0, nonleaf(10))                   # root entry -> L3 table
    t.spte(0x0, 3, 0, nonleaf(11))                   # -> L2 table
    t.spte(0x0, 2, 0, nonleaf(12))                   # -> L1 table at gfn 0
    t.spte(0x0, 1, 0, leaf4k(100))
    t.spte(0x1, 1, 0, leaf4k(101))
    t.enter("tdp_mmu_zap_leafs")
    t.spte(0x0, 1, leaf4k(100), 0)
    t.spte(0x1, 1, leaf4k(101), 0)
    t.ret("tdp_mmu_zap_leafs")                       # L1 table empty but linked: retained 1
    t.spte(0x1, 1, 0, leaf4k(102))                   # refilled: 0
    t.enter("__tdp_mmu_zap_root", "zap_level=3")
    t.spte(0x0, 3, nonleaf(11), REMOVED)             # unlinks L2 (and with it L1 below)
    t.spte(0x0, 2, nonleaf(12), REMOVED)
    t.spte(0x1, 1, leaf4k(102), REMOVED)
    t.ret("__tdp_mmu_zap_root")                      # L3 table linked by the root entry, empty: 1
    t.enter("__tdp_mmu_zap_root", "zap_level=4")
    t.spte(0x0, 4, nonleaf(10), REMOVED)             # L3 unlinked; the root table is empty but never retained
    t.ret("__tdp_mmu_zap_root")
    s = summarize(tmp_path, t)
    assert [sp["retained_nonleaf_after"] for sp in s["spans"]] == [1, 1, 0]
    r = s["page_tables"]["retained_nonleaf"]
    assert (r["peak"], r["at_end"]) == (1, 0)


def test_lost_event_markers_are_counted_per_cpu(tmp_path):
    t = Trace()
    t.spte(0x1, 1, leaf4k(1), 0)
    t.raw("CPU:1 [LOST 12 EVENTS]")
    t.spte(0x2, 1, leaf4k(2), 0, cpu=1)
    t.raw("CPU:1 [LOST 3 EVENTS]")
    t.raw("CPU:0 [LOST 1 EVENTS]")
    s = summarize(tmp_path, t)
    assert s["lost_events"] == 16
    assert s["lost_events_per_cpu"] == {"1": 15, "0": 1}


def test_ring_buffer_overrun_in_header_is_lost(tmp_path):
    t = Trace().spte(0x1, 1, leaf4k(1), 0)
    f = tmp_path / "o.txt"
    f.write_text(t.text().replace("entries-written: 1/1", "entries-written: 1/41"))
    import_file(f, tmp_path / "o.tdp", kernel_release="6.1.0")
    s = summary_of(tdptrace.open(tmp_path / "o.tdp"))
    assert s["lost_events"] == 40


def test_entry_only_functions_are_calls_not_spans(tmp_path):
    t = Trace()
    t.enter("kvm_tdp_mmu_zap_all")                  # traced on entry only (as in the lab's probes)
    t.enter("__tdp_mmu_zap_root", "zap_level=3")
    t.ret("__tdp_mmu_zap_root")
    s = summarize(tmp_path, t)
    assert [sp["function"] for sp in s["spans"]] == ["__tdp_mmu_zap_root"]
    assert s["calls"] == {"kvm_tdp_mmu_zap_all": 1}


def test_no_kprobes_says_spans_unavailable(tmp_path):
    s = summarize(tmp_path, Trace().spte(0x1, 1, leaf4k(1), 0))
    assert s["spans"] == [] and s["yields"]["count"] is None
    assert "no zap spans" in s["spans_unavailable"]


def test_page_table_alloc_lookup_free(tmp_path):
    t = Trace().get_page(0, 4).get_page(0, 3).get_page(0, 3, created=False).prepare_zap(0, 3)
    s = summarize(tmp_path, t)
    pt = s["page_tables"]
    assert (pt["allocated"], pt["lookups"], pt["freed"]) == (2, 1, 1)
    assert pt["by_level"] == {"alloc": {"3": 1, "4": 1}, "free": {"3": 1}}


@pytest.mark.parametrize("name", ["unknown_ev"])
def test_unknown_events_are_counted_and_kept(tmp_path, name):
    t = Trace().spte(0x1, 1, leaf4k(1), 0)
    t._line("sched_switch", "prev_comm=a prev_pid=1 ==> next_comm=b next_pid=2")
    t._line("sched_switch", "prev_comm=b prev_pid=2 ==> next_comm=a next_pid=1")
    s = summarize(tmp_path, t)
    assert s["unknown_events"] == {"sched_switch": 2}
    assert s["markers"]["sched_switch"] == 2


def test_5_10_page_table_levels_and_frees(tmp_path):
    """5.10 traces a TDP table's allocation with its parent entry's level and never traces its free."""
    t = Trace().get_page(0, 2)
    t.raw("        qemu-100     [000] ...1.     9.000001: hcs: (__handle_changed_spte+0x0/0x580 [kvm]) "
          "as_id=0x0 gfn=0x0 old_spte=0x0 new_spte=0xa27a027 level=2")
    s = summarize(tmp_path, t, kernel="5.10.0-32-amd64")
    assert s["page_tables"]["by_level"]["alloc"] == {"1": 1}
    assert s["page_tables"]["freed"] is None and "freed_unavailable" in s["page_tables"]
    s61 = summarize(tmp_path, Trace().get_page(0, 2).prepare_zap(0, 2), name="k61")
    assert s61["page_tables"]["by_level"] == {"alloc": {"2": 1}, "free": {"2": 1}}


def test_unsaved_tgid_is_taken_from_the_same_threads_other_lines(tmp_path):
    f = tmp_path / "tgid.txt"
    f.write_text("# tracer: nop\n"
                 "        qemu-7       (-------) [000] ...1.     1.000001: kvm_mmu_get_page: sp gen 0 gfn 0 l4 8-byte "
                 "q0 direct wux nxe ad root 0 sync new\n"
                 "        qemu-7       (      5) [000] ...1.     1.000002: kvm_mmu_prepare_zap_page: sp gen 0 gfn 0 "
                 "l4 8-byte q0 direct wux nxe ad root 0 sync\n"
                 "        other-9      (-------) [001] ...1.     1.000003: kvm_mmu_zap_all_fast: kvm-mmu-valid-gen 0 "
                 "used_pages 0\n")
    import_file(f, tmp_path / "t.tdp", kernel_release="6.1.0")
    cap = tdptrace.open(tmp_path / "t.tdp")
    assert cap.page_tables["pid"].tolist() == [5, 5]
    assert cap.markers["pid"].tolist() == [-1]
