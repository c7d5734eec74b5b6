"""The live half of the public API: `stream()` / `record()` run the recorder of `tdptrace record` and hand its
capture tables to Python as pandas frames, batch by batch, while (optionally) writing the capture.

Every frame a batch holds is a chunk exactly as the capture writer wrote it (same columns, dtypes, hashed
pointers), converted as `tdptrace.open()` converts a capture on disk; docs/api.md lists the columns.
bcc is imported only when a recording starts with the BCC backend.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from tdptrace.capture.frames import Frames
from tdptrace.capture.schema import TABLES, TITLES
from tdptrace.capture.store import columns_doc, table_frame
from tdptrace.errors import BadInput, MissingCapability
from tdptrace.live.recording import LiveRun, LiveStatus, RecordOptions, RunResult
from tdptrace.units import GRAMMAR, parse_duration

BACKENDS = ("auto", "bcc", "ftrace")
Note = Callable[[str, str], None]  # (kind, line): kind "host" (what this host cannot show) or "backend"


def check_backend(backend: str) -> None:
    """BadInputError unless `backend` is one of BACKENDS."""
    if backend not in BACKENDS:
        raise BadInput(f"--backend {backend!r} is unknown", f"use one of {', '.join(BACKENDS)}")


@dataclass
class RecordingPlan:
    """What a recording will do here: the host's report, the probes it attaches and the backend chosen."""

    options: RecordOptions
    report: Any  # tdptrace.live.host.HostReport
    probes: Any  # tdptrace.live.attach.ProbePlan
    backend: str  # "bcc" or "ftrace"
    requested: str  # as asked: "auto", "bcc" or "ftrace"


def plan_recording(options: RecordOptions, backend: str = "auto") -> RecordingPlan:
    """Validate the options, look at the host and choose the backend (nothing is attached yet)."""
    from tdptrace.live.attach import plan_probes
    from tdptrace.live.host import check_host

    check_backend(backend)
    options.validate()
    report = check_host()
    probes = plan_probes(report)
    if not options.spans:
        probes = probes.without_spans()
    chosen = backend if backend != "auto" else ("bcc" if report.methods.get("bcc_tracepoints") else "ftrace")
    if options.waiters and backend == "bcc":
        raise BadInput("--waiters is recorded by the ftrace backend only", "use --backend ftrace (or auto)")
    return RecordingPlan(options, report, probes, "ftrace" if options.waiters else chosen, backend)


def _row(report: Any, name: str) -> Any:
    try:
        return report.check(name)
    except KeyError:
        return None


def require_recordable(plan: RecordingPlan) -> None:
    """CapabilityError naming the missing piece (the doctor row's detail and fix) instead of an empty capture or
    a compiler error: not root, no tracefs, nothing recordable at all, or --backend bcc without bcc or headers."""
    report = plan.report
    if not report.check("root").ok:
        raise MissingCapability("record needs root (BPF and tracefs)", "run it with sudo")
    if report.tracefs is None:
        raise MissingCapability("tracefs is not mounted", "mount -t tracefs nodev /sys/kernel/tracing "
                                "(sudo bash scripts/bootstrap.sh does it)")
    if not report.can_record:
        first = ("kvm", "vendor module", "kvmmmu tracepoints", "zap functions")  # the cause, before its effects
        rows = sorted((c for c in report.checks if c.status == "missing" and c.fix),
                      key=lambda c: first.index(c.name) if c.name in first else len(first))
        row = rows[0] if rows else None
        raise MissingCapability(report.verdict(), row.fix if row else "run tdptrace doctor")
    if plan.requested == "bcc" and not report.methods.get("bcc_tracepoints"):
        for name in ("bcc", "kernel headers"):
            row = _row(report, name)
            if row is not None and row.status == "missing":
                raise MissingCapability(f"--backend bcc: {row.detail}", f"{row.fix}; or use --backend ftrace")


def _table_property(table: str) -> Any:
    """A Batch attribute giving table `table` as a DataFrame; its docstring lists the columns from the schema."""
    return property(lambda self: self.frame(table), doc=f"{TITLES[table]} in this batch; {columns_doc(table)}.")


@dataclass
class Batch:
    """What the recorder wrote since the previous batch: one frame per capture table (empty when none) and the
    events lost meanwhile. The last batch of a stream (`final`) holds what finishing the capture added (with
    the ftrace backend: the spans and yields, derived once the recording ends)."""

    index: int
    elapsed_s: float
    lost_events: int
    lost_per_cpu: dict[str, int]
    final: bool
    chunks: dict[str, list[Any]] = field(repr=False)  # table -> pyarrow Tables as written
    _frames: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False, compare=False)

    def frame(self, table: str) -> pd.DataFrame:
        """Table `table` of this batch as a DataFrame (docs/api.md), converted on first use."""
        if table not in TABLES:
            raise KeyError(table)
        if table not in self._frames:
            import pyarrow as pa

            parts = self.chunks.get(table) or []
            self._frames[table] = table_frame(table, pa.concat_tables(parts) if parts else None)
        return self._frames[table]

    def rows(self, table: str) -> int:
        """Rows of `table` in this batch (without converting it)."""
        return sum(c.num_rows for c in self.chunks.get(table) or [])

    sptes = _table_property("sptes")
    spans = _table_property("spans")
    yields = _table_property("yields")
    page_tables = _table_property("page_tables")
    markers = _table_property("markers")
    waits = _table_property("waits")
    stacks = _table_property("stacks")
    lost = _table_property("lost")


