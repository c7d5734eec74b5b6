"""tdptrace top: one JSON object per interval with the exercise's counts, the in-kernel -p filter, the screen."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from livestats import REPO, TDPTRACE, TracefsCounter, require_live, run_exercise

from tdptrace.live.stats import _SLICES, STATS_WORDS, Features, Snapshot, VmTotals, interval


def _start_top(*args: str, **kw) -> subprocess.Popen:
    p = subprocess.Popen(TDPTRACE + ["top", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=REPO, **kw)
    line = p.stderr.readline()  # printed once the program is attached and the first snapshot taken
    assert line.startswith("tdptrace top: watching"), line + p.stderr.read()
    return p


@pytest.mark.live
def test_top_once_json_reports_the_exercise_and_p_filters_in_the_kernel():
    require_live()
    top_all = _start_top("8", "--once", "--json")
    top_other = _start_top("8", "--once", "--json", "-p", "1")
    with TracefsCounter("tdptrace-test-top") as truth:
        report = run_exercise(32)
        ended = time.time()
        truth.stop()
        want = truth.counts(report["pid"])
    out_all, err_all = top_all.communicate(timeout=60)
    out_other, _ = top_other.communicate(timeout=60)
    assert top_all.returncode == 0 and top_other.returncode == 0, err_all
    objs = [json.loads(line) for line in out_all.splitlines()]
    assert len(objs) == 1  # --once: exactly one interval
    obj = objs[0]
    assert 7.5 < obj["interval_s"] < 12
    assert ended < obj["time"], "the exercise outlasted top's interval (machine overloaded?)"
    mine = [v for v in obj["vms"] if v["pid"] == report["pid"]]
    assert len(mine) == 1, obj["vms"]
    vm = mine[0]
    assert want["zap_all_fast"] == 1 and vm["zap_all_fast"] == 1
    assert vm["page_tables"]["allocated"] == want["alloc"] > 0
    assert vm["page_tables"]["freed"] == want["free"] > 0
    assert obj["lost_events"]["interval"] == {"vm_map_full": 0, "table_map_full": 0, "task_map_full": 0}
    if "spans" in obj["unavailable"]:
        assert vm["spans"] is None and vm["max_gap_ns"] is None  # never a made-up 0
    if "zaps" in obj["unavailable"]:  # this host's shadow MMU: SPTE zaps are not traced
        assert vm["zaps"] is None and vm["zaps_per_s"] is None and vm["totals"]["zaps"] is None
    assert [v for v in json.loads(out_other)["vms"] if v["pid"] == report["pid"]] == []


@pytest.mark.live
def test_sigint_prints_the_partial_interval_even_when_started_with_sigint_ignored():
    """As a background job of a shell (SIGINT ignored), top must still stop on SIGINT and print what it saw."""
    require_live()
    top = _start_top("600", "--json", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        report = run_exercise(32)
        top.send_signal(signal.SIGINT)
        out, err = top.communicate(timeout=60)
    finally:
        if top.poll() is None:
            top.kill()
            top.wait()
    assert top.returncode == 0, err
    (obj,) = [json.loads(line) for line in out.splitlines()]
    assert obj["interval_s"] < 600
    (vm,) = [v for v in obj["vms"] if v["pid"] == report["pid"]]
    assert vm["zap_all_fast"] == 1 and vm["page_tables"]["allocated"] > 0


def _snap(mono_ns: int, leaf1: int, alloc1: int, retained1: int) -> Snapshot:
    w = np.zeros(STATS_WORDS, dtype=np.uint64)
    w[_SLICES["zap_leaf"]][1] = leaf1
    w[_SLICES["pt_alloc"]][1] = alloc1
    w[_SLICES["retained"]][1] = np.uint64(retained1 & (2**64 - 1))
    return Snapshot(mono_ns, 0.0, {7: VmTotals(7, "qemu", w)}, {"vm_map_full": 0},
                    Features(spans=False, spans_reason="none", tdp_tracepoint=True, tdp_mmu=True))


def test_interval_deltas_and_negative_retained_steps():
    a = _snap(1_000_000_000, 100, 5, 3)
    b = _snap(3_000_000_000, 700, 9, 1)
    (r,) = interval(a, b)
    assert r.seconds == 2.0 and r.zaps == 600 and int(r.pt_alloc.sum()) == 4 and int(r.retained.sum()) == 1
    d = r.to_dict(b.features)
    assert d["zaps"] == {"1": {"leaf": 600, "nonleaf": 0}} and d["zaps_per_s"]["1"]["leaf"] == 300.0
    assert d["spans"] is None and d["retained_nonleaf"] == {"total": 1, "by_level": {"1": 1}}
    shadow = Features(spans=False, spans_reason="none", tdp_tracepoint=True, tdp_mmu=False)
    s = r.to_dict(shadow)
    assert s["zaps"] is None and s["zaps_per_s"] is None and s["totals"]["zaps"] is None
    assert s["page_tables"]["allocated"] == 4 and s["retained_nonleaf"] is None


def test_screen_fits_80_columns():
    from rich.console import Console

    from tdptrace.commands.top import render_table

    a, b = _snap(0, 0, 0, 0), _snap(1_000_000_000, 123456789, 4000, 12)
    con = Console(width=80, record=True, file=open("/dev/null", "w"))
    con.print(render_table(interval(a, b), b, {"vm_map_full": 0}, {}, "zaps"))
    lines = con.export_text().splitlines()
    assert any("qemu" in ln and "123.5M" in ln for ln in lines)
    assert max(len(ln) for ln in lines) <= 80


@pytest.mark.parametrize("args,msg", [(["top", "--sort", "bogus"], "unknown sort key 'bogus'"),
                                      (["top", "0"], "Invalid value for 'INTERVAL': '0' must be above zero"),
                                      (["top", "1s", "0"], "COUNT 0 is out of range"),
                                      (["top", "-p", "1,x"], "Invalid value for '-p' / '--pid': '1,x' is not a list"),
                                      (["top", "--comm", "("], "--comm '(' is not a regular expression")])
def test_bad_arguments_are_one_line_errors(args, msg):
    out = subprocess.run(TDPTRACE + args, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and out.stderr.startswith(f"tdptrace: error: {msg}"), out.stderr


def test_what_the_host_cannot_measure_shows_as_a_dash_not_zero():
    """On a shadow-MMU host (tdp_mmu=N) SPTE zaps are not traced: the zap columns say '-', page tables count."""
    from rich.console import Console

    from tdptrace.commands.top import render_table

    a, b = _snap(0, 0, 0, 0), _snap(1_000_000_000, 0, 4000, 0)
    missing = {"zaps": "kvm.tdp_mmu=N", "retained": "kvm.tdp_mmu=N", "spans": "no kprobes"}
    con = Console(width=80, record=True, file=open("/dev/null", "w"))
    con.print(render_table(interval(a, b), b, {"vm_map_full": 0}, missing, "zaps"))
    (row,) = [ln.split() for ln in con.export_text().splitlines() if "qemu" in ln]
    assert row[2:5] == ["-", "-", "-"] and row[5] == "4000" and row[-1] == "-", row


@pytest.mark.parametrize("command", ["top", "serve"])
def test_ebpf_prints_the_program_as_compiled_here(command, capsys):
    """--ebpf prints the settings this host gives, then every header spliced in: what BCC would compile."""
    if not Path("/sys/kernel/tracing/events").is_dir():
        pytest.skip("tracefs is not mounted here")
    from tdptrace.cli import main

    assert main([command, "--ebpf", "--no-spans"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("#define TDP_PRESENT_BIT ") and "#define TDP_WITH_SPANS 0\n" in text
    assert '#line 1 "stats.h"' in text and "struct vm_stats" in text and '#include "stats.h"' not in text
    assert text.count("TRACEPOINT_PROBE(kvmmmu, kvm_mmu_get_page)") == 1
