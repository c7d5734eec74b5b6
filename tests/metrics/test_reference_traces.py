"""The lab's real traces must give exactly the figures of ../shared/data/EXPECTED.md (docs/metrics.md to the letter)."""
from __future__ import annotations

import pytest
from refdata import REFERENCE, expected

import tdptrace
from tdptrace.metrics.summary import summarize


@pytest.mark.parametrize("name", REFERENCE)
def test_zaps_by_level(reference_captures, name):
    s = summarize(tdptrace.open(reference_captures[name]))
    assert s["zaps_by_level"] == expected(name)["zaps_by_level"]
    assert s["zaps_source"] == "kvm_tdp_mmu_spte_changed"


@pytest.mark.parametrize("name", REFERENCE)
def test_yields_and_page_tables(reference_captures, name):
    s = summarize(tdptrace.open(reference_captures[name]))
    e = expected(name)
    assert s["yields"]["count"] == e["yields"]["count"]
    assert s["yields"]["spans"] == e["yields"]["spans"]
    assert s["yields"]["max_gap_ns"] == e["yields"]["max_gap_ns"]
    assert s["page_tables"]["allocated"] == e["page_tables"]["allocated"]
    assert s["page_tables"]["freed"] == e["page_tables"]["freed"]
    assert s["lost_events"] == 0


@pytest.mark.parametrize("name", REFERENCE)
def test_every_span(reference_captures, name):
    s = summarize(tdptrace.open(reference_captures[name]))
    want = expected(name)["spans"]
    assert len(s["spans"]) == len(want)
    keys = ("function", "start_ns", "duration_ns", "yields", "max_gap_ns", "retained_nonleaf_after")
    assert [{k: sp[k] for k in keys} for sp in s["spans"]] == want


def test_hog_span_details(reference_captures):
    """Span 0 of the contended run: madvise zap over gfn 0x10000-0x20000, 7 yields that all dropped the lock."""
    s = summarize(tdptrace.open(reference_captures["k61-512m-hog"]))
    sp = s["spans"][0]
    assert (sp["gfn_start"], sp["gfn_end"], sp["can_yield"]) == (0x10000, 0x20000, 1)
    assert sp["caller"] == "kvm_tdp_mmu_unmap_gfn_range+0x74/0x90"
    assert sp["lock_drops"] == 7
    assert sp["zaps_by_level"] == {"1": {"leaf": 65536, "nonleaf": 0}}
    root = s["spans"][1]
    assert (root["zap_level"], root["shared"], root["yields"]) == (3, 1, 1)
    # Its only yield is __cond_resched_rwlock_read, traced without a return: drops unknown, not 0.
    assert root["lock_drops"] is None
    assert s["yields"]["outside_spans"] == 0


def test_retained_peak_128m(reference_captures):
    """The madvise zap leaves 32 emptied level-1 tables linked in place (32 x 4 KiB)."""
    s = summarize(tdptrace.open(reference_captures["k61-128m"]))
    r = s["page_tables"]["retained_nonleaf"]
    assert (r["peak"], r["peak_bytes"], r["at_end"]) == (32, 32 * 4096, 0)
