"""Helpers for the live statistics tests: capability checks, a tracefs instance as ground truth, the exercise."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TDPTRACE = [sys.executable, "-m", "tdptrace.cli"]
TRACEFS = Path("/sys/kernel/tracing")
EVENTS = ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page", "kvm_mmu_zap_all_fast")


def require_live() -> None:
    """Skip, saying why, unless this host can load BPF programs on the kvmmmu tracepoints and run a VM."""
    if os.geteuid() != 0:
        pytest.skip("needs root to load BPF programs")
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.skip("bcc (python3-bpfcc) is not importable")
    if not (TRACEFS / "events" / "kvmmmu").is_dir():
        pytest.skip("no kvmmmu tracepoints (tracefs not mounted or kvm not loaded)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is not usable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_exercise(mib: int = 32) -> dict:
    """Run `tdptrace exercise --mib MIB --json` and return its report (pid, phases)."""
    out = subprocess.run(TDPTRACE + ["exercise", "--mib", str(mib), "--json"], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


_LINE = re.compile(r"^\s*\S.*?-\d+\s+\(\s*(\d+)\)\s+\[\d+\].*?\s(kvm_mmu_\w+):(.*)$")


class TracefsCounter:
    """A private tracefs instance recording the kvmmmu page-table events with tgids: independent ground truth."""

    def __init__(self, name: str) -> None:
        self.dir = TRACEFS / "instances" / f"{name}-{os.getpid()}"

    def __enter__(self) -> "TracefsCounter":
        if self.dir.exists():
            self.dir.rmdir()
        self.dir.mkdir()
        (self.dir / "buffer_size_kb").write_text("4096")
        (self.dir / "options" / "record-tgid").write_text("1")
        for e in EVENTS:
            (self.dir / "events" / "kvmmmu" / e / "enable").write_text("1")
        (self.dir / "tracing_on").write_text("1")
        return self

    def stop(self) -> None:
        (self.dir / "tracing_on").write_text("0")

    def counts(self, tgid: int) -> Counter:
        """Events of process tgid: 'alloc' (get_page created), 'lookup', 'free', 'zap_all_fast'; and 'lost'."""
        c: Counter = Counter()
        for line in (self.dir / "trace").read_text().splitlines():
            m = _LINE.match(line)
            if not m or int(m.group(1)) != tgid:
                continue
            ev, rest = m.group(2), m.group(3)
            if ev == "kvm_mmu_get_page":
                c["alloc" if rest.rstrip().endswith(" new") else "lookup"] += 1
            elif ev == "kvm_mmu_prepare_zap_page":
                c["free"] += 1
            elif ev == "kvm_mmu_zap_all_fast":
                c["zap_all_fast"] += 1
        for stats in (self.dir / "per_cpu").glob("cpu*/stats"):
            for line in stats.read_text().splitlines():
                if line.startswith("overrun:"):
                    c["lost"] += int(line.split()[1])
        return c

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            for e in EVENTS:
                (self.dir / "events" / "kvmmmu" / e / "enable").write_text("0")
            self.dir.rmdir()
