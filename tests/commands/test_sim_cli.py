"""`tdptrace simulate` and `tdptrace calibrate` from the command line: outputs, fitted costs, errors."""
from __future__ import annotations

import json

import pytest

import tdptrace
from tdptrace.cli import main
from tdptrace.metrics.summary import summarize


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_simulate_kvmtouch_then_summary(tmp_path, capsys):
    out = tmp_path / "k.tdp"
    rc, text, err = _run(capsys, "simulate", "-o", str(out), "--size", "128M", "--workload", "kvmtouch",
                         "--strategy", "6.1")
    assert rc == 0, err
    assert "phase2-madvise-dontneed" in text and "retained tables after 32" in text
    rc, text, _ = _run(capsys, "summary", str(out), "--json")
    s = json.loads(text)
    assert s["zaps_by_level"]["1"] == {"leaf": 48644, "nonleaf": 0}
    assert s["capture"]["source"]["kind"] == "simulation"


def test_simulate_json_and_rcu_stall_note(tmp_path, capsys):
    """A 5-level 1 TiB VM under 5.15 tears everything down under one top-level SPTE: ~14 s held."""
    rc, text, err = _run(capsys, "simulate", "-o", str(tmp_path / "s.tdp"), "--size", "1T", "--paging", "5",
                         "--strategy", "5.15", "--contention", "1", "--json")
    assert rc == 0, err
    d = json.loads(text)
    td = d["phases"][-1]
    assert td["op"] == "teardown" and td["max_gap_ns"] > 13e9 and td["yields"] <= 1
    rc, text, err = _run(capsys, "simulate", "-o", str(tmp_path / "s2.tdp"), "--size", "2T", "--paging", "5",
                         "--strategy", "5.15", "--json")
    assert any("RCU stall timeout" in n for n in json.loads(text)["notes"])


@pytest.mark.parametrize("argv,message", [
    (["--size", "12x"], "cannot read size"),
    (["--strategy", "4.19"], "unknown strategy"),
    (["--backing", "3m"], "unknown backing"),
    (["--paging", "3"], "paging must be 4 or 5"),
    (["--populated", "1.5"], "outside 0..1"),
    (["--scenario", "unmap", "--range", "64M"], "cannot read range"),
    (["--scenario", "reboot"], "unknown scenario"),
    (["--sptes", "maybe"], "--sptes must be"),
    (["--size", "512T"], "does not fit 4-level"),
    (["--size", "128T"], "below MAXPHYADDR 46"),
    (["--size", "4G", "--phys-bits", "31"], "below MAXPHYADDR 31"),
])
def test_simulate_bad_input_is_one_line(tmp_path, capsys, argv, message):
    rc, _, err = _run(capsys, "simulate", "-o", str(tmp_path / "x.tdp"), *argv)
    assert rc == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_simulate_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "o.tdp"
    assert _run(capsys, "simulate", "-o", str(out), "--size", "64M")[0] == 0
    rc, _, err = _run(capsys, "simulate", "-o", str(out), "--size", "64M")
    assert rc == 2 and "already exists" in err
    assert _run(capsys, "simulate", "-o", str(out), "--size", "64M", "--force")[0] == 0


def test_bad_cost_file(tmp_path, capsys):
    bad = tmp_path / "cost.json"
    bad.write_text('{"leaf_zap_ns": "fast"}')
    rc, _, err = _run(capsys, "simulate", "-o", str(tmp_path / "x.tdp"), "--costs", str(bad))
    assert rc == 2 and "must be numbers" in err
    bad.write_text("not json")
    rc, _, err = _run(capsys, "simulate", "-o", str(tmp_path / "x.tdp"), "--costs", str(bad))
    assert rc == 2 and "not a cost model" in err


