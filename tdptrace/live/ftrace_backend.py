"""The ftrace backend of `record`: no compiler, no headers - a private tracefs instance
(instances/tdptrace-<pid>) with the kvmmmu events and, where the kernel has kprobes, kprobe_events on the zap
functions and yield points; its trace_pipe text goes through the importer's tracefs parser and the
Assembler, so the capture is the one `tdptrace import` would make of the same text.

The instance and the kprobe events are removed on every exit path that runs Python (a SIGKILL leaves them;
the next recording removes instances whose recorder is gone).
"""
from __future__ import annotations

import dataclasses
import errno
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from tdptrace.capture import CaptureWriter
from tdptrace.capture.assemble import Assembler
from tdptrace.errors import MissingCapability
from tdptrace.importers import tracefs
from tdptrace.importers.decode import decode
from tdptrace.kernel.functions import ZAP_FUNCTIONS
from tdptrace.kernel.spte import encoding_for_release
from tdptrace.kernel.tracefs import CONTENTION_FILTER, WAITER_EVENTS
from tdptrace.live.attach import SPTE_FALLBACK_ARGS, ProbePlan
from tdptrace.live.recording import ChunkObserver, LiveStatus, RecordOptions, live_meta

INSTANCE_PREFIX = "tdptrace-"
READ_BYTES = 4 << 20
# Argument names the importer reads (decode.INT_ARGS / POINTER_ARGS), in the kernel's parameter names.
_KPROBE_ARGS = ("kvm", "root", "start", "end", "can_yield", "flush", "shared", "zap_level")


RETVAL_ARG = " ret=$retval"  # the return value, for functions that have one
_SPTE_TYPES = {"as_id": "u8", "gfn": "x64", "old_spte": "x64", "new_spte": "x64", "level": "s32"}


def kprobe_definitions(plan: ProbePlan, group: str) -> list[str]:
    """kprobe_events lines: entry (named arguments, registers from kernel.resolve: BTF, else the era table)
    and return of each span function and yield point. Symbols come from /proc/kallsyms and names from a
    fixed table: no user text goes in."""
    lines = []
    for i, f in enumerate(plan.span_functions):
        regs = []
        for name in f.params or ():
            reg = f.register(name) if name in _KPROBE_ARGS else None
            if reg is not None:
                regs.append(f"{name}=%{reg}" + (":u64" if name in ("start", "end") else ""))
        lines.append(f"p:{group}/span{i} {f.symbol} {' '.join(regs)}".rstrip())
        void = f.resolved is not None and f.resolved.returns == "void"  # BTF says so: no $retval to ask for
        lines.append(f"r:{group}/span{i}_ret {f.symbol}{'' if void else RETVAL_ARG}")
    if plan.spte_fallback is not None:  # SPTE changes before 5.11, decoded like the tracepoint's fields
        f = plan.spte_fallback
        regs = [(a, f.register(a)) for a in SPTE_FALLBACK_ARGS]
        if all(r is not None for _, r in regs):
            lines.append(f"p:{group}/spte {f.symbol} " + " ".join(f"{a}=%{r}:{_SPTE_TYPES[a]}" for a, r in regs))
    for i, name in enumerate(plan.yield_functions):
        lines.append(f"p:{group}/yield{i} {name} lock=%di")
        lines.append(f"r:{group}/yield{i}_ret {name}{RETVAL_ARG}")
    return lines


def remove_stale_instances(tracefs_dir: Path) -> list[str]:
    """Remove tdptrace-<pid> instances left by recorders that no longer run (e.g. killed with SIGKILL)."""
    removed = []
    for d in (tracefs_dir / "instances").glob(f"{INSTANCE_PREFIX}*"):
        pid = d.name[len(INSTANCE_PREFIX):]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            try:
                d.rmdir()
                removed.append(d.name)
            except OSError:
                pass
    return removed


