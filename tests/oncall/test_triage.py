"""`tdptrace triage`: verdict, longest stretches, exit status 0/1/2, JSON, and kernel-log alignment, on the
reference traces and on small hand-made captures."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from smallcaps import P, span, write_capture
from tracegen import Trace, leaf4k

import tdptrace
from tdptrace.cli import main
from tdptrace.importers import import_file
from tdptrace.oncall.kernel_log import parse_dmesg
from tdptrace.oncall.triage import triage

STALL_AT_24_7 = """\
[   24.700000] rcu: INFO: rcu_sched self-detected stall on CPU
[   24.700001] rcu: \t0-....: (5250 ticks this GP) idle=1b3/1/0x4000000000000000 softirq=12/12 fqs=2480
[   24.700002] \t(t=5251 jiffies g=12345 q=678 ncpus=2)
[   24.700004] CPU: 0 PID: 134 Comm: kvmtouch Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2
[   24.700005] RIP: 0010:__tdp_mmu_zap_root+0x12a/0x1e0 [kvm]
"""


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_hog_capture_is_a_risk_and_names_the_teardown_span(reference_captures, capsys):
    rc, out, err = run(capsys, "triage", str(reference_captures["k61-512m-hog"]))
    assert rc == 1, err
    verdict = " ".join(out.split("\n\n")[0].split())
    assert verdict.startswith("RISK: KVM held mmu_lock in read mode for 99.7 ms without offering to yield in "
                              "__tdp_mmu_zap_root (span 1")
    assert "1. 99.7 ms holding mmu_lock for read without a yield (ends at yield)  ABOVE THRESHOLD" in out
    # the stretch after the read yield (its return was not traced) is listed apart, never above the threshold
    away = out[out.index("Stretches that include time away"):]
    assert "95.6 ms without a yield, including time away in the yield (not a hold) (ends at return)\n" in away
    assert "Time base: times are seconds on the capture clock" in out
    assert "kvm_tdp_mmu_zap_invalidated_roots -> __tdp_mmu_zap_root" in out
    assert "L1 130,564 leaf, L2 256 non-leaf, L3 1 non-leaf; 257 page tables freed" in out
    assert "4K leaf 99.9% (196,100)" in out
    assert "peak 128 (512 KiB)" in out


def test_hog_json(reference_captures, capsys):
    rc, out, _ = run(capsys, "triage", str(reference_captures["k61-512m-hog"]), "--json")
    d = json.loads(out)
    assert rc == 1 and d["exit_code"] == 1 and d["risk"] is True
    assert d["threshold_ns"] == 10_000_000
    assert d["max_gap_ns"] == 99_724_000
    assert d["spans"] == 5 and d["spans_above_threshold"] == 1
    s0 = d["stretches"][0]
    assert (s0["span_id"], s0["function"], s0["gap_ns"], s0["ends_at"]) == (1, "__tdp_mmu_zap_root", 99_724_000,
                                                                             "yield")
    assert s0["zap_level"] == 3 and s0["comm"] == "kvmtouch" and s0["tid"] == 134
    assert s0["sptes_zapped"] == {"1": {"leaf": 130564, "nonleaf": 0}, "2": {"leaf": 0, "nonleaf": 256},
                                  "3": {"leaf": 0, "nonleaf": 1}}
    # span 0 (tdp_mmu_zap_leafs) yields 7 times; its longest gap, 8.0 ms, is under the threshold
    leafs = [s for s in d["stretches"] if s["span_id"] == 0]
    assert leafs and max(s["gap_ns"] for s in leafs) == 8_047_000
    assert all(not s["above_threshold"] for s in leafs)
    assert leafs[0]["gfn_start"] == 0x10000 and leafs[0]["gfn_end"] == 0x20000
    assert d["levels"][0] == {"level": 1, "size": "4K", "kind": "leaf", "count": 196100,
                              "share": pytest.approx(196100 / 196358)}
    assert d["retained"]["peak"] == 128
    assert d["kernel_reports"] == [] and d["kernel_log_summary"] is None


def test_clean_capture_exits_0(reference_captures, capsys):
    rc, out, _ = run(capsys, "triage", str(reference_captures["k61-256m-thp"]))
    assert rc == 0
    assert out.startswith("No risk above 10.0 ms") and "1.2 ms" in out.splitlines()[0]
    rc, out, _ = run(capsys, "triage", str(reference_captures["k61-256m-thp"]), "--json")
    d = json.loads(out)
    assert rc == 0 and d["risk"] is False and d["max_gap_ns"] == 1_171_000


def test_threshold_moves_the_verdict(reference_captures):
    cap = tdptrace.open(reference_captures["k61-512m-hog"])
    assert triage(cap, 100_000_000).exit_code == 0       # 99.7 ms < 100 ms
    t = triage(cap, 5_000_000)
    assert t.exit_code == 1 and t.spans_above_threshold == 2  # span 0's 8.0 ms gaps now count


def test_no_spans_cannot_tell(tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text(Trace().spte(1, 1, leaf4k(1), 0).text())
    import_file(f, tmp_path / "t.tdp", kernel_release="6.1.0-56-amd64")
    rc, out, err = run(capsys, "triage", str(tmp_path / "t.tdp"))
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "no zap spans" in err


@pytest.mark.parametrize("args,needle", [
    (["--threshold", "ten"], "not a duration"),
    (["--threshold", "0ms"], "above zero"),
    (["--dmesg", "/nonexistent/dmesg.txt"], "no such kernel log"),
    (["--dmesg-tz", "CET", "--dmesg", "-"], "not a UTC offset"),
])
def test_bad_input_exits_2(reference_captures, capsys, args, needle):
    rc, _, err = run(capsys, "triage", str(reference_captures["k61-256m-thp"]), *args)
    assert rc == 2 and needle in err and "Traceback" not in err


def test_missing_capture_exits_2(tmp_path, capsys):
    rc, _, err = run(capsys, "triage", str(tmp_path / "none.tdp"))
    assert rc == 2 and "no such capture" in err


def test_dmesg_stall_lines_up_with_the_running_span(reference_captures, tmp_path, capsys):
    f = tmp_path / "dmesg.txt"
    f.write_text("[   20.000000] kvm: unrelated\n" + STALL_AT_24_7)
    rc, out, _ = run(capsys, "triage", str(reference_captures["k61-512m-hog"]), "--dmesg", str(f), "--json")
    d = json.loads(out)
    (m,) = d["kernel_reports"]
    assert m["kind"] == "rcu_stall" and m["line_no"] == 2
    assert m["capture_ns"] == 24_700_000_000
    assert m["running_span_ids"] == [1]
    assert "span 1 __tdp_mmu_zap_root was running, on the same task" in m["explanation"]
    assert m["stack_zap_functions"] == ["__tdp_mmu_zap_root"]
    assert d["dmesg_reports_found"] == 1
    # t=5251 jiffies at HZ=250: stuck 21.004 s, from 3.696 s - all inside the capture (3.54 .. 25.15 s), whose
    # longest hold is 99.7 ms: a contradiction, said as such
    assert m["consistent"] is False and m["covered"] is True
    assert m["stuck_ns"] == 21_004_000_000 and m["longest_hold_ns"] == 99_724_000 and m["explained_by"] == []
    assert m["explanation"].startswith("CONTRADICTION: the report says stuck for 21.00 s, but the longest hold of "
                                       "mmu_lock in that time is 99.7 ms (span 1 __tdp_mmu_zap_root)")
    assert d["contradictions"] == 1 and "is not explained by this capture" in d["verdict"]
    assert d["kernel_log_summary"].startswith("Kernel log line 2 (rcu stall): CONTRADICTION")
    # every stretch names its lock mode; the holds above the threshold say what to do next
    modes = {(s["span_id"], s["kind"]): s["lock_mode"] for s in d["stretches"]}
    assert modes[(1, "hold")] == "read" and modes[(1, "includes_away")] == "read" and modes[(0, "hold")] == "write"
    s0 = d["stretches"][0]
    assert s0["lock_mode_source"] == "yield function" and "vCPU faults of the TDP MMU go on" in s0["blocks"]
    assert {a["kind"] for a in s0["actions"]} >= {"kernel", "command"}
    assert any("four passes" in a["text"] for a in s0["actions"])
    assert s0["limits"]["source"] == "unknown" and s0["limits"]["rcu_stall"]["limit_ns"] is None
    # the stretch that includes time away in the unreturned read yield is not above the threshold
    (away,) = [s for s in d["stretches"] if s["kind"] == "includes_away"]
    assert away["gap_ns"] == 95_605_000 and away["above_threshold"] is False
    assert d["stretches_including_away"] == 1 and d["spans_above_threshold"] == 1
    assert d["time_base"]["dmesg_offset_ns"] == 0 and d["era"]["simulator_strategy"] == "two-pass"
    assert d["actions"][-1]["command"].startswith("tdptrace export ")


def test_a_stall_a_capture_explains_is_consistent(tmp_path):
    """A span still running at the capture's end (the machine locked up): it explains a 21 s RCU stall."""
    path = write_capture(tmp_path / "stuck.tdp", spans=[span(0, 1_000_000_000, None, "__tdp_mmu_zap_root",
                                                             tid=134, comm="kvmtouch", shared=0)],
                         sptes=[{"ts": 2_000_000_000, "gfn": 1, "old_spte": P, "new_spte": 0},
                                {"ts": 30_000_000_000, "gfn": 2, "old_spte": P, "new_spte": 0}])
    t = triage(tdptrace.open(path), reports=parse_dmesg(STALL_AT_24_7.replace("24.7000", "25.0000")))
    (m,) = t.kernel_reports
    assert m.consistent and m.explained_by == [0] and t.contradictions == 0
    assert t.exit_code == 1 and t.stretches[0].lock_mode == "write"
    assert t.stretches[0].lock_mode_source == "shared argument"
    assert any(a["kind"] == "check" and "/proc/134/stack" in a["command"] for a in t.stretches[0].actions)
    assert t.kernel_log_summary.startswith("Kernel log line 1 (rcu stall) is explained by this capture")


