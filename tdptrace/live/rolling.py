"""Rolling captures for `tdptrace serve --record-dir`: one capture per hour, old ones pruned by age and size.

Each capture is written by a `tdptrace record` child process, so recording never shares a thread (or a
crash) with the exporter; consecutive captures overlap briefly so that a recorder's start-up leaves no gap;
after each one ends the directory is pruned. Only directories that are tdptrace
captures (meta.json with the capture format name) are ever deleted.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Collection

from tdptrace.capture.schema import FORMAT_NAME, META_FILE
from tdptrace.errors import BadInput, TdpError
from tdptrace.safefs import Dir

CommandFor = Callable[[Path, float], list[str]]


def record_command(path: Path, seconds: float) -> list[str]:
    """The child that writes one capture: `tdptrace record -o PATH -d SECONDS -q`."""
    return [sys.executable, "-m", "tdptrace.cli", "record", "-o", str(path), "-d", f"{max(1.0, seconds):.0f}s", "-q"]


def seconds_to_next_boundary(now: float, period_s: float) -> float:
    """Seconds until the next multiple of period_s (wall clock), so captures line up with the hour."""
    return period_s - (now % period_s)


def _is_capture(d: Dir, name: str) -> bool:
    """A capture directory of our own (meta.json with the capture format name), looked at without following
    any link: a link, another user's directory or anything unreadable is not one, and is never deleted."""
    try:
        with d.subdir(name) as sub:
            if sub.fstat().st_uid != os.geteuid():
                return False
            meta = json.loads(sub.read_bytes(META_FILE, limit=1 << 20))
        return isinstance(meta, dict) and meta.get("format") == FORMAT_NAME
    except (OSError, ValueError):
        return False


def _size(d: Dir, name: str) -> int:
    """Bytes under capture `name` (links counted as links, never followed)."""
    try:
        with d.subdir(name) as sub:
            return sum(st.st_size for _, _, st in sub.walk_files())
    except OSError:
        return 0


def open_record_dir(directory: Path) -> Dir:
    """The rolling directory, which must be the caller's own and writable by nobody else (old captures are
    deleted from it)."""
    d = Dir.open(directory, what="--record-dir")
    try:
        d.require_private("--record-dir")
    except BaseException:
        d.close()
        raise
    return d


def prune(directory: Path, retain_s: float, retain_bytes: int, now: float,
          keep: Collection[Path] = (), log: Callable[[str], None] | None = None) -> list[Path]:
    """Delete captures older than retain_s, then the oldest until the rest fit in retain_bytes; returns them.

    Age is the capture directory's modification time; `keep` (captures being written) are never deleted. Only
    real sub-directories that are our own captures are candidates: links and anything else are left alone, and
    an entry that cannot be removed is reported through `log` and skipped.
    """
    keep_names = {Path(k).name for k in keep}
    removed: list[Path] = []
    with open_record_dir(Path(directory)) as d:
        caps = []
        for name in d.names():
            st = d.lstat(name)
            if st is None or not stat.S_ISDIR(st.st_mode) or name in keep_names or not _is_capture(d, name):
                continue
            caps.append((st.st_mtime, name))
        caps.sort()

        def remove(name: str) -> bool:
            try:
                d.remove_tree(name)
            except OSError as exc:
                if log:
                    log(f"cannot remove old capture {name}: {exc.strerror or exc}")
                return False
            removed.append(Path(directory) / name)
            return True

        left = []
        for mtime, name in caps:
            if not (now - mtime > retain_s and remove(name)):
                left.append(name)
        sizes = {name: _size(d, name) for name in left}
        total = sum(sizes.values()) + sum(_size(d, k) for k in keep_names if d.lstat(k) is not None)
        for name in left:
            if total <= retain_bytes:
                break
            if remove(name):
                total -= sizes[name]
    return removed


@dataclass
class _Child:
    path: Path
    proc: subprocess.Popen
    stderr: IO[bytes]
    started: float


