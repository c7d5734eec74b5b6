"""record --waiters on the running kernel (ftrace backend): the waiter tracepoints are enabled in the private
instance only, every kvm_page_fault recorded becomes a fault wait, every mmu_lock-like contention a lock wait,
the host's limits are in meta, and nothing is left in tracefs."""
from __future__ import annotations

import os
import subprocess

import pytest
from livestats import REPO, TDPTRACE, TRACEFS

import tdptrace


def _require() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for tracefs")
    if not (TRACEFS / "events" / "kvmmmu").is_dir():
        pytest.skip("no kvmmmu tracepoints (tracefs not mounted or kvm not loaded)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is not usable")


@pytest.mark.live
def test_record_waiters_with_the_exercise(tmp_path):
    _require()
    hash_ptr = (TRACEFS / "options" / "hash-ptr").read_text() if (TRACEFS / "options" / "hash-ptr").exists() else None
    out = tmp_path / "w.tdp"
    p = subprocess.run(TDPTRACE + ["record", "--backend", "ftrace", "--waiters", "-q", "-o", str(out), "--",
                                   *TDPTRACE, "exercise", "--mib", "16"], capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr
    cap = tdptrace.open(out)
    has_lock = (TRACEFS / "events/lock/contention_begin").is_dir()
    has_fault = (TRACEFS / "events/kvm/kvm_page_fault").is_dir() and (TRACEFS / "events/kvm/kvm_entry").is_dir()
    assert cap.meta.source["waiters"] is True
    assert cap.meta.capabilities["lock_contention"] is has_lock
    assert cap.meta.capabilities["fault_latency"] is has_fault
    w = cap.table("waits")
    counts = cap.meta.events["counts"]
    # every fault traced is a wait (ended at the vCPU's next entry, or still open at the end)
    assert int((w["kind"] == "fault").sum()) == counts.get("kvm_page_fault", 0)
    # lock waits only for spinning rwlocks (the instance's filter): flags SPIN and READ or WRITE
    locks = w[w["kind"] == "lock"]
    assert ((locks["flags"].astype(int) & 1) == 1).all() and locks["mode"].isin(["read", "write"]).all()
    assert int(len(locks)) <= counts.get("contention_begin", 0)
    lim = cap.meta.host["limits"]
    wd = "/proc/sys/kernel/watchdog_thresh"
    assert lim["watchdog_thresh_s"] == (int(open(wd).read()) if os.path.exists(wd) else None)
    assert cap.meta.source["instance"] not in {d.name for d in (TRACEFS / "instances").iterdir()}
    if hash_ptr is not None:  # the host's own trace options are untouched
        assert (TRACEFS / "options" / "hash-ptr").read_text() == hash_ptr


def test_waiters_need_the_ftrace_backend(tmp_path):
    p = subprocess.run(TDPTRACE + ["record", "--backend", "bcc", "--waiters", "-o", str(tmp_path / "x.tdp"), "-d",
                                   "1s"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == ("tdptrace: error: --waiters is recorded by the ftrace backend only; "
                                "use --backend ftrace (or auto)")