def test_calibrate_from_the_lab_captures(reference_captures, tmp_path, capsys):
    """Under QEMU TCG with tracing one 4 KiB zap costs ~850 ns: the fit finds it, and a simulation with the
    fitted costs puts the 128 MiB madvise zap within 10% of the 15.8 ms measured."""
    out = tmp_path / "cost.json"
    caps = [str(p) for p in reference_captures.values()]
    rc, text, err = _run(capsys, "calibrate", *caps, "-o", str(out))
    assert rc == 0, err
    cost = json.loads(out.read_text())
    assert 700 < cost["leaf_zap_ns"] < 1000
    assert cost["source"]["kind"] == "calibrated" and cost["source"]["fit"]["spans"] == 14
    rc, _, err = _run(capsys, "simulate", "-o", str(tmp_path / "c.tdp"), "--size", "128M", "--workload",
                      "kvmtouch", "--strategy", "6.1", "--costs", str(out))
    assert rc == 0, err
    span0 = summarize(tdptrace.open(tmp_path / "c.tdp"))["spans"][0]
    assert abs(span0["duration_ns"] - 15_797_000) < 0.1 * 15_797_000


def test_calibrate_recovers_the_costs_a_simulation_used(tmp_path, capsys):
    """Round trip: simulate with known costs, fit them back from the simulated captures."""
    from tdptrace.sim.costs import CostModel

    known = CostModel(leaf_zap_ns=400.0, nonleaf_zap_ns=100.0, table_free_ns=1200.0, call_ns=3000.0)
    known.save(tmp_path / "known.json")
    caps = []
    for size, backing in (("128M", "4k"), ("256M", "2m"), ("3G", "4k")):
        caps.append(str(tmp_path / f"{size}.tdp"))
        assert _run(capsys, "simulate", "-o", caps[-1], "--size", size, "--backing", backing, "--workload",
                    "kvmtouch", "--costs", str(tmp_path / "known.json"), "--sptes", "yes")[0] == 0
    rc, _, err = _run(capsys, "calibrate", *caps, "-o", str(tmp_path / "fit.json"))
    assert rc == 0, err
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert fit["leaf_zap_ns"] == pytest.approx(400.0, rel=0.05)
    # an empty pass still iterates the root: 128 entries below MAXPHYADDR 46 at iter_ns 2
    assert fit["call_ns"] == pytest.approx(3000.0 + 128 * 2.0)
    # Per-table costs are a fraction of a percent of these spans: the fit explains the total, not them.
    stats = fit["source"]["fit"]
    assert stats["total_predicted_ns"] == pytest.approx(stats["total_measured_ns"], rel=0.02)


def test_calibrate_errors(tmp_path, capsys):
    rc, _, err = _run(capsys, "calibrate", str(tmp_path / "missing.tdp"), "-o", str(tmp_path / "c.json"))
    assert rc == 2 and "no such capture" in err
    (tmp_path / "c.json").write_text("{}")
    rc, _, err = _run(capsys, "calibrate", str(tmp_path / "missing.tdp"), "-o", str(tmp_path / "c.json"))
    assert rc == 2 and "already exists" in err


def test_triage_compare_and_plot_read_simulated_captures(tmp_path, capsys):
    """A simulated capture is a capture: triage flags the 5.15 teardown, compare sets two eras side by side."""
    old, new = tmp_path / "515.tdp", tmp_path / "612.tdp"
    for out, strat in ((old, "5.15"), (new, "6.12")):
        assert _run(capsys, "simulate", "-o", str(out), "--size", "16G", "--strategy", strat,
                    "--contention", "1")[0] == 0
    rc, text, err = _run(capsys, "triage", str(old))
    assert "Traceback" not in err and "zap_gfn_range" in text and "219.2 ms" in text
    rc, text, err = _run(capsys, "compare", str(old), str(new))
    assert rc == 0, err
    assert "level 1 leaf" in text
    rc, text, err = _run(capsys, "plot", str(new), "-o", str(tmp_path / "figs"))
    assert rc == 0, err
    assert any((tmp_path / "figs").glob("*.png"))
