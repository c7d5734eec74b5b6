"""Faults around `record` and captures: the output disk filling up (a 2 MiB tmpfs mounted by the test), two
recordings at once, a capture read while it is being written, and SIGKILL while events flow.

SIGINT/SIGTERM/SIGKILL after an exercise and the duration stop are in tests/live/test_record_live.py; these add
what happens under load and under resource faults. Live cases need root and BCC and skip with the reason.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tdptrace
from tdptrace.capture import Capture, CaptureMeta, CaptureWriter
from tdptrace.errors import OutputFull
from tdptrace.metrics.summary import summarize

REPO = Path(__file__).resolve().parents[2]
TDPTRACE = [sys.executable, "-m", "tdptrace.cli"]
TRACEFS = Path("/sys/kernel/tracing")


def _root_reason() -> str | None:
    if os.geteuid() != 0:
        return "mounting a tmpfs and recording need root"
    return None


def _live_reason() -> str | None:
    if os.geteuid() != 0:
        return "record needs root"
    if not (TRACEFS / "events/kvmmmu").is_dir():
        return "tracefs with kvmmmu events is not mounted"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no usable /dev/kvm, so no KVM activity to record"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc (python3-bpfcc) is not installed"
    return None


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs under tmp_path, unmounted afterwards."""
    if _root_reason():
        pytest.skip(_root_reason())
    mnt = tmp_path / "small"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int = 0) -> None:
    """Fill the filesystem until at most `leave` bytes are free."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize - leave
    with open(mnt / "ballast", "wb") as f:
        try:
            f.write(b"\0" * max(free, 0))
            f.flush()
        except OSError:
            pass


def _noise(n: int, seed: int) -> pd.DataFrame:
    """n SPTE rows that compress badly (random gfns and values), so a chunk costs real space."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "ts": np.sort(rng.integers(0, 1 << 40, n)).astype(np.int64), "seq": np.arange(n, dtype=np.int64) + seed * n,
        "cpu": rng.integers(0, 2, n).astype(np.int16), "tid": np.full(n, 7, np.int32), "pid": np.full(n, 7, np.int32),
        "comm": pd.array(["qemu"] * n, dtype="string"), "as_id": np.zeros(n, np.uint8),
        "gfn": rng.integers(0, 1 << 36, n).astype(np.uint64), "level": rng.integers(1, 4, n).astype(np.uint8),
        "old_spte": rng.integers(0, 1 << 62, n).astype(np.uint64),
        "new_spte": rng.integers(0, 1 << 62, n).astype(np.uint64)})


def test_disk_full_while_writing_chunks(small_disk):
    """Chunks fill the disk: a clear OutputFull, no stray temporary file, every earlier chunk readable."""
    w = CaptureWriter(small_disk / "c.tdp", CaptureMeta(source={"kind": "test"}))
    written = 0
    with pytest.raises(OutputFull) as info:
        for i in range(200):
            w.append("sptes", _noise(5000, i))
            w.write_meta()
            written += 5000
    line = info.value.line()
    assert "no space left writing" in line and "everything written before is intact" in line
    assert "\n" not in line
    assert written > 0
    assert not list((small_disk / "c.tdp").rglob(".*tmp*"))  # the failed chunk left nothing behind
    cap = Capture.open(small_disk / "c.tdp")
    assert not cap.complete
    assert len(cap.sptes) == written  # every chunk listed in meta is there and whole


