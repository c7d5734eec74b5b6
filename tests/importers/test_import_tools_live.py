"""Live: record kvmmmu tracepoints with trace-cmd and perf while `tdptrace exercise` runs, then import the
trace.dat / perf.data directly. The capture must hold exactly the events each tool's own report shows.

trace-cmd's `record` cannot run on hosts that forbid writing /proc/sys/kernel/ftrace_enabled (Firecracker
VMs), so the trace.dat is made the other supported way: events enabled in a private tracefs instance, then
`trace-cmd extract -B INSTANCE`.
"""
from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tdptrace
from tdptrace.importers import import_file

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page", "kvm_mmu_zap_all_fast")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "tracing needs root"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no usable /dev/kvm on this host"
    if not (TRACEFS / "events/kvmmmu/kvm_mmu_get_page").exists():
        return f"no kvmmmu tracepoints under {TRACEFS} (kvm not loaded or tracefs not mounted)"
    return None


pytestmark = [pytest.mark.live, pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))]
EXERCISE = [sys.executable, "-m", "tdptrace.cli", "exercise", "--mib", "8"]


def _counts(report: str) -> collections.Counter:
    """Event lines per kvmmmu event name in a tool's own text output."""
    return collections.Counter(re.findall(r"(?:kvmmmu:)?(kvm_mmu_\w+):\s", report))


def _check(cap_path: Path, report: str) -> None:
    cap = tdptrace.open(cap_path)
    want = _counts(report)
    pt = cap.page_tables
    assert want["kvm_mmu_get_page"] >= 1 and want["kvm_mmu_zap_all_fast"] == 1
    assert int((pt["kind"] != "free").sum()) == want["kvm_mmu_get_page"]
    assert int((pt["kind"] == "free").sum()) == want["kvm_mmu_prepare_zap_page"]
    assert int((cap.markers["event"] == "kvm_mmu_zap_all_fast").sum()) == 1
    # The raw fields carry gfn and role: every level and gfn the tool printed is in the capture.
    raw = re.findall(r"kvm_mmu_get_page:\s+.*?gfn=(\d+) role=(\d+)", report)
    if raw:
        got = sorted(zip(pt.loc[pt["kind"] != "free", "gfn"].tolist(), pt.loc[pt["kind"] != "free", "level"].tolist()))
        assert got == sorted((int(g), int(r) & 0xF) for g, r in raw)
    assert cap.meta.events["unknown"] == {}


@pytest.mark.skipif(shutil.which("trace-cmd") is None, reason="trace-cmd not installed (apt-get install trace-cmd)")
def test_trace_dat_from_trace_cmd_extract(tmp_path):
    inst = TRACEFS / "instances" / f"tdptrace-import-{os.getpid()}"
    inst.mkdir()
    try:
        for e in EVENTS:
            (inst / "events/kvmmmu" / e / "enable").write_text("1")
        subprocess.run(EXERCISE, check=True, capture_output=True)
        for e in EVENTS:
            (inst / "events/kvmmmu" / e / "enable").write_text("0")
        dat = tmp_path / "trace.dat"
        p = subprocess.run(["trace-cmd", "extract", "-B", inst.name, "-o", str(dat)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    finally:
        if inst.exists():  # trace-cmd extract removes the instances it read; make sure of it
            for e in EVENTS:
                (inst / "events/kvmmmu" / e / "enable").write_text("0")
            inst.rmdir()
    report = subprocess.run(["trace-cmd", "report", "-R", "-i", str(dat)], capture_output=True, text=True,
                            check=True).stdout
    r = import_file(dat, tmp_path / "c.tdp")
    assert (r.format, r.unparsed) == ("trace-cmd", 0)
    assert tdptrace.open(tmp_path / "c.tdp").meta.source["input"] == "trace.dat"
    _check(tmp_path / "c.tdp", report)
    assert not list(tmp_path.glob(".tdptrace-report-*"))  # the reported text is removed afterwards
    # A trace.dat is reported by trace-cmd whatever --format says.
    assert import_file(dat, tmp_path / "d.tdp", fmt="perf").format == "trace-cmd"


@pytest.mark.skipif(shutil.which("perf") is None, reason="perf not installed (apt-get install linux-perf)")
def test_perf_data_from_perf_record(tmp_path):
    data = tmp_path / "perf.data"
    ev = ",".join(f"kvmmmu:{e}" for e in EVENTS)
    p = subprocess.run(["perf", "record", "-q", "-o", str(data), "-e", ev, "--", *EXERCISE], capture_output=True,
                       text=True)
    if p.returncode != 0 and "perf_event_paranoid" in p.stderr:
        pytest.skip("perf may not open tracepoint events here (perf_event_paranoid)")
    assert p.returncode == 0, p.stderr
    report = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True, text=True, check=True).stdout
    r = import_file(data, tmp_path / "c.tdp")
    assert (r.format, r.unparsed, r.lost) == ("perf", 0, 0)
    _check(tmp_path / "c.tdp", report)