def test_limits_recorded_given_and_unknown(tmp_path, reference_captures, capsys):
    rc, out, _ = run(capsys, "triage", str(reference_captures["k61-512m-hog"]), "--json", "--limits",
                     "rcu_cpu_stall_timeout=21,watchdog_thresh=10")
    d = json.loads(out)
    assert d["limits"]["source"] == "given" and d["limits"]["rcu_stall_ns"] == 21_000_000_000
    lim = d["stretches"][0]["limits"]
    assert lim["rcu_stall"]["share"] == pytest.approx(99_724_000 / 21e9)
    assert lim["soft_lockup"] == {"limit_ns": 20_000_000_000, "share": pytest.approx(99_724_000 / 20e9),
                                  "headroom_ns": 20_000_000_000 - 99_724_000}
    assert "0.5% of this host's 21.00 s RCU stall timeout" in d["verdict"]
    # a live capture carries what the host had
    path = write_capture(tmp_path / "live.tdp", spans=[span(0, 0, 30_000_000)])
    meta = json.loads((path / "meta.json").read_text())
    meta["host"] = {"limits": {"rcu_cpu_stall_timeout_s": 59, "watchdog_thresh_s": 10, "hz": 250,
                               "preempt_built": "none"}}
    (path / "meta.json").write_text(json.dumps(meta))
    t = triage(tdptrace.open(path))
    assert t.limits["source"] == "recorded on the host" and t.limits["rcu_stall_ns"] == 59_000_000_000
    assert t.stretches[0].limits["rcu_stall"]["headroom_ns"] == 59_000_000_000 - 30_000_000
    assert any(a["kind"] == "option" and "preempt=full" in a["text"] for a in t.stretches[0].actions)


