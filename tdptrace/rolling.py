"""Rolling captures for `tdptrace serve --record-dir`: one capture per hour, old ones pruned by age and size.

Each capture is written by a `tdptrace record` child process, so recording never shares a thread (or a
crash) with the exporter; after each one ends the directory is pruned. Only directories that are tdptrace
captures (meta.json with the capture format name) are ever deleted.
"""
from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from tdptrace.errors import BadInput
from tdptrace.schema import FORMAT_NAME, META_FILE

CommandFor = Callable[[Path, float], list[str]]


def record_command(path: Path, seconds: float) -> list[str]:
    """The child that writes one capture: `tdptrace record -o PATH -d SECONDS -q`."""
    return [sys.executable, "-m", "tdptrace.cli", "record", "-o", str(path), "-d", f"{max(1.0, seconds):.0f}s", "-q"]


def seconds_to_next_boundary(now: float, period_s: float) -> float:
    """Seconds until the next multiple of period_s (wall clock), so captures line up with the hour."""
    return period_s - (now % period_s)


def _is_capture(d: Path) -> bool:
    try:
        return json.loads((d / META_FILE).read_text()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _size(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def prune(directory: Path, retain_s: float, retain_bytes: int, now: float, keep: Optional[Path] = None) -> list[Path]:
    """Delete captures older than retain_s, then the oldest until the rest fit in retain_bytes; returns them.

    Age is the capture directory's modification time; `keep` (the capture being written) is never deleted.
    """
    caps = sorted((d for d in directory.iterdir() if d.is_dir() and d != keep and _is_capture(d)),
                  key=lambda d: d.stat().st_mtime)
    removed = []
    for d in list(caps):
        if now - d.stat().st_mtime > retain_s:
            shutil.rmtree(d)
            caps.remove(d)
            removed.append(d)
    sizes = {d: _size(d) for d in caps}
    total = sum(sizes.values()) + (_size(keep) if keep is not None and keep.exists() else 0)
    for d in caps:
        if total <= retain_bytes:
            break
        shutil.rmtree(d)
        total -= sizes[d]
        removed.append(d)
    return removed


@dataclass
class CaptureRoller:
    """Runs one recording child per period into `directory` until stopped, pruning after each."""

    directory: Path
    retain_hours: float = 48.0
    retain_bytes: int = 2 << 30
    period_s: float = 3600.0
    command_for: CommandFor = record_command
    log: Callable[[str], None] = lambda msg: print(f"tdptrace serve: {msg}", file=sys.stderr, flush=True)
    captures: list[Path] = field(default_factory=list)
    failures: int = 0

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        if not self.directory.is_dir():
            raise BadInput(f"--record-dir {self.directory} is not a directory", "create it first")
        if self.retain_hours <= 0 or self.retain_bytes <= 0:
            raise BadInput("--retain-hours and --retain-mib must be positive", "e.g. --retain-hours 48")
        self._halt = threading.Event()
        self._child: Optional[subprocess.Popen] = None
        self._thread = threading.Thread(target=self._run, name="tdptrace-roller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _name(self, now: float) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
        return self.directory / f"{socket.gethostname()}-{stamp}.tdp"

    def _run(self) -> None:
        while not self._halt.is_set():
            now = time.time()
            path = self._name(now)
            started = time.monotonic()
            try:
                self._child = subprocess.Popen(self.command_for(path, seconds_to_next_boundary(now, self.period_s)),
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                _, err = self._child.communicate()
                rc = self._child.returncode
            except OSError as exc:
                rc, err = -1, str(exc)
            self._child = None
            if path.exists():
                self.captures.append(path)
            if rc != 0 and not self._halt.is_set():
                self.failures += 1
                self.log(f"recording {path.name} failed (exit {rc}): {(err or '').strip().splitlines()[-1:]}")
                if time.monotonic() - started < 10:  # failing at once: do not spin
                    self._halt.wait(60)
            removed = prune(self.directory, self.retain_hours * 3600, self.retain_bytes, time.time())
            for d in removed:
                self.log(f"removed old capture {d.name}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the current recording (SIGINT: the recorder finishes its capture) and the loop."""
        self._halt.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
        if self._thread.is_alive():
            self._thread.join(timeout)


__all__ = ["CaptureRoller", "prune", "record_command", "seconds_to_next_boundary"]
