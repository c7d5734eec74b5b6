"""`tdptrace record` on this host (root, /dev/kvm, tracefs): what it records of `tdptrace exercise` equals what
a tracefs instance sees at the same time, nothing is lost, and every way of stopping leaves a valid capture."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tdptrace
from tdptrace.metrics.summary import summarize

TDPTRACE = [sys.executable, "-m", "tdptrace.cli"]
EVENTS = ("kvm_tdp_mmu_spte_changed", "kvm_mmu_get_page", "kvm_mmu_prepare_zap_page", "kvm_mmu_zap_all_fast",
          "kvm_mmu_split_huge_page")
TRACEFS = Path("/sys/kernel/tracing")


def _need_live() -> None:
    if os.geteuid() != 0:
        pytest.skip("record needs root")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm, so no KVM activity to record")
    if not (TRACEFS / "events" / "kvmmmu").is_dir():
        pytest.skip("tracefs with kvmmmu events is not mounted at /sys/kernel/tracing")
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.skip("bcc (python3-bpfcc) is not installed")


class TracefsWitness:
    """A private tracefs instance recording the same kvmmmu events: the ground truth to compare with."""

    def __init__(self, name: str) -> None:
        self.dir = TRACEFS / "instances" / name

    def __enter__(self) -> "TracefsWitness":
        self.dir.mkdir()
        (self.dir / "buffer_size_kb").write_text("8192")
        (self.dir / "options" / "record-tgid").write_text("1")
        for e in EVENTS:
            p = self.dir / "events" / "kvmmmu" / e / "enable"
            if p.exists():
                p.write_text("1")
        return self

    def stop(self, out: Path) -> Path:
        (self.dir / "tracing_on").write_text("0")
        out.write_bytes((self.dir / "trace").read_bytes())
        return out

    def __exit__(self, *exc) -> None:
        (self.dir / "events" / "enable").write_text("0")
        self.dir.rmdir()


def _counts(cap, pid: int) -> dict[str, int]:
    pt = cap.page_tables
    pt = pt[pt["pid"] == pid]
    out = {f"{k}_l{lv}": int(n) for (k, lv), n in pt.groupby(["kind", "level"]).size().items()}
    m = cap.markers
    m = m[m["pid"] == pid]
    out |= {f"marker:{e}": int(n) for e, n in m["event"].value_counts().items()}
    s = cap.sptes
    out["sptes"] = int((s["pid"] == pid).sum())
    return out


@pytest.mark.live
@pytest.mark.parametrize("backend", ["bcc", "ftrace"])
def test_record_exercise_equals_a_tracefs_witness(tmp_path, backend):
    _need_live()
    cap_path = tmp_path / "exercise.tdp"
    with TracefsWitness(f"witness-{os.getpid()}") as w:
        run = subprocess.run(TDPTRACE + ["record", "-q", "--sptes", "--backend", backend, "-o", str(cap_path), "--",
                                         *TDPTRACE, "exercise", "--json"],
                             capture_output=True, text=True, timeout=300)
        text = w.stop(tmp_path / "witness.txt")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    pid = report["pid"]
    cap = tdptrace.open(cap_path)
    meta = cap.meta
    assert cap.complete and meta.source["kind"] == backend and meta.source["stopped_by"] == "command exited"
    assert meta.lost_events["total"] == 0
    from tdptrace.importers import import_file

    import_file(text, tmp_path / "witness.tdp", kernel_release=os.uname().release)
    witness = tdptrace.open(tmp_path / "witness.tdp")
    got, want = _counts(cap, pid), _counts(witness, pid)
    assert got == want
    # The exercise deletes one memslot: exactly one fast zap; the VM's page tables are all freed at the end.
    assert got["marker:kvm_mmu_zap_all_fast"] == 1
    assert sum(v for k, v in got.items() if k.startswith("free_")) >= 1
    s = summarize(cap)
    assert s["lost_events"] == 0
    assert s["page_tables"]["allocated"] == sum(v for k, v in want.items() if k.startswith("alloc_"))
    attached = meta.probes["attached"]
    assert "tracepoint:kvmmmu:kvm_mmu_zap_all_fast" in attached
    if not meta.capabilities["spans"]:  # this host: tracepoints only, and the capture says what it lacks
        assert s["spans"] == [] and "unavailable" in s["yields"]
        assert any("unavailable" in n for n in meta.notes)
        assert any(m["reason"] == "no kprobes on this kernel" for m in meta.probes["missing"])
    if Path("/sys/kernel/btf/vmlinux").exists():  # per function: where its arguments came from, how attached
        y = meta.probes["arguments"]["__cond_resched_rwlock_read"]
        assert y["source"] == "BTF" and y["params"] == [["lock", "rwlock_t *"]]
        assert y["method"] == (None if not meta.capabilities["spans"] else y["method"])
    if backend == "ftrace":  # its private instance is gone (any left belong to recorders still running)
        left = [d.name.split("-")[1] for d in (TRACEFS / "instances").glob("tdptrace-*")]
        assert all(Path(f"/proc/{p}").exists() for p in left)


def _start_recording(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    cap = tmp_path / "run.tdp"
    p = subprocess.Popen(TDPTRACE + ["record", "-q", "-o", str(cap), *extra], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # meta.json lists the probes once they are attached
        mp = cap / "meta.json"
        if mp.exists() and json.loads(mp.read_text())["probes"]["attached"]:
            return p, cap
        time.sleep(0.1)
    p.kill()
    pytest.fail(f"record did not start: {p.stderr.read() if p.stderr else ''}")


def _exercise() -> int:
    out = subprocess.run(TDPTRACE + ["exercise", "--json"], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)["pid"]


@pytest.mark.live
@pytest.mark.parametrize("sig,backend", [(signal.SIGINT, "bcc"), (signal.SIGTERM, "bcc"), (signal.SIGTERM, "ftrace")])
def test_a_signal_leaves_a_complete_capture(tmp_path, sig, backend):
    _need_live()
    p, cap_path = _start_recording(tmp_path, "--sptes", "--backend", backend)
    pid = _exercise()
    p.send_signal(sig)
    assert p.wait(60) == 0, p.stderr.read() if p.stderr else ""
    cap = tdptrace.open(cap_path)
    assert cap.complete and cap.meta.source["stopped_by"] == sig.name
    assert (cap.markers["pid"] == pid).sum() == 1  # the exercise's one fast zap
    assert summarize(cap)["lost_events"] == 0


@pytest.mark.live
def test_sigkill_keeps_every_flushed_chunk(tmp_path):
    _need_live()
    p, cap_path = _start_recording(tmp_path)
    pid = _exercise()
    time.sleep(2.5)  # chunks are flushed every second
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    cap = tdptrace.open(cap_path)
    assert not cap.complete
    assert (cap.markers["pid"] == pid).sum() == 1
    s = summarize(cap)
    assert any("incomplete" in n for n in s["notes"])


@pytest.mark.live
def test_duration_stops_the_recording(tmp_path):
    _need_live()
    t0 = time.monotonic()
    run = subprocess.run(TDPTRACE + ["record", "-q", "-d", "1s", "-o", str(tmp_path / "d.tdp")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert time.monotonic() - t0 >= 1.0
    assert tdptrace.open(tmp_path / "d.tdp").meta.source["stopped_by"] == "duration"


def test_ebpf_prints_the_program_with_its_settings():
    run = subprocess.run(TDPTRACE + ["record", "--ebpf", "--sptes", "-o", "/nonexistent/x.tdp"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "#define TDP_WITH_SPTES 1" in run.stdout
    assert "TRACEPOINT_PROBE(kvmmmu, kvm_mmu_get_page)" in run.stdout
    assert "struct tdp_event {" in run.stdout


@pytest.mark.parametrize("args,needle", [
    (["-d", "soon"], "is not a duration"),
    (["-p", "12x"], "is not a list of process ids"),
    (["-p", "4194303"], "no such process"),
    (["--backend", "dtrace"], "is unknown"),
])
def test_bad_options_give_one_line_and_fail(args, needle):
    run = subprocess.run(TDPTRACE + ["record", *args, "-o", "/tmp/never.tdp"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2
    assert needle in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert "Traceback" not in run.stderr


def test_ftrace_kprobe_definitions_name_arguments_by_era():
    from tdptrace.kernel.signatures import signature
    from tdptrace.live.attach import ProbePlan, SpanFunction
    from tdptrace.live.ftrace_backend import kprobe_definitions

    rel = "6.1.0-56-amd64"
    plan = ProbePlan(release=rel, tracefs=None, tracepoints=[], kprobes=True, fentry=False, span_functions=[
        SpanFunction("__tdp_mmu_zap_root", "__tdp_mmu_zap_root", signature("__tdp_mmu_zap_root", rel)),
        SpanFunction("tdp_mmu_zap_leafs", "tdp_mmu_zap_leafs.isra.0", None)],
        yield_functions=["__cond_resched_rwlock_read"])
    assert kprobe_definitions(plan, "g") == [
        "p:g/span0 __tdp_mmu_zap_root kvm=%di root=%si shared=%dx zap_level=%cx",
        "r:g/span0_ret __tdp_mmu_zap_root ret=$retval",
        "p:g/span1 tdp_mmu_zap_leafs.isra.0",
        "r:g/span1_ret tdp_mmu_zap_leafs.isra.0 ret=$retval",
        "p:g/yield0 __cond_resched_rwlock_read lock=%di",
        "r:g/yield0_ret __cond_resched_rwlock_read ret=$retval",
    ]


def test_stale_instances_of_dead_recorders_are_removed(tmp_path):
    from tdptrace.live.ftrace_backend import remove_stale_instances

    (tmp_path / "instances" / "tdptrace-4194300").mkdir(parents=True)
    (tmp_path / "instances" / f"tdptrace-{os.getpid()}").mkdir()
    (tmp_path / "instances" / "someone-else").mkdir()
    assert remove_stale_instances(tmp_path) == ["tdptrace-4194300"]
    assert sorted(d.name for d in (tmp_path / "instances").iterdir()) == sorted([f"tdptrace-{os.getpid()}",
                                                                                 "someone-else"])


# Waits for SIGUSR1, then becomes `tdptrace exercise` (same pid): lets a test pass -p before the VM exists.
_EXEC_ON_SIGNAL = ("import os, signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1]); "
                   "print(os.getpid(), flush=True); signal.sigwait([signal.SIGUSR1]); "
                   "os.execv(sys.executable, [sys.executable, '-m', 'tdptrace.cli', 'exercise', '--json'])")


@pytest.mark.live
def test_pid_filter_keeps_that_vmm_only(tmp_path):
    _need_live()
    vmm = subprocess.Popen([sys.executable, "-c", _EXEC_ON_SIGNAL], stdout=subprocess.PIPE, text=True)
    pid = int(vmm.stdout.readline())
    other = tmp_path / "other.tdp"
    p, cap_path = _start_recording(tmp_path, "-p", str(pid))
    q = subprocess.Popen(TDPTRACE + ["record", "-q", "-o", str(other), "-p", str(os.getpid())],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ((other / "meta.json").exists() and json.loads((other / "meta.json").read_text())["probes"]["attached"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with TracefsWitness(f"witness-{os.getpid()}") as w:
        vmm.send_signal(signal.SIGUSR1)
        assert json.loads(vmm.stdout.read())["pid"] == pid
        vmm.wait(60)
        text = w.stop(tmp_path / "witness.txt")
    for rec in (p, q):
        rec.send_signal(signal.SIGINT)
        assert rec.wait(60) == 0
    from tdptrace.importers import import_file

    import_file(text, tmp_path / "witness.tdp", kernel_release=os.uname().release)
    cap = tdptrace.open(cap_path)
    assert cap.meta.source["pids"] == [pid]
    assert _counts(cap, pid) == _counts(tdptrace.open(tmp_path / "witness.tdp"), pid)
    assert set(cap.page_tables["pid"]) <= {pid} and set(cap.markers["pid"]) == {pid}
    # a recording for another process saw none of this VM's events
    o = tdptrace.open(other)
    assert (o.page_tables["pid"] == pid).sum() == 0 and (o.markers["pid"] == pid).sum() == 0


@pytest.mark.live
def test_a_failed_compile_leaves_no_capture_and_one_line(tmp_path, monkeypatch):
    _need_live()
    from tdptrace.errors import MissingCapability
    from tdptrace.live import bcc_recorder
    from tdptrace.live.attach import plan_probes
    from tdptrace.live.host import check_host
    from tdptrace.live.recording import RecordOptions

    monkeypatch.setattr(bcc_recorder, "PROGRAM", "layout.bpf.c.missing")
    rec = bcc_recorder.BccRecorder(plan_probes(check_host()), RecordOptions(output=tmp_path / "x.tdp"))
    with pytest.raises(MissingCapability, match="BCC could not compile"):
        rec.start()
    assert not (tmp_path / "x.tdp").exists()


@pytest.mark.live
def test_auto_backend_falls_back_to_ftrace_when_bcc_cannot_compile(tmp_path, monkeypatch):
    _need_live()
    from tdptrace import cli
    from tdptrace.live import bcc_recorder

    monkeypatch.setattr(bcc_recorder, "PROGRAM", "layout.bpf.c.missing")
    rc = cli.main(["record", "-q", "-d", "1s", "-o", str(tmp_path / "a.tdp")])
    assert rc == 0
    assert tdptrace.open(tmp_path / "a.tdp").meta.source["kind"] == "ftrace"
    rc = cli.main(["record", "-q", "-d", "1s", "--backend", "bcc", "-o", str(tmp_path / "b.tdp")])
    assert rc == 2 and not (tmp_path / "b.tdp").exists()