def test_guest_size_extrapolates_each_hold_as_a_model(reference_captures, capsys):
    rc, out, _ = run(capsys, "triage", str(reference_captures["k61-512m-hog"]), "--json", "--guest-size", "64G")
    d = json.loads(out)
    s0 = d["stretches"][0]
    e = s0["extrapolation"]
    assert e["label"].startswith("model") and e["strategy"] == "two-pass" and e["scenario"] == "delete-slot"
    assert e["guest_bytes"] == 64 << 30 and e["yields"] > 0 and 0 < e["max_hold_ns"] < e["idle_max_hold_ns"]
    assert e["command"].startswith("tdptrace simulate -o model.tdp --size 64G --backing 4k --scenario delete-slot")
    leafs = [s for s in d["stretches"] if s["span_id"] == 0][0]["extrapolation"]
    assert leafs["scenario"] == "unmap" and "--range 0:32768M" in leafs["command"]  # the same half of the guest
    assert all(s["extrapolation"] is None for s in d["stretches"] if s["kind"] == "includes_away")


@pytest.mark.parametrize("args,needle", [
    (["--limits", "rcu=21"], "--limits: cannot read 'rcu=21'"),
    (["--limits", "hz=0"], "hz=0 is not a tick rate"),
    (["--guest-size", "lots"], "cannot read size 'lots'"),
    (["--guest-size", "1M"], "--guest-size 1M is out of range"),
])
def test_bad_limits_and_guest_size(reference_captures, capsys, args, needle):
    rc, _, err = run(capsys, "triage", str(reference_captures["k61-256m-thp"]), *args)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_dmesg_from_stdin_a_lockup_older_than_the_capture_is_not_blamed_on_it(reference_captures, monkeypatch,
                                                                              capsys):
    # 256m-thp span 1 (__tdp_mmu_zap_root) runs 4.655968 .. 4.657139 s; the capture begins at 3.788 s, so a CPU
    # stuck for 22 s at 4.656 s was stuck long before anything here: printed during the span, explained by nothing
    monkeypatch.setattr("sys.stdin", io.StringIO(
        "[    4.656000] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [kvmtouch:133]\n"))
    rc, out, _ = run(capsys, "triage", str(reference_captures["k61-256m-thp"]), "--dmesg", "-")
    flat = " ".join(out.split())
    assert rc == 0 and out.startswith("No risk above 10.0 ms")
    assert "This capture cannot explain the soft lockup: the report says stuck for 22.00 s" in flat
    assert "before the capture began (3.788004 s)" in flat
    assert "span 1 __tdp_mmu_zap_root was running, on the same task" in flat
    assert "soft lockup, NOT explained by this capture" in flat


