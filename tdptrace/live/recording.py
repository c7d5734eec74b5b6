"""What every live backend shares: the options of `record`, the live status line's figures, the capture's
meta for a live host, and the loop that runs until Ctrl-C, SIGTERM, the duration or the end of a command."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from tdptrace.capture import CaptureMeta, default_host
from tdptrace.errors import BadInput
from tdptrace.live.host_limits import host_limits


@dataclass
class RecordOptions:
    """Settings of one recording (validated before any of them reaches the kernel)."""

    output: Path
    pids: tuple[int, ...] = ()
    sptes: bool = False
    spans: bool = True          # False (--no-spans): tracepoints only, no kprobes at all
    stacks: bool = False
    stack_min_gap_ns: int = 1_000_000
    force: bool = False
    flush_seconds: float = 1.0  # a SIGKILL loses at most this much (CaptureWriter chunks are atomic)
    flush_rows: int = 500_000
    event_pages: int = 4096     # 16 MiB of 64-byte events
    span_pages: int = 256       # 1 MiB of span records
    max_tables: int = 1 << 18
    waiters: bool = False       # lock contention and vCPU fault latency (the capture-format doc, table waits)

    def validate(self) -> None:
        for name in ("event_pages", "span_pages"):
            v = getattr(self, name)
            if v <= 0 or v & (v - 1):
                raise BadInput(f"{name} must be a power of two, not {v}", "use e.g. 1024, 4096")
        if not (0 <= self.stack_min_gap_ns < 1 << 62):
            raise BadInput("the stack threshold is out of range", "give milliseconds between 0 and 10^9")
        for p in self.pids:
            if not isinstance(p, int) or p <= 0 or p >= 1 << 22:
                raise BadInput(f"-p {p} is not a process id", "give process ids like -p 1234,5678")
            if not Path(f"/proc/{p}").exists():
                raise BadInput(f"-p {p}: no such process", "give the pid of a running VMM (e.g. qemu)")


@dataclass
class LiveStatus:
    """The figures of the live line."""

    elapsed_s: float = 0.0
    events: int = 0
    events_per_s: float = 0.0
    spans: int = 0
    worst_gap_ns: int | None = None
    drops: int = 0


ChunkObserver = Callable[[str, Any], None]  # (table, pyarrow.Table) of every chunk the capture writer wrote


class Recorder(Protocol):
    """A live backend (BCC or ftrace)."""

    def start(self) -> None: ...

    def poll(self) -> LiveStatus: ...

    def lost_per_cpu(self) -> dict[str, int]: ...

    def finish(self, stopped_by: str) -> Path: ...


@dataclass
class RunResult:
    """How a recording ended."""

    capture: Path
    stopped_by: str
    command_status: int | None = None
    status: LiveStatus = field(default_factory=LiveStatus)


def live_meta(kind: str, options: RecordOptions, release: str, extra_source: dict[str, Any]) -> CaptureMeta:
    """Meta for a live capture: host, kernel, KVM parameters and the clock anchor."""
    mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    real = time.time_ns()
    return CaptureMeta(
        source={"kind": kind, "pids": list(options.pids), "sptes": options.sptes, "spans": options.spans, "stacks": options.stacks,
                "waiters": options.waiters}
        | extra_source,
        kernel={"release": release, "version": os.uname().version},
        kvm=kvm_params(),
        host=default_host() | {"limits": host_limits()},
        clock={"name": "CLOCK_MONOTONIC", "unit": "ns",
               "anchor": {"monotonic_ns": mono, "realtime_ns": real}},
    )


def kvm_params(root: Path = Path("/sys/module")) -> dict[str, Any]:
    """tdp_mmu and the vendor module (kvm_intel, kvm_amd, kvm_pvm...) with its parameters, as the host has them."""
    out: dict[str, Any] = {}
    tdp = root / "kvm" / "parameters" / "tdp_mmu"
    if tdp.exists():
        out["tdp_mmu"] = tdp.read_text().strip()
    vendors = sorted(d.name for d in root.glob("kvm_*") if d.is_dir())
    out["vendor_module"] = vendors[0] if vendors else None
    for v in vendors:
        params = {}
        for p in ("ept", "npt", "enable_ept"):
            f = root / v / "parameters" / p
            if f.exists():
                params[p] = f.read_text().strip()
        if params:
            out[v] = params
    return out


class LiveRun:
    """One recording as a loop the caller drives: entering starts the recorder (and `command`); each step of
    the iteration polls once and yields the live figures; the loop ends at SIGINT/SIGTERM (when entered on the
    main thread), `duration` seconds, the end of `command` or `stop()`. `finish()` (also on leaving, whatever
    happened) ends the command and finishes the capture; `result` then says how it ended."""

    def __init__(self, recorder: Recorder, *, duration: float | None = None, command: list[str] | None = None,
                 interval: float = 0.1) -> None:
        self.recorder = recorder
        self.duration = duration
        self.command = command
        self.interval = interval
        self.status = LiveStatus()
        self.result: RunResult | None = None
        self._stop = threading.Event()
        self._reason: list[str] = []
        self._old: dict[int, Any] = {}
        self._child: subprocess.Popen | None = None
        self._started = False

    def stop(self, reason: str = "stopped") -> None:
        """End the loop at its next step (from the loop's body, a callback or another thread)."""
        if not self._reason:
            self._reason.append(reason)
        self._stop.set()

    def __enter__(self) -> "LiveRun":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, lambda signum, frame: self.stop(signal.Signals(signum).name))
                         for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.recorder.start()
            self._started = True
            if self.command:
                try:
                    self._child = subprocess.Popen(self.command)
                except OSError as exc:
                    raise BadInput(f"cannot run {self.command[0]}: {exc.strerror}", "check the command after --")
        except BaseException:
            self.finish()
            raise
        return self

    def __iter__(self) -> Iterator[LiveStatus]:
        t0 = time.monotonic()
        while not self._stop.is_set():
            self._stop.wait(self.interval)
            self.status = self.recorder.poll()
            yield self.status
            if self.duration is not None and time.monotonic() - t0 >= self.duration:
                self.stop("duration")
            elif self._child is not None and self._child.poll() is not None:
                self.stop("command exited")

    def finish(self) -> RunResult | None:
        """End the command (SIGTERM, then SIGKILL after 10 s), finish the capture, restore the signal handlers."""
        if self.result is not None or not self._old and not self._started:
            return self.result
        child, self._child = self._child, None
        cmd_status = None
        if child is not None:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            cmd_status = child.returncode
        stopped_by = self._reason[0] if self._reason else "error"
        try:
            if self._started:
                self._started = False
                path = self.recorder.finish(stopped_by)
                self.result = RunResult(capture=path, stopped_by=stopped_by, command_status=cmd_status,
                                        status=self.status)
        finally:
            old, self._old = self._old, {}
            for s, h in old.items():
                signal.signal(s, h)
        return self.result

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish()


def run(recorder: Recorder, *, duration: float | None = None, command: list[str] | None = None,
        tick: Callable[[LiveStatus], None] | None = None, interval: float = 0.1) -> RunResult:
    """Record until SIGINT/SIGTERM, `duration` seconds, or the end of `command`; always finish the capture."""
    with LiveRun(recorder, duration=duration, command=command, interval=interval) as live:
        for status in live:
            if tick:
                tick(status)
    assert live.result is not None
    return live.result
