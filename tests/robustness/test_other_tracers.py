"""Live: other tracers on the host. Real hypervisors run perf and other BPF users beside tdptrace, and the
kernel shares a tracepoint between them: it delivers an event to perf only when every BPF program attached
to that tracepoint returns non-zero. tdptrace's programs always pass events on, so `perf record` of the
kvmmmu tracepoints sees every event while `tdptrace top` or `tdptrace record` runs beside it; a foreign
program that hides them makes the import of that perf.data say so in one line instead of 'no trace events'."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tdptrace
from tdptrace.cli import main

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page", "kvm_mmu_zap_all_fast")
TDPTRACE = [sys.executable, "-m", "tdptrace.cli"]
EXERCISE = TDPTRACE + ["exercise", "--mib", "8"]


def _reason() -> str | None:
    if os.geteuid() != 0:
        return "tracing needs root"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no usable /dev/kvm on this host"
    if not (TRACEFS / "events/kvmmmu/kvm_mmu_get_page").exists():
        return "no kvmmmu tracepoints (kvm not loaded or tracefs not mounted)"
    if shutil.which("perf") is None:
        return "perf not installed (apt-get install linux-perf)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc (python3-bpfcc) is not installed"
    return None


pytestmark = [pytest.mark.live, pytest.mark.skipif(_reason() is not None, reason=str(_reason()))]


def _perf_record(out: Path) -> str:
    """perf record of the kvmmmu events around one exercise; returns what `perf script` prints."""
    ev = ",".join(f"kvmmmu:{e}" for e in EVENTS)
    p = subprocess.run(["perf", "record", "-q", "-o", str(out), "-e", ev, "--", *EXERCISE], capture_output=True,
                       text=True, timeout=300)
    if p.returncode != 0 and "perf_event_paranoid" in p.stderr:
        pytest.skip("perf may not open tracepoint events here (perf_event_paranoid)")
    assert p.returncode == 0, p.stderr
    return subprocess.run(["perf", "script", "-i", str(out)], capture_output=True, text=True, check=True,
                          timeout=120).stdout


def _start_top(tmp_path: Path) -> subprocess.Popen:
    log = open(tmp_path / "top.err", "w+")
    proc = subprocess.Popen(TDPTRACE + ["top", "1", "600"], stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 120
    while "watching" not in (tmp_path / "top.err").read_text():
        assert proc.poll() is None, (tmp_path / "top.err").read_text()
        assert time.monotonic() < deadline, "top did not attach in time"
        time.sleep(0.2)
    return proc


def _start_record(tmp_path: Path) -> subprocess.Popen:
    cap = tmp_path / "beside.tdp"
    proc = subprocess.Popen(TDPTRACE + ["record", "-q", "-d", "600s", "-o", str(cap)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            if json.loads((cap / "meta.json").read_text())["probes"]["attached"]:
                return proc
        except (OSError, ValueError, KeyError):
            pass
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "record did not attach in time"
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(2)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("beside", ["top", "record"])
def test_perf_record_sees_every_event_while_tdptrace_traces_beside_it(tmp_path, beside):
    other = (_start_top if beside == "top" else _start_record)(tmp_path)
    try:
        report = _perf_record(tmp_path / "perf.data")
    finally:
        _stop(other)
    counts = {e: len(re.findall(rf"kvmmmu:{e}:", report)) for e in EVENTS}
    assert counts["kvm_mmu_zap_all_fast"] == 1 and counts["kvm_mmu_get_page"] >= 1, counts
    assert main(["import", str(tmp_path / "perf.data"), "-o", str(tmp_path / "c.tdp"), "-q"]) == 0
    cap = tdptrace.open(tmp_path / "c.tdp")
    assert int((cap.markers["event"] == "kvm_mmu_zap_all_fast").sum()) == 1
    assert int((cap.page_tables["kind"] != "free").sum()) == counts["kvm_mmu_get_page"]
    if beside == "record":  # and the recorder beside perf has the exercise's fast zap too
        rec = tdptrace.open(tmp_path / "beside.tdp")
        assert int((rec.markers["event"] == "kvm_mmu_zap_all_fast").sum()) >= 1


HIDING = """
import sys, time
from bcc import BPF
b = BPF(text="".join("TRACEPOINT_PROBE(kvmmmu, %s) { return 0; }\\n" % e for e in sys.argv[1:]))
print("attached", flush=True)
sys.stdin.read()
"""


def test_a_foreign_program_hiding_the_events_is_named_by_the_import(tmp_path, capsys):
    """A BPF program that returns 0 (as bcc tools do by default) takes the events from perf: the import of
    that perf.data says perf recorded no samples and why that happens, in one line."""
    hide = subprocess.Popen(["/usr/bin/python3", "-c", HIDING, *EVENTS], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert hide.stdout.readline().strip() == "attached", hide.stderr.read()
        report = _perf_record(tmp_path / "perf.data")
    finally:
        hide.stdin.close()
        hide.wait(60)
    assert not re.search(r"kvmmmu:kvm_mmu_\w+:", report)  # what perf printed then: nothing
    capsys.readouterr()
    rc = main(["import", str(tmp_path / "perf.data"), "-o", str(tmp_path / "c.tdp")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1, err
    assert "perf recorded no samples of kvmmmu:kvm_mmu_get_page" in err[0] and "eBPF program" in err[0], err
    assert not (tmp_path / "c.tdp").exists()