def test_dmesg_without_matching_time_leaves_clean_capture_clean(reference_captures, tmp_path, capsys):
    f = tmp_path / "dmesg.txt"
    f.write_text("[  900.000000] INFO: task kvmtouch:133 blocked for more than 120 seconds.\n")
    rc, out, _ = run(capsys, "triage", str(reference_captures["k61-256m-thp"]), "--dmesg", str(f))
    assert rc == 0
    flat = " ".join(out.split())
    assert "none explained by a zap" in flat and "after the capture ended (4.687992 s)" in flat


def _anchored(tmp_path: Path) -> Path:
    """A live-style capture: monotonic clock anchored to the wall clock; one 50 ms span without yields."""
    mono0, wall0 = 5_000_000_000_000, 1_795_000_000_000_000_000
    clock = {"name": "monotonic", "anchor": {"monotonic_ns": mono0, "realtime_ns": wall0}}
    return write_capture(tmp_path / "live.tdp", clock=clock,
                         spans=[span(0, mono0 + 1_000_000_000, mono0 + 1_050_000_000, "tdp_mmu_zap_leafs",
                                     tid=42, pid=40, comm="CPU 0/KVM", gfn_start=0, gfn_end=512)],
                         sptes=[{"ts": mono0 + 1_010_000_000, "tid": 42, "gfn": 3, "old_spte": P | 0x3000,
                                 "new_spte": 0}])


def test_dmesg_T_wall_clock_placed_through_the_anchor(tmp_path):
    cap = tdptrace.open(_anchored(tmp_path))
    # wall0 + 1.02 s is inside the span; dmesg -T prints whole seconds, so use an iso stamp with fraction
    from datetime import datetime, timezone

    wall = datetime.fromtimestamp(1_795_000_001.02, tz=timezone.utc)
    line = wall.strftime("%Y-%m-%dT%H:%M:%S,%f+00:00") + " INFO: task CPU 0/KVM:42 blocked for more than 1 seconds."
    t = triage(cap, reports=parse_dmesg(line + "\n"))
    (m,) = t.kernel_reports
    assert m.capture_ns == 5_001_020_000_000
    assert m.running_span_ids == [0]
    assert t.exit_code == 1  # 50 ms without a yield, and a hung task report during it
    assert t.stretches[0].pid == 40 and t.stretches[0].sptes_zapped == {"1": {"leaf": 1, "nonleaf": 0}}


def test_dmesg_T_on_imported_capture_is_not_placed(reference_captures):
    cap = tdptrace.open(reference_captures["k61-256m-thp"])
    t = triage(cap, reports=parse_dmesg("[Wed Nov 25 09:22:59 2026] INFO: task x:1 blocked for more than "
                                        "120 seconds.\n"))
    (m,) = t.kernel_reports
    assert m.capture_ns is None and "no wall-clock anchor" in m.explanation
    assert t.exit_code == 0
    assert "no kernel report could be placed on the capture clock" in t.notes


def test_span_that_never_returned_is_a_lower_bound_risk(tmp_path):
    path = write_capture(tmp_path / "open.tdp", spans=[span(0, 1_000_000, None, "__tdp_mmu_zap_root",
                                                            zap_level=4)],
                         sptes=[{"ts": 2_000_000 + i, "gfn": i, "old_spte": P | 0x1000, "new_spte": 0}
                                for i in range(3)] + [{"ts": 40_000_000, "gfn": 9, "old_spte": P, "new_spte": 0}])
    t = triage(tdptrace.open(path))
    s = t.stretches[0]
    assert (s.ends_at, s.lower_bound, s.gap_ns) == ("capture end", True, 39_000_000)
    assert t.exit_code == 1 and "at least 39.0 ms" in t.verdict