def test_import_onto_a_full_disk_says_the_capture_was_removed(small_disk):
    """An import that runs out of space removes its unfinished capture; the line says so (not 'intact')."""
    from refdata import reference_trace

    _fill(small_disk, leave=64 << 10)
    out = small_disk / "i.tdp"
    p = subprocess.run(TDPTRACE + ["import", str(reference_trace("k61-128m")), "-o", str(out), "-q",
                                   "--kernel", "6.1.0-56-amd64"], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert len(lines) == 1 and "no space left" in lines[0], lines
    assert "intact" not in lines[0] and "removed" in lines[0], lines
    assert not out.exists()
    (small_disk / "ballast").unlink()
    _fill(small_disk, leave=0)
    p = subprocess.run(TDPTRACE + ["import", str(reference_trace("k61-128m")), "-o", str(out), "-q"],
                       capture_output=True, text=True, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode != 0 and len(lines) == 1 and "intact" not in lines[0], lines
    assert not out.exists()


def test_record_onto_a_full_disk_is_one_line_and_leaves_nothing(small_disk):
    reason = _live_reason()
    if reason:
        pytest.skip(reason)
    _fill(small_disk)
    out = small_disk / "r.tdp"
    p = subprocess.run(TDPTRACE + ["record", "-q", "-d", "1s", "-o", str(out)], capture_output=True, text=True,
                       timeout=120)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert len(lines) == 1 and "no space left" in lines[0], lines
    assert not out.exists() or not any(out.iterdir())


def _wait_attached(cap: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((cap / "meta.json").read_text())["probes"]["attached"]:
                return
        except (OSError, ValueError, KeyError):
            pass
        if proc.poll() is not None:
            pytest.fail(f"record ended early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("record did not attach in time")


@pytest.mark.live
def test_disk_fills_during_a_recording(small_disk):
    """The real recorder at a high event rate (its stand-in tracepoint, probes/record_bench.bpf.c) onto 2 MiB: it stops with
    OutputFull, and the chunks written before are a readable capture."""
    reason = _live_reason()
    if reason:
        pytest.skip(reason)
    import shutil

    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed for the event producer")
    sys.path.insert(0, str(REPO / "bench"))
    from transport_bench import build_producer

    from tdptrace.live.attach import ProbePlan
    from tdptrace.live.bcc_recorder import BccRecorder, program_defines
    from tdptrace.live.recording import RecordOptions

    exe = build_producer(small_disk.parent)
    _fill(small_disk, leave=400_000)  # the last 400 KB of the 2 MiB: fills within seconds, after a few chunks
    producer = subprocess.Popen([str(exe), "1000000", "20"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
    plan = ProbePlan(release=os.uname().release, tracefs=None, tracepoints=[], kprobes=False, fentry=False)
    rec = BccRecorder(plan, RecordOptions(output=small_disk / "hi.tdp", flush_seconds=0.2))
    rec.defines = program_defines(plan, rec.opts, bench_tgid=producer.pid)
    rec.start()
    try:
        producer.stdin.write("g")
        producer.stdin.flush()
        with pytest.raises(OutputFull):
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline:
                time.sleep(0.1)
                rec.poll()
            pytest.fail("2 MiB never filled up")
    finally:
        producer.kill()
        producer.wait()
        rec.bpf.cleanup()
    cap = Capture.open(small_disk / "hi.tdp")
    assert not cap.complete
    n = len(cap.markers)
    assert n > 0 and (cap.markers["event"] == "sys_enter").all()
    assert cap.meta.tables["markers"]["rows"] == n


@pytest.mark.live
def test_two_recordings_at_once(tmp_path):
    """Two records side by side, both backends: both complete, each with its own probes; the ftrace one's
    private instance is gone afterwards."""
    reason = _live_reason()
    if reason:
        pytest.skip(reason)
    runs = [subprocess.Popen(TDPTRACE + ["record", "-q", "-d", "4s", "--backend", b, "-o", str(tmp_path / f"{b}.tdp"),
                                         "--", *TDPTRACE, "exercise", "--mib", "16"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for b in ("bcc", "ftrace")]
    for p in runs:
        assert p.wait(180) == 0, p.stderr.read()
    for b in ("bcc", "ftrace"):
        cap = tdptrace.open(tmp_path / f"{b}.tdp")
        assert cap.complete and cap.meta.source["kind"] == b
        assert cap.meta.lost_events["total"] == 0
    mine = [r.pid for r in runs]
    assert not [d for d in (TRACEFS / "instances").glob("tdptrace-*") if d.name.split("-")[1] in map(str, mine)]


@pytest.mark.live
def test_two_recordings_racing_for_one_output(tmp_path):
    """Exactly one of two records started together on the same -o gets it; the other says so in one line."""
    reason = _live_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "same.tdp"
    runs = [subprocess.Popen(TDPTRACE + ["record", "-q", "-d", "2s", "--backend", "bcc", "-o", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    done = [(p.wait(180), p.stderr.read()) for p in runs]
    errs = [e for _, e in done]
    assert sorted(rc for rc, _ in done) == [0, 2], errs
    loser = next(e for rc, e in done if rc == 2)  # the winner may print its own closing line on stderr
    assert "already exists" in loser and len(loser.strip().splitlines()) == 1 and "Traceback" not in loser
    cap = tdptrace.open(out)
    assert cap.complete


@pytest.mark.live
def test_reading_a_capture_while_it_is_written(tmp_path):
    """summary of a capture that `record` is still writing: works every time, says it is incomplete, and
    its counts only grow; the finished capture has all of them."""
    reason = _live_reason()
    if reason:
        pytest.skip(reason)
    cap = tmp_path / "live.tdp"
    rec = subprocess.Popen(TDPTRACE + ["record", "-q", "--backend", "bcc", "-o", str(cap)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_attached(cap, rec)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            subprocess.run(TDPTRACE + ["exercise", "--mib", "16"], capture_output=True, timeout=120)

    t = threading.Thread(target=load)
    t.start()
    seen = []
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            p = subprocess.run(TDPTRACE + ["summary", "--json", str(cap)], capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, p.stderr
            s = json.loads(p.stdout)
            assert any("incomplete" in n or "recording" in n for n in s["notes"]), s["notes"]
            seen.append(s["page_tables"]["allocated"])
    finally:
        stop.set()
        t.join()
        rec.send_signal(signal.SIGINT)
        assert rec.wait(60) == 0, rec.stderr.read()
    assert len(seen) >= 2 and seen == sorted(seen)
    final = summarize(tdptrace.open(cap))
    assert final["page_tables"]["allocated"] >= seen[-1] > 0


@pytest.mark.live
def test_sigkill_under_load_loses_at_most_the_unflushed_second(tmp_path):
    """SIGKILL while exercises run back to back: every event a tracefs witness saw more than the flush
    interval (1 s) plus a margin before the kill is in the capture."""
    reason = _live_reason()
    if reason:
        pytest.skip(reason)
    from tdptrace.importers import import_file

    cap = tmp_path / "k.tdp"
    inst = TRACEFS / "instances" / f"tdptrace-witness-{os.getpid()}"
    inst.mkdir()
    try:
        (inst / "buffer_size_kb").write_text("8192")
        for e in ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page", "kvm_mmu_zap_all_fast"):
            (inst / "events/kvmmmu" / e / "enable").write_text("1")
        rec = subprocess.Popen(TDPTRACE + ["record", "-q", "--backend", "bcc", "-o", str(cap)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_attached(cap, rec)
        attached_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        t_end = time.monotonic() + 5
        while time.monotonic() < t_end:
            subprocess.run(TDPTRACE + ["exercise", "--mib", "16"], capture_output=True, timeout=120)
        kill_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        rec.send_signal(signal.SIGKILL)
        rec.wait(30)
        (inst / "tracing_on").write_text("0")
        (tmp_path / "w.txt").write_bytes((inst / "trace").read_bytes())
    finally:
        (inst / "events/enable").write_text("0")
        inst.rmdir()
    import_file(tmp_path / "w.txt", tmp_path / "w.tdp", kernel_release=os.uname().release)
    witness = tdptrace.open(tmp_path / "w.tdp").page_tables
    got = tdptrace.open(cap)
    assert not got.complete
    # after the probes were attached, and more than the flush interval plus a margin before the kill
    early = witness[(witness["ts"] > attached_ns + 500_000_000) & (witness["ts"] < kill_ns - 1_500_000_000)]
    assert len(early) > 0
    # tracefs' "local" clock and the recorder's ktime differ by a little: match events by who, what and
    # where (multiset), not by timestamp
    from collections import Counter

    keys = ["tid", "kind", "gfn", "level"]

    def bag(df) -> Counter:
        return Counter(zip(*(df[k].astype(str).tolist() for k in keys)))

    have, want = bag(got.page_tables), bag(early)
    missing = {k: n - have[k] for k, n in want.items() if have[k] < n}
    assert missing == {}