class Stream:
    """A running recording: iterate it for Batches; `frames` holds every batch so far (with keep=True) as a
    capture the metric functions take; `stop()` ends it; after the end `result` says how."""

    def __init__(self, plan: RecordingPlan, output: Optional[Path], batch_seconds: float) -> None:
        self.plan = plan
        self.backend = plan.backend
        self.capture: Optional[Path] = output
        self.notes: list[str] = []
        self.frames: Optional[Frames] = None
        self._batch_seconds = batch_seconds
        self._chunks: dict[str, list[Any]] = {}
        self._index = 0
        self._lost_seen: dict[str, int] = {}
        self._last_emit = 0.0
        self._live: Optional[LiveRun] = None
        self.on_status: Optional[Callable[[LiveStatus], None]] = None  # called after every poll; settable
        self._done = False

    # -- filled by the writer --------------------------------------------------------------------
    def _take(self, table: str, chunk: Any) -> None:
        self._chunks.setdefault(table, []).append(chunk)
        if self.frames is not None:
            self.frames.add(table, chunk)

    def _batch(self, lost_now: dict[str, int], final: bool) -> Batch:
        lost = {k: int(v) - self._lost_seen.get(k, 0) for k, v in lost_now.items()}
        lost = {k: v for k, v in lost.items() if v}
        self._lost_seen = {k: int(v) for k, v in lost_now.items()}
        chunks, self._chunks = self._chunks, {}
        b = Batch(index=self._index, elapsed_s=self.status.elapsed_s, lost_events=sum(lost.values()),
                  lost_per_cpu=lost, final=final, chunks=chunks)
        self._index += 1
        return b

    # -- the loop --------------------------------------------------------------------------------
    @property
    def status(self) -> LiveStatus:
        """The live line's figures (elapsed, events, spans, worst gap, drops) after the latest poll."""
        return self._live.status if self._live is not None else LiveStatus()

    @property
    def result(self) -> Optional[RunResult]:
        """How the recording ended (capture path, stopped_by, the command's status), once it has."""
        return self._live.result if self._live is not None else None

    def stop(self) -> None:
        """End the recording at its next poll; iteration then yields the final batch."""
        if self._live is not None:
            self._live.stop("stopped")

    def __iter__(self) -> Iterator[Batch]:
        live = self._live
        assert live is not None, "iterate a Stream inside its `with` block"
        if self._done:
            return
        recorder = live.recorder
        self._last_emit = time.monotonic()
        for status in live:
            if self.on_status is not None:
                self.on_status(status)
            now = time.monotonic()
            if now - self._last_emit >= self._batch_seconds:  # empty too: a steady beat, lost counts on time
                self._last_emit = now
                yield self._batch(recorder.lost_per_cpu(), final=False)
        live.finish()
        self._done = True
        yield self._batch(dict(recorder.meta.lost_events.get("per_cpu", {})), final=True)

    def wait(self) -> RunResult:
        """Run to the end (duration, command, signal or stop()), discarding batches; returns the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


class _Recorder:
    """The chosen backend's recorder; with backend auto, a BCC recorder that cannot compile or load gives way to
    the ftrace backend at start (nothing was recorded yet). Every chunk either writes goes to `on_chunk`."""

    def __init__(self, plan: RecordingPlan, argv: Optional[list[str]], on_chunk: Callable[[str, Any], None],
                 note: Note) -> None:
        self.plan = plan
        self.argv = argv
        self.on_chunk = on_chunk
        self.note = note
        self.active: Any = None
        self.backend = plan.backend

    def start(self) -> None:
        from tdptrace.live.ftrace_backend import FtraceRecorder

        if self.backend == "bcc":
            from tdptrace.live.bcc_recorder import BccRecorder

            rec = BccRecorder(self.plan.probes, self.plan.options, argv=self.argv, on_chunk=self.on_chunk)
            try:
                rec.start()
                self.active = rec
                return
            except MissingCapability as exc:
                if self.plan.requested != "auto":
                    raise
                self.note("backend", f"{exc.message}; recording with --backend ftrace instead")
                self.backend = "ftrace"
        rec = FtraceRecorder(self.plan.probes, self.plan.options, argv=self.argv, on_chunk=self.on_chunk)
        rec.start()
        self.active = rec

    @property
    def meta(self) -> Any:
        return self.active.meta

    def poll(self) -> LiveStatus:
        return self.active.poll()

    def lost_per_cpu(self) -> dict[str, int]:
        return self.active.lost_per_cpu()

    def finish(self, stopped_by: str) -> Path:
        return self.active.finish(stopped_by)


def _remove_private_dir(path: Path) -> None:
    """Remove the stream's temporary directory (ours, 0700) through directory descriptors."""
    from tdptrace.safefs import open_parent

    parent, name = open_parent(path)
    with parent:
        parent.remove_tree(name)