def test_nested_gaps_are_reported_once_on_the_outer_span(tmp_path):
    # 6.12 shape: tdp_mmu_zap_root (outer) -> __tdp_mmu_zap_root (inner); no yields
    path = write_capture(tmp_path / "nest.tdp", spans=[
        span(0, 0, 30_000_000, "tdp_mmu_zap_root", caller="kvm_tdp_mmu_zap_invalidated_roots+0x5/0x10"),
        span(1, 1_000_000, 25_000_000, "__tdp_mmu_zap_root", parent_id=0, depth=1, zap_level=1),
    ])
    t = triage(tdptrace.open(path))
    assert [s.span_id for s in t.stretches] == [0]
    s = t.stretches[0]
    assert s.gap_ns == 30_000_000
    assert s.caller_path == ["kvm_tdp_mmu_zap_invalidated_roots", "tdp_mmu_zap_root"]
    assert s.inner_spans == ["__tdp_mmu_zap_root zap_level=1"]
    assert s.context == "memslot delete/move: invalidated roots torn down"


def test_triage_modules_import_neither_typer_nor_matplotlib():
    import subprocess
    import sys

    code = ("import sys\nimport tdptrace.oncall.triage, tdptrace.oncall.kernel_log, tdptrace.oncall.clockmap, tdptrace.oncall.compare, "
            "tdptrace.metrics.operations, tdptrace.units\n"
            "print(','.join(m for m in ('typer', 'matplotlib', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_ibt_kernel_kprobe_entries_at_plus_4_give_spans_and_yields(tmp_path, capsys):
    """Debian's 6.12 (IBT) places a kprobe on an ENDBR64 function at sym+0x4: still its entry. Lines as the
    lab's 6.12 trace prints them."""
    f = tmp_path / "ibt.txt"
    f.write_text(Trace()
                 .raw("        kvmtouch-160     [000] ...1.    57.470849: kvm_tdp_mmu_zap_invalidated_roots: "
                      "(kvm_tdp_mmu_zap_invalidated_roots+0x4/0xa0 [kvm])")
                 .raw("        kvmtouch-160     [000] .N.1.    57.480000: __cond_resched_rwlock_read: "
                      "(__cond_resched_rwlock_read+0x4/0x70) lock=0xffffd168800f5000")
                 .raw("        kvmtouch-160     [000] ...1.    57.481000: __cond_resched_rwlock_read_ret: "
                      "(kvm_tdp_mmu_zap_invalidated_roots+0x60/0xa0 [kvm] <- __cond_resched_rwlock_read) ret=1")
                 .raw("        kvmtouch-160     [000] ...1.    57.500000: kvm_tdp_mmu_zap_invalidated_roots_ret: "
                      "(kvm_mmu_zap_all_fast+0x1a4/0x1e0 [kvm] <- kvm_tdp_mmu_zap_invalidated_roots)")
                 .text())
    import_file(f, tmp_path / "ibt.tdp", kernel_release="6.12.117+deb12-amd64")
    cap = tdptrace.open(tmp_path / "ibt.tdp")
    assert cap.spans["function"].tolist() == ["kvm_tdp_mmu_zap_invalidated_roots"]
    assert cap.spans["yields"].tolist() == [1]
    t = triage(cap)
    assert [s.gap_ns for s in t.stretches] == [19_000_000, 9_151_000]
    assert t.exit_code == 1 and t.stretches[0].context == "memslot delete/move: invalidated roots torn down"


def test_caller_path_from_the_recorded_kernel_stack(tmp_path):
    """A live capture with --stacks: the path is the kernel stack (depth 0 = innermost), outermost first."""
    frames = ["__tdp_mmu_zap_root+0x0/0x1e0", "kvm_tdp_mmu_zap_invalidated_roots+0x87/0xf0",
              "kvm_mmu_zap_all_fast+0x1a4/0x1e0", "kvm_page_track_flush_slot+0x5e/0x90",
              "kvm_set_memslot+0x1f2/0x540", "kvm_vm_ioctl+0x9a1/0x1260"]
    path = write_capture(tmp_path / "st.tdp", spans=[span(0, 0, 50_000_000, "__tdp_mmu_zap_root", stack_id=7,
                                                          comm="qemu-system-x86")],
                         stacks=[{"stack_id": 7, "depth": d, "symbol": f} for d, f in enumerate(frames)])
    (s,) = triage(tdptrace.open(path)).stretches
    assert s.path_source == "kernel stack"
    assert s.caller_path == ["kvm_vm_ioctl", "kvm_set_memslot", "kvm_page_track_flush_slot", "kvm_mmu_zap_all_fast",
                             "kvm_tdp_mmu_zap_invalidated_roots", "__tdp_mmu_zap_root"]
    assert s.context == "memslot delete/move: invalidated roots torn down"