@dataclass
class CaptureRoller:
    """Starts one recording child per period into `directory` until stopped, pruning as each one ends.

    Each child records `overlap_s` past the next boundary while its successor starts up (a recorder needs a
    few seconds to compile and attach), so consecutive captures overlap a little instead of leaving a gap.
    """

    directory: Path
    retain_hours: float = 48.0
    retain_bytes: int = 2 << 30
    period_s: float = 3600.0
    overlap_s: float = 30.0
    command_for: CommandFor = record_command
    log: Callable[[str], None] = lambda msg: print(f"tdptrace serve: {msg}", file=sys.stderr, flush=True)
    captures: list[Path] = field(default_factory=list)
    failures: int = 0

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        open_record_dir(self.directory).close()  # one line now (missing, a file, not ours) instead of later
        if self.retain_hours <= 0 or self.retain_bytes <= 0:
            raise BadInput("--retain-for and --retain-mib must be positive", "e.g. --retain-for 48h")
        self._halt = threading.Event()
        self._running: list[_Child] = []
        self._thread = threading.Thread(target=self._run, name="tdptrace-roller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _name(self, now: float) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
        return self.directory / f"{socket.gethostname()}-{stamp}.tdp"

    def _launch(self, now: float) -> bool:
        """Start the child for the period beginning now; False when it could not be started."""
        path = self._name(now)
        seconds = seconds_to_next_boundary(now, self.period_s) + min(self.overlap_s, self.period_s / 2)
        err = tempfile.TemporaryFile()
        try:
            proc = subprocess.Popen(self.command_for(path, seconds), stdout=subprocess.DEVNULL, stderr=err)
        except OSError as exc:
            err.close()
            self.failures += 1
            self.log(f"cannot start the recorder: {exc}")
            return False
        self._running.append(_Child(path, proc, err, time.monotonic()))
        return True

    def _reap(self) -> bool:
        """Collect children that ended, prune; True when one failed right after starting."""
        failed_fast = False
        for child in [c for c in self._running if c.proc.poll() is not None]:
            self._running.remove(child)
            child.stderr.seek(0)
            last = child.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
            child.stderr.close()
            if child.path.exists():
                self.captures.append(child.path)
            rc = child.proc.returncode
            if rc != 0 and not self._halt.is_set():
                self.failures += 1
                self.log(f"recording {child.path.name} failed (exit {rc}): {last}")
                failed_fast |= time.monotonic() - child.started < 10
        keep = {c.path for c in self._running}
        try:
            for d in prune(self.directory, self.retain_hours * 3600, self.retain_bytes, time.time(), keep=keep,
                           log=self.log):
                self.log(f"removed old capture {d.name}")
        except (OSError, TdpError) as exc:  # the directory itself went away or changed hands: say so, go on
            self.failures += 1
            self.log(f"cannot prune {self.directory}: {exc.line() if isinstance(exc, TdpError) else exc}")
        return failed_fast

    def _run(self) -> None:
        while not self._halt.is_set():
            try:
                self._period()
            except Exception as exc:  # whatever the directory holds, the roller keeps rolling
                self.failures += 1
                self.log(f"roller: {type(exc).__name__}: {exc}; retrying in a minute")
                self._halt.wait(60)
        self._reap()

    def _period(self) -> None:
        now = time.time()
        self._launch(now)
        boundary = time.monotonic() + seconds_to_next_boundary(now, self.period_s)
        while not self._halt.is_set() and time.monotonic() < boundary:
            if self._reap():  # failing at once: do not spin
                self._halt.wait(60)
            self._halt.wait(min(1.0, max(0.0, boundary - time.monotonic())))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the recordings (SIGINT: each recorder finishes its capture) and the loop."""
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for child in list(self._running):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGINT)
        for child in list(self._running):
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        self._reap()


__all__ = ["CaptureRoller", "prune", "record_command", "seconds_to_next_boundary"]