@contextmanager
def stream(*, pids: Sequence[int] = (), duration: float | str | None = None, backend: str = "auto",
           sptes: bool = False, spans: bool = True, stacks: bool = False, stack_threshold_ns: int = 1_000_000,
           waiters: bool = False,
           output: str | os.PathLike | None = None, force: bool = False, command: Optional[Sequence[str]] = None,
           batch_seconds: float = 1.0, keep: bool = True, on_note: Optional[Note] = None,
           on_status: Optional[Callable[[LiveStatus], None]] = None) -> Iterator[Stream]:
    """Record the host's KVM MMU live (root) and yield a Stream of Batches of capture frames.

    The options are those of `tdptrace record`: pids (only these VMMs' VMs), duration (seconds, or text like
    "30s", "10m"; default: until stop(), SIGINT/SIGTERM or the end of `command`), backend ("auto", "bcc", "ftrace"), sptes (every SPTE
    change), spans (False: tracepoints only, no kprobes), stacks (kernel stacks of spans whose max gap reaches
    stack_threshold_ns), waiters (mmu_lock
    contention and vCPU fault latency; ftrace backend). With `output` the capture is written there as `record`
    writes it (force replaces an earlier capture); without, it goes to a private temporary directory removed on
    exit. A batch comes every batch_seconds (empty when nothing was written meanwhile); keep=False keeps no
    frames in `Stream.frames`.
    on_note(kind, line) receives each one-line note as it comes: kind "host" (e.g. a shadow MMU: no TDP MMU
    zaps here) or "backend" (BCC could not compile: the ftrace backend records instead); every note is also in
    Stream.notes. on_status receives the live figures after every poll.
    Raises BadInputError (options) and CapabilityError (host) with the command's one-line messages.
    """
    if batch_seconds <= 0:
        raise BadInput(f"batch_seconds {batch_seconds} is not positive", "give seconds, e.g. 1.0")
    if isinstance(duration, str):
        duration = parse_duration(duration) / 1e9
    if duration is not None and not duration > 0:
        raise BadInput(f"duration {duration} is not positive", f"give seconds, or a duration like {GRAMMAR}")
    tmp: Optional[str] = None
    if output is None:
        tmp = tempfile.mkdtemp(prefix="tdptrace-stream-")  # 0700, ours alone
        out = Path(tmp) / "stream.tdp"
    else:
        out = Path(output)
    try:
        opts = RecordOptions(output=out, pids=tuple(pids), sptes=sptes, spans=spans, stacks=stacks,
                             stack_min_gap_ns=int(stack_threshold_ns), force=force, waiters=waiters,
                             flush_seconds=batch_seconds)
        plan = plan_recording(opts, backend)
        require_recordable(plan)
        st = Stream(plan, None if tmp else out, batch_seconds)

        def note(kind: str, line: str) -> None:
            st.notes.append(line)
            if on_note is not None:
                on_note(kind, line)

        tdp = _row(plan.report, "tdp_mmu")
        if tdp is not None and not tdp.ok:
            note("host", tdp.detail)
        recorder = _Recorder(plan, list(command) if command else None, st._take, note)
        st.on_status = on_status
        st._live = LiveRun(recorder, duration=duration, command=list(command) if command else None,
                           interval=min(0.1, batch_seconds))
        with st._live:
            st.backend = recorder.backend
            if keep:
                st.frames = Frames(recorder.meta, out if tmp is None else None)
                for table, chunks in st._chunks.items():  # any written while starting
                    for c in chunks:
                        st.frames.add(table, c)
            try:
                yield st
            except BaseException:
                st._live.stop("error")
                raise
            st._live.stop("stopped")  # the block was left (without an error) before the recording ended
    finally:
        if tmp is not None:
            _remove_private_dir(Path(tmp))


@contextmanager
def record(output: str | os.PathLike, **options: Any) -> Iterator[Stream]:
    """stream() writing the capture to `output` (a NAME.tdp directory): `with record("x.tdp", duration=10) as
    s: s.wait()` is `tdptrace record -o x.tdp -d 10s`; iterate `s` for the batches as they are written."""
    with stream(output=output, **options) as s:
        yield s


__all__ = ["BACKENDS", "Batch", "RecordingPlan", "Stream", "check_backend", "plan_recording", "record",
           "require_recordable", "stream"]
