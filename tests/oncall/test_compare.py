"""`tdptrace compare`: normalised zaps, gap quantiles, yields per operation, retained tables, directions."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from smallcaps import span, write_capture

import tdptrace
from tdptrace.cli import main
from tdptrace.oncall.compare import compare, df_operation_metrics
from tdptrace.oncall.plots import FIGURES

MS = 1_000_000


def row(c, scope: str, metric: str) -> dict:
    r = c.rows[(c.rows["scope"] == scope) & (c.rows["metric"] == metric)]
    assert len(r) == 1, (scope, metric)
    return r.iloc[0].to_dict()


def teardown_61(tmp_path):
    """6.1 shape (docs/lab.md, 512 MiB under contention): two top-level __tdp_mmu_zap_root passes called from
    kvm_tdp_mmu_zap_invalidated_roots; the first runs 200 ms and yields once, about 100 ms in."""
    caller = "kvm_tdp_mmu_zap_invalidated_roots+0x87/0xf0"
    return tdptrace.open(write_capture(
        tmp_path / "k61.tdp", kernel="6.1.0-56-amd64",
        spans=[span(0, 0, 200 * MS, "__tdp_mmu_zap_root", yields=1, caller=caller, zap_level=3, root="r1"),
               span(1, 201 * MS, 201 * MS + 400_000, "__tdp_mmu_zap_root", caller=caller, zap_level=4, root="r1")],
        yields=[{"ts": 100 * MS, "ret_ts": 101 * MS, "ret": 1, "span_id": 0}]))


def teardown_612(tmp_path):
    """6.12 shape: tdp_mmu_zap_root around four passes (levels 1..4), 40 yields 4-12 ms apart."""
    passes, yields = [], []
    t = 1 * MS
    for k, lvl in enumerate((1, 2, 3, 4)):
        start = t
        n = 37 if lvl == 1 else 1
        for j in range(n):
            t += (4 + (j % 9)) * MS
            yields.append({"ts": t, "ret_ts": t + 500_000, "ret": 1, "span_id": k + 1})
            t += 500_000
        t += 3 * MS
        passes.append(span(k + 1, start, t, "__tdp_mmu_zap_root", yields=n, parent_id=0, depth=1,
                           zap_level=lvl, root="r1"))
        t += 100_000
    outer = span(0, 0, t + 100_000, "tdp_mmu_zap_root", yields=len(yields),
                 caller="kvm_tdp_mmu_zap_invalidated_roots+0x5e/0x120", root="r1")
    return tdptrace.open(write_capture(tmp_path / "k612.tdp", kernel="6.12.57+deb12-amd64",
                                       spans=[outer] + passes, yields=yields))


def test_612_yields_more_often_in_root_teardown_with_lower_max_gap(tmp_path):
    c = compare(teardown_61(tmp_path), teardown_612(tmp_path))
    assert (c.a_label, c.b_label) == ("6.1.0-56-amd64", "6.12.57+deb12-amd64")
    ypo = row(c, "root teardown", "yields_per_operation")
    assert (ypo["a"], ypo["b"], ypo["direction"], ypo["verdict"]) == (1.0, 40.0, "higher", "better")
    mx = row(c, "root teardown", "gap_max_ns")
    assert mx["a"] == 100 * MS and mx["b"] == 12 * MS
    assert (mx["direction"], mx["verdict"]) == ("lower", "better")
    ops = row(c, "root teardown", "operations")  # the two 6.1 passes are one teardown; 6.12's nest in one span
    assert (ops["a"], ops["b"]) == (1.0, 1.0)
    ylo = row(c, "root teardown", "yields_in_longest_operation")
    assert (ylo["a"], ylo["b"], ylo["verdict"]) == (1.0, 40.0, "better")
    assert c.headlines[0].startswith("root teardown: 6.12.57+deb12-amd64 yields more often than 6.1.0-56-amd64 "
                                     "(40 vs 1 yields in the longest operation, 40.0 vs 1.0 per operation")
    assert "is lower (12.0 ms vs 100.0 ms)" in c.headlines[0]


def test_nested_passes_are_not_counted_twice(tmp_path):
    m = df_operation_metrics(teardown_612(tmp_path))
    assert m.at["root teardown", "yields"] == 40       # each yield once, though it lies in two spans
    assert m.at["root teardown", "spans"] == 5
    assert m.at["root teardown", "gap_max_ns"] == 12 * MS


def test_reference_captures_compared(reference_captures):
    a = tdptrace.open(reference_captures["k61-128m"])
    b = tdptrace.open(reference_captures["k61-512m-hog"])
    c = compare(a, b)
    assert (c.a_label, c.b_label) == ("k61-128m", "k61-512m-hog")  # same release: named by directory
    z = row(c, "level 1 leaf", "zaps per GiB unmapped")
    assert z["a"] == z["b"] == 262144.0 and z["direction"] == "same"
    z = row(c, "level 1 leaf", "zaps count")
    assert (z["a"], z["b"], z["direction"], z["verdict"]) == (48644, 196100, "higher", "changed")
    leaf = row(c, "leaf zap", "gap_max_ns")
    assert (leaf["a"], leaf["b"], leaf["direction"], leaf["verdict"]) == (15_797_000, 8_047_000, "lower", "better")
    root = row(c, "root teardown", "yields_per_operation")
    assert (root["a"], root["b"]) == (0.0, 0.5)
    p99 = row(c, "all zaps", "gap_p99_ns")
    assert (p99["a"], p99["b"]) == (26_946_000, 99_724_000) and p99["verdict"] == "worse"
    ret = row(c, "page tables", "retained non-leaf peak")
    assert (ret["a"], ret["b"], ret["verdict"]) == (32, 128, "worse")


def test_cli_table_json_and_overlaid_plots(reference_captures, tmp_path, capsys):
    a, b = str(reference_captures["k61-128m"]), str(reference_captures["k61-512m-hog"])
    assert main(["compare", a, b]) == 0
    out = capsys.readouterr().out
    assert out.startswith("root teardown: k61-512m-hog yields more often than k61-128m")
    assert "x0.509 lower (better)" in out   # leaf zap max gap 15.8 -> 8.0 ms
    assert max(len(ln) for ln in out.splitlines()) <= 100
    assert main(["compare", a, b, "--json", "-o", str(tmp_path / "cmp")]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["a"] == "k61-128m" and d["b"] == "k61-512m-hog"
    assert {r["scope"] for r in d["rows"]} >= {"all zaps", "leaf zap", "root teardown", "page tables"}
    assert [p.rsplit("/", 1)[1] for p in d["plots"]] == [f"{n}.png" for n in FIGURES]
    for p in d["plots"]:
        assert (tmp_path / "cmp" / p.rsplit("/", 1)[1]).stat().st_size > 10_000


def test_capture_without_spans_compares_as_not_available(tmp_path):
    a = tdptrace.open(write_capture(tmp_path / "a.tdp", sptes=[{"ts": 1, "gfn": 1, "old_spte": 1 << 11,
                                                                 "new_spte": 0}]))
    b = teardown_61(tmp_path)
    c = compare(a, b)
    mx = row(c, "all zaps", "gap_max_ns")
    assert pd.isna(mx["a"]) and mx["direction"] == "n/a"
    assert any("a has no zap spans" in n for n in c.notes)
    assert row(c, "level 1 leaf", "zaps count")["b"] == 0


def test_missing_capture_exits_2(tmp_path, capsys):
    b = teardown_61(tmp_path)
    assert main(["compare", str(tmp_path / "none.tdp"), str(b.path)]) == 2
    assert "no such capture" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["--threshold=x"])
def test_bad_threshold_exits_2(tmp_path, capsys, bad):
    b = teardown_61(tmp_path)
    assert main(["compare", str(b.path), str(b.path), bad]) == 2