class FtraceRecorder:
    """Live recording through tracefs text: one instance per capture."""

    def __init__(self, plan: ProbePlan, opts: RecordOptions, argv: list[str] | None = None,
                 on_chunk: ChunkObserver | None = None) -> None:
        opts.validate()
        self.on_chunk = on_chunk
        if plan.tracefs is None:
            raise MissingCapability("tracefs is not mounted", "mount -t tracefs nodev /sys/kernel/tracing")
        self.plan = plan
        plan.kprobes_only()  # kprobe_events: no fentry programs here
        self.opts = opts
        self.root = plan.tracefs
        self.group = f"tdptrace_{os.getpid()}"
        self.instance = self.root / "instances" / f"{INSTANCE_PREFIX}{os.getpid()}"
        self.meta = live_meta("ftrace", opts, plan.release, {"command": argv or [],
                                                             "instance": self.instance.name})
        self.writer: CaptureWriter | None = None
        self.asm: Assembler | None = None
        self.fd = -1
        self.carry = b""
        self.tgid_of: dict[int, int] = {}  # thread -> process, for lines printed before the tgid was saved
        self.seq = 0
        self.kprobes: list[str] = []
        self.pending: dict[str, list[pd.DataFrame]] = {"page_tables": [], "markers": []}
        self.status = LiveStatus()
        self._t0 = 0.0
        self._last_flush = 0.0
        self._last_tick = (0.0, 0)
        self.failures: list[dict[str, str]] = []

    # -- start ---------------------------------------------------------------------------------------
    def start(self) -> None:
        remove_stale_instances(self.root)
        self.writer = CaptureWriter(self.opts.output, self.meta, overwrite=self.opts.force, on_chunk=self.on_chunk)
        self.asm = Assembler(self.writer, encoding_for_release(self.plan.release))
        try:
            self.instance.mkdir()
        except OSError as exc:
            raise MissingCapability(f"cannot create tracefs instance {self.instance} ({exc.strerror})",
                                    "run as root with tracefs mounted")
        self._write(self.instance / "buffer_size_kb", "8192")
        self._write(self.instance / "options" / "record-tgid", "1")
        self._write(self.instance / "trace_clock", "mono")
        self._add_kprobes()
        for tp in self.plan.tracepoints:
            self._write(self.instance / "events" / "kvmmmu" / tp / "enable", "1")
        for name in self.kprobes:
            self._write(self.instance / "events" / self.group / name / "enable", "1")
        if self.opts.waiters:
            self._enable_waiters()
        if self.opts.pids:
            tids = sorted({int(t.name) for p in self.opts.pids for t in Path(f"/proc/{p}/task").glob("*")})
            self._write(self.instance / "options" / "event-fork", "1")
            self._write(self.instance / "set_event_pid", " ".join(map(str, tids)))
            self.meta.notes.append("ftrace backend: -p keeps only the VMM's own threads (not zaps that "
                                   "reclaim or khugepaged run on its VM)")
        self.fd = os.open(self.instance / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
        self._write(self.instance / "tracing_on", "1")
        m = self.meta
        m.probes = self.plan.to_meta()
        m.probes["missing"] = m.probes["missing"] + self.failures
        m.probes["method"] = "tracefs instance" + (" + kprobe_events" if self.kprobes else "")
        m.clock = m.clock | {"name": "CLOCK_MONOTONIC (trace_clock mono, printed in microseconds)"}
        m.notes = list(self.plan.notes) + self.plan.unavailable() + m.notes
        self.writer.write_meta()
        self._t0 = self._last_flush = time.monotonic()

    def _enable_waiters(self) -> None:
        """lock:contention_begin/end (rwlock spins only) and kvm:kvm_page_fault/kvm_entry, where the kernel
        has them; pointers printed raw (hash-ptr off in this instance) so they hash like the kvm pointer."""
        opt = self.instance / "options" / "hash-ptr"
        if opt.exists():
            self._write(opt, "0")
        got = set()
        for group, event in WAITER_EVENTS:
            d = self.instance / "events" / group / event
            if not d.is_dir():
                self.failures.append({"probe": f"tracepoint:{group}:{event}", "reason": "not on this kernel"})
                continue
            if event == "contention_begin":
                self._write(d / "filter", CONTENTION_FILTER)
            self._write(d / "enable", "1")
            got.add(event)
        lock = {"contention_begin", "contention_end"} <= got
        fault = {"kvm_page_fault", "kvm_entry"} <= got
        assert self.asm is not None
        self.asm.waiters_enabled = (lock, fault)
        if not lock:
            self.meta.notes.append("no lock:contention_begin/end tracepoints (kernels before 5.19): mmu_lock "
                                   "waits are not recorded, vCPU fault latency still is")

    def _write(self, path: Path, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    @staticmethod
    def _append(path: Path, line: str) -> None:
        """Add one definition to kprobe_events. Not open(path, "a"): Python seeks to the end of a file opened
        for appending, and tracefs' kprobe_events refuses SEEK_END with EINVAL (every kprobe failed so)."""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def _add_kprobes(self) -> None:
        if not self.plan.kprobes:
            return
        ke = self.root / "kprobe_events"
        for line in kprobe_definitions(self.plan, self.group):
            try:
                try:
                    self._append(ke, line)
                except OSError:
                    # A kernel with BTF refuses $retval of a void function (ENOENT; 7.3's __tdp_mmu_zap_root,
                    # kvm_tdp_mmu_zap_all, ...): the return probe without it still closes the span.
                    if not (line.startswith("r:") and line.endswith(RETVAL_ARG)):
                        raise
                    line = line[:-len(RETVAL_ARG)]
                    self._append(ke, line)
                self.kprobes.append(line.split()[0].split("/")[1])
            except OSError as exc:
                self.failures.append({"probe": f"kprobe:{line.split()[1]}", "reason": exc.strerror or str(exc)})

    # -- loop ----------------------------------------------------------------------------------------
    def _read_available(self) -> bytes:
        out = []
        while sum(map(len, out)) < READ_BYTES:
            try:
                b = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    break
                raise
            if not b:
                break
            out.append(b)
        return b"".join(out)

    def poll(self) -> LiveStatus:
        data = self.carry + self._read_available()
        cut = data.rfind(b"\n")
        if cut >= 0:
            self.carry = data[cut + 1:]
            self._take(data[: cut + 1])
        else:
            self.carry = data
        now = time.monotonic()
        st = self.status
        st.elapsed_s = now - self._t0
        t_last, n_last = self._last_tick
        if now - t_last >= 1.0:
            st.events_per_s = (st.events - n_last) / (now - t_last) if t_last else 0.0
            self._last_tick = (now, st.events)
        if now - self._last_flush >= self.opts.flush_seconds:
            self.flush()
        return st

    def _take(self, data: bytes) -> None:
        assert self.asm is not None
        parsed = tracefs.parse_lines(tracefs.split_lines(data), self.seq)
        parsed.events = self._fill_tgids(parsed.events)
        self.asm.lost.extend(parsed.lost)
        self.status.drops += sum(n for _, n, _ in parsed.lost)
        n = parsed.events.num_rows
        if not n:
            return
        chunk = decode(parsed.events)
        self.seq += n
        self.status.events += n
        calls = chunk.calls
        self.status.spans += int((calls["is_return"] & calls["function"].isin(ZAP_FUNCTIONS)).sum())
        for table in ("page_tables", "markers"):
            df = getattr(chunk, table)
            if len(df):
                self.pending[table].append(df)
        # The Assembler streams SPTE rows and keeps the calls for the span derivation at the end;
        # page tables and markers are flushed here so a killed recorder keeps them.
        self.asm.add(dataclasses.replace(chunk, page_tables=chunk.page_tables.iloc[0:0],
                                         markers=chunk.markers.iloc[0:0]))

    def _fill_tgids(self, events: "pa.Table") -> "pa.Table":
        """Give events printed with an unsaved tgid '(-------)' their process: from earlier blocks' lines of
        the same thread, else from /proc while the thread lives. Threads are few; events are not looped."""
        if not events.num_rows:
            return events
        pid = events.column("pid").to_numpy().copy()
        tid = events.column("tid").to_numpy()
        ok = pid >= 0
        for t, p in set(zip(tid[ok].tolist(), pid[ok].tolist())):
            self.tgid_of[t] = p
        for t in np.unique(tid[~ok]).tolist():
            if t not in self.tgid_of:
                try:
                    status = Path(f"/proc/{t}/status").read_text()
                    self.tgid_of[t] = int(status.split("Tgid:")[1].split()[0])
                except (OSError, IndexError, ValueError):
                    continue
        if (~ok).any():
            fill = pd.Series(tid[~ok]).map(self.tgid_of).fillna(-1).to_numpy(np.int64)
            pid[~ok] = fill.astype(np.int32)
            events = events.set_column(events.column_names.index("pid"), "pid", pa.array(pid, pa.int32()))
        return events

    def flush(self) -> None:
        """Write queued page-table and marker rows as chunks, then meta."""
        assert self.writer is not None and self.asm is not None
        for table, frames in self.pending.items():
            if frames:
                df = pd.concat(frames, ignore_index=True)
                if table == "markers":
                    df["detail"] = self.asm.hasher.scrub_text(df["detail"]).to_numpy()
                self.writer.append(table, df)
                if table == "page_tables":
                    self.asm.page_tables.append(df.iloc[0:0])  # tells finish() page-table events were seen
        self.pending = {"page_tables": [], "markers": []}
        self.writer.write_meta()
        self._last_flush = time.monotonic()

    # -- end -----------------------------------------------------------------------------------------
    def finish(self, stopped_by: str) -> Path:
        """Stop tracing, read what is left, derive spans and retained tables, clean tracefs up."""
        assert self.writer is not None and self.asm is not None
        try:
            self._write(self.instance / "tracing_on", "0")
            for _ in range(64):
                before = self.status.events
                self.poll()
                if self.status.events == before:
                    break
            overrun = self._overrun()
            self.flush()
            stats = self.asm.finish()
            counts = self.meta.events.get("counts", {})
            self.meta.events["counts"] = {re.sub(rf"^{self.group}:", "", k): v for k, v in counts.items()}
            if overrun:
                self.asm.header_overrun = 0
                lost = self.meta.lost_events
                lost["total"] = int(lost.get("total", 0)) + overrun
                lost.setdefault("per_cpu", {})["overrun"] = overrun
                self.meta.notes.append(f"{overrun} events were overwritten in the tracefs buffer")
            self.meta.source["stopped_by"] = stopped_by
            self.meta.source["spans"] = stats.get("spans", 0)
            self.writer.close()
        finally:
            self._cleanup()
        return self.writer.path

    def lost_per_cpu(self) -> dict[str, int]:
        """Events lost so far, per CPU, as the trace's lost-event lines said (overwrites are counted at the end)."""
        out: dict[str, int] = {}
        for cpu, count, _ in (self.asm.lost if self.asm is not None else ()):
            out[str(cpu)] = out.get(str(cpu), 0) + count
        return out

    def _overrun(self) -> int:
        total = 0
        for stats in (self.instance / "per_cpu").glob("cpu*/stats"):
            m = re.search(r"^overrun:\s*(\d+)", stats.read_text(), re.M)
            total += int(m.group(1)) if m else 0
        return total

    def _cleanup(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            self._write(self.instance / "events" / "enable", "0")
        except OSError:
            pass
        try:
            self.instance.rmdir()
        except OSError:
            pass
        ke = self.root / "kprobe_events"
        for name in self.kprobes:  # only once no instance uses them
            try:
                self._append(ke, f"-:{self.group}/{name}")
            except OSError:
                pass

