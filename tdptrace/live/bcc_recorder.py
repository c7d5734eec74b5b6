"""The BCC backend of `record`: compile probes/record.bpf.c with validated -D settings, attach what the
plan allows, drain both ring buffers in batches into capture chunks, and fill meta at the end.

bcc is imported here only, when a recording starts: analysis never needs it.
"""
from __future__ import annotations

import ctypes
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tdptrace.capture import CaptureWriter
from tdptrace.capture.hashing import PointerHasher
from tdptrace.capture.schema import LEVELS, STACKS
from tdptrace.errors import BadInput, MissingCapability
from tdptrace.kernel.release import ringbuf_supported
from tdptrace.kernel.spte import Encoding, encoding_for_release
from tdptrace.live import programs
from tdptrace.live.attach import TRACEPOINT_DEFINES, YIELD_PROGRAMS, ProbePlan
from tdptrace.live.fentry_programs import fentry_stubs
from tdptrace.live.programs import bcc_compat, cflag, probes_dir  # noqa: F401 - re-exported for callers
from tdptrace.live.recording import ChunkObserver, LiveStatus, RecordOptions, live_meta
from tdptrace.live.records import (
    DROPS_SLOTS,
    EVENT,
    KIND,
    MAX_PIDS,
    OWNER_HOW,
    SELFTEST_MAGIC,  # noqa: F401 - re-exported for the tests that replay traces
    SPAN,
    STAT_DEPTH_OVERFLOW,
    STAT_RETAINED_PEAK,
    STAT_TABLES_FULL,
    STAT_UNMATCHED_RETURN,
    decode_events,
    decode_spans,
)
from tdptrace.live.transport import PAGE_SIZE, PerfReader, RingReader

PROGRAM = "record.bpf.c"  # what a recording attaches
BENCH_PROGRAM = "record_bench.bpf.c"  # bench/: the transport under a stand-in syscall tracepoint
SELFTEST_PROGRAM = "record_selftest.bpf.c"  # tests: a recorded trace replayed into the aggregation
# tdp_event.kind -> the event name counted in meta.events.counts
_KIND_EVENT = {KIND["spte"]: "kvm_tdp_mmu_spte_changed", KIND["get_page"]: "kvm_mmu_get_page",
               KIND["prepare_zap"]: "kvm_mmu_prepare_zap_page", KIND["zap_all_fast"]: "kvm_mmu_zap_all_fast",
               KIND["split"]: "kvm_mmu_split_huge_page", KIND["yield"]: "yield_point", KIND["syscall"]: "sys_enter"}


def program_defines(plan: ProbePlan, opts: RecordOptions, bench_tgid: int = 0,
                    selftest_tgid: int = 0) -> dict[str, int]:
    """The -D settings for this plan and these options: of probes/record.bpf.c, or with bench_tgid of
    record_bench.bpf.c, or with selftest_tgid of record_selftest.bpf.c (a stand-in syscall tracepoint of that
    process instead of the kvmmmu tracepoints; see program_for)."""
    if bench_tgid and selftest_tgid:
        raise ValueError("a program is either the bench or the selftest, not both")
    enc = encoding_for_release(plan.release) or Encoding.PRESENT_BIT
    d = {
        "TDP_PERF_BUFFER": int(not ringbuf_supported(plan.release)),
        "TDP_EVENT_PAGES": opts.event_pages, "TDP_SPAN_PAGES": opts.span_pages, "TDP_WAKEUP": 0,
        "TDP_PRESENT_BIT": int(enc == Encoding.PRESENT_BIT),
        "TDP_WITH_SPTES": int(opts.sptes), "TDP_WITH_SPANS": int(plan.spans),
        "TDP_YIELD_RETURN": int(plan.spans and bool(plan.yield_functions)),
        "TDP_FILTER_PIDS": int(bool(opts.pids)), "TDP_STACKS": int(opts.stacks and plan.spans),
        "TDP_STACK_MIN_GAP_NS": int(opts.stack_min_gap_ns), "TDP_MAX_TABLES": int(opts.max_tables),
    }
    if bench_tgid:
        d["TDP_BENCH_TGID"] = int(bench_tgid)
    elif selftest_tgid:
        d["TDP_SELFTEST_TGID"] = int(selftest_tgid)
    else:
        for tp, define in TRACEPOINT_DEFINES.items():
            d[define] = int(tp in plan.tracepoints)
        # Raw tracepoints need no perf buffer context: with the ring buffer (5.8+) the SPTE program is one.
        d["TDP_RAW_SPTE"] = int(not d["TDP_PERF_BUFFER"])
        d["TDP_SPAN_FUNCS"] = len(plan.span_functions) if plan.spans else 0
        d["TDP_VMM_CALLS"] = len(plan.vmm_calls) if plan.spans else 0
    return d


def program_for(defines: dict[str, int]) -> str:
    """The program these settings are for (program_defines)."""
    if defines.get("TDP_BENCH_TGID"):
        return BENCH_PROGRAM
    if defines.get("TDP_SELFTEST_TGID"):
        return SELFTEST_PROGRAM
    return PROGRAM


def program_text(defines: dict[str, int], plan: ProbePlan | None = None) -> str:
    """The BPF program exactly as compiled: the settings as #defines, then the source with its headers, then
    the plan's fentry stubs."""
    stubs = fentry_stubs(plan) if plan is not None and program_for(defines) == PROGRAM else ""
    return programs.program_text(program_for(defines), defines, stubs)


def compile_program(defines: dict[str, int], stubs: str = ""):
    """Load the BPF module (tracepoint programs attach themselves); MissingCapability when bcc cannot."""
    try:
        import bcc  # noqa: F401, PLC0415 - lazily, only on the live path
    except ImportError:
        raise MissingCapability("bcc is not importable", "install python3-bpfcc (sudo bash scripts/bootstrap.sh) "
                                "or use --backend ftrace")
    try:
        return programs.load(program_for(defines), defines, stubs=stubs)
    except Exception as exc:  # bcc raises bare Exception on compile/load failures
        raise MissingCapability(f"BCC could not compile or load the probes ({str(exc).splitlines()[0][:100]})",
                                "check kernel headers (tdptrace doctor), or use --backend ftrace")




def vm_owners(table: Any) -> dict[int, tuple[int, str]]:
    """Map `vm_owner` as {struct kvm pointer: (owner tgid, how it was decided)} (raw pointers: hash them)."""
    return {int(k.value): (int(v.tgid), OWNER_HOW.get(int(v.how), str(int(v.how)))) for k, v in table.items()}


class BccRecorder:
    """Live recording through BCC: one instance per capture."""

    def __init__(self, plan: ProbePlan, opts: RecordOptions, argv: list[str] | None = None,
                 on_chunk: ChunkObserver | None = None) -> None:
        opts.validate()
        self.on_chunk = on_chunk
        if len(set(opts.pids)) > MAX_PIDS:
            raise BadInput(f"-p names {len(set(opts.pids))} processes; one recording follows at most {MAX_PIDS}",
                           "record fewer VMs at a time, or all of them (no -p)")
        self.plan = plan
        self.opts = opts
        self.defines = program_defines(plan, opts)
        self.hasher = PointerHasher()
        self.functions = [f.symbol for f in plan.span_functions]
        self.meta = live_meta("bcc", opts, plan.release, {
            "transport": "perf buffer" if self.defines["TDP_PERF_BUFFER"] else "ring buffer",
            "command": argv or [], "defines": self.defines})
        self.bpf: Any = None
        self.writer: CaptureWriter | None = None
        self.seq = 0
        self.pending: dict[str, list[pd.DataFrame]] = {}
        self.pending_rows = 0
        self.counts: Counter = Counter()
        self.status = LiveStatus()
        self._t0 = 0.0
        self._last_flush = 0.0
        self._last_tick = (0.0, 0)
        self._stack_ids: set[int] = set()
        self.attach_failures: list[dict[str, str]] = []

    # -- start ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self.writer = CaptureWriter(self.opts.output, self.meta, overwrite=self.opts.force, hasher=self.hasher,
                                    on_chunk=self.on_chunk)
        try:
            self.bpf = self._compile()
        except BaseException:
            self.writer.discard()  # nothing was recorded: leave no capture behind
            raise
        self._attach_kprobes()
        programs.release_compiler_memory()  # clang's heap and LLVM's pages: not needed to record
        if self.opts.pids:
            pids = self.bpf[b"pids"]
            for p in self.opts.pids:
                pids[ctypes.c_uint(p)] = ctypes.c_ubyte(1)
        if self.defines["TDP_PERF_BUFFER"]:
            self.events = PerfReader(self.bpf[b"events"], EVENT, self.opts.event_pages)
            self.spans = PerfReader(self.bpf[b"spans"], SPAN, self.opts.span_pages)
            # Tracepoints fire from the moment BCC loads them; before the perf buffers were open every submit
            # failed and counted as a drop. Those events precede the recording: start counting now.
            self.bpf[b"drops"].clear()
        else:
            self.events = RingReader(self.bpf[b"events"].map_fd, self.opts.event_pages * PAGE_SIZE, EVENT)
            self.spans = RingReader(self.bpf[b"spans"].map_fd, self.opts.span_pages * PAGE_SIZE, SPAN)
        self._fill_probe_meta()
        self.writer.write_meta()
        self._t0 = self._last_flush = time.monotonic()

    def _compile(self) -> Any:
        """Compile and load; fentry programs attach at load, and if the kernel refuses any of them the whole
        plan falls back to kprobes (said in the capture's notes)."""
        stubs = fentry_stubs(self.plan)
        if not stubs:
            return compile_program(self.defines)
        try:
            return compile_program(self.defines, stubs)
        except MissingCapability as exc:
            self.plan.kprobes_only()
            self.plan.notes.append(f"fentry/fexit refused at load ({exc.message}); kprobes used instead")
            self.defines = program_defines(self.plan, self.opts)
            self.meta.source["defines"] = self.defines
            self.functions = [f.symbol for f in self.plan.span_functions]
            return compile_program(self.defines)

    def _attach_kprobes(self) -> None:
        if not self.plan.spans:
            return
        b = self.bpf
        args = b[b"func_args"]
        for i, f in enumerate(self.plan.span_functions):
            args[ctypes.c_int(i)] = args.Leaf.from_buffer_copy(f.args_record().tobytes())
            if f.method == "fentry":
                continue  # attached at load by its KFUNC_PROBE/KRETFUNC_PROBE stub
            try:
                b.attach_kprobe(event=f.symbol.encode(), fn_name=f"span_entry_{i}".encode())
                b.attach_kretprobe(event=f.symbol.encode(), fn_name=f"span_return_{i}".encode(), maxactive=64)
            except Exception as exc:
                self.attach_failures.append({"probe": f"kprobe:{f.symbol}", "reason": str(exc)[:120]})
        for name in self.plan.yield_functions:
            if self.plan.yield_methods.get(name) == "fentry":
                continue
            try:
                b.attach_kprobe(event=name.encode(), fn_name=YIELD_PROGRAMS[name].encode())
                b.attach_kretprobe(event=name.encode(), fn_name=b"yield_return", maxactive=64)
            except Exception as exc:
                self.attach_failures.append({"probe": f"kprobe:{name}", "reason": str(exc)[:120]})
        vmm_args = b[b"vmm_args"]
        for i, f in enumerate(self.plan.vmm_calls):
            vmm_args[ctypes.c_int(i)] = vmm_args.Leaf.from_buffer_copy(f.args_record().tobytes())
            try:
                b.attach_kprobe(event=f.symbol.encode(), fn_name=f"vmm_call_{i}".encode())
            except Exception as exc:
                self.attach_failures.append({"probe": f"kprobe:{f.symbol}", "reason": str(exc)[:120]})

    def _fill_probe_meta(self) -> None:
        m = self.meta
        m.probes = self.plan.to_meta()
        m.probes["missing"] = m.probes["missing"] + self.attach_failures
        m.capabilities = self.plan.capabilities(self.opts.sptes)
        m.notes = list(self.plan.notes) + self.plan.unavailable()

    # -- loop ----------------------------------------------------------------------------------------
    def poll(self) -> LiveStatus:
        ev = self.events.drain()
        sp = self.spans.drain()
        if len(ev):
            self.counts.update({_KIND_EVENT.get(int(k), str(k)): int(n)
                                for k, n in zip(*np.unique(ev["kind"], return_counts=True))})
            for table, df in decode_events(ev, self.seq, self.hasher).items():
                self._queue(table, df)
            self.seq += len(ev)
        if len(sp):
            seq = np.arange(self.seq, self.seq + len(sp), dtype=np.int64)
            self.seq += len(sp)
            self._queue("spans", decode_spans(sp, seq, self.functions, self.hasher, self._zaps_known()))
            self.status.spans += len(sp)
            worst = int(sp["max_gap_ns"].max())
            self.status.worst_gap_ns = max(self.status.worst_gap_ns or 0, worst)
            self._stack_ids.update(int(s) for s in np.unique(sp["stack_id"]) if s >= 0)
        now = time.monotonic()
        st = self.status
        st.events += len(ev)
        st.elapsed_s = now - self._t0
        t_last, n_last = self._last_tick
        if now - t_last >= 1.0:
            st.events_per_s = (st.events - n_last) / (now - t_last) if t_last else 0.0
            self._last_tick = (now, st.events)
            st.drops = sum(self._drops_per_cpu().values())
        if now - self._last_flush >= self.opts.flush_seconds or self.pending_rows >= self.opts.flush_rows:
            self.flush()
        return st

    def _zaps_known(self) -> bool:
        return "kvm_tdp_mmu_spte_changed" in self.plan.tracepoints

    def _queue(self, table: str, df: pd.DataFrame) -> None:
        self.pending.setdefault(table, []).append(df)
        self.pending_rows += len(df)

    def flush(self) -> None:
        """Write one chunk per table with everything queued (each chunk lands atomically), then meta."""
        assert self.writer is not None
        for table, frames in self.pending.items():
            if frames:
                self.writer.append(table, pd.concat(frames, ignore_index=True))
        self.pending = {}
        self.pending_rows = 0
        self._update_meta()
        self.writer.write_meta()
        self._last_flush = time.monotonic()

    # -- end -----------------------------------------------------------------------------------------
    def finish(self, stopped_by: str) -> Path:
        """Drain what is left, write the last chunks and meta (status complete)."""
        assert self.writer is not None
        for _ in range(64):  # whatever the kernel still holds
            before = self.status.events + self.status.spans
            self.poll()
            if self.status.events + self.status.spans == before:
                break
        self.flush()
        self._write_stacks()
        self.meta.source["stopped_by"] = stopped_by
        self._update_meta(final=True)
        self.writer.close()
        for r in (self.events, self.spans):
            r.close()
        self.bpf.cleanup()
        return self.writer.path

    def lost_per_cpu(self) -> dict[str, int]:
        """Events lost so far, per CPU (and 'perf' for perf buffers): the kernel's drop counters."""
        return self._drops_per_cpu()

    def _drops_per_cpu(self) -> dict[str, int]:
        drops = self.bpf[b"drops"]
        out: Counter = Counter()
        for i in DROPS_SLOTS:
            for cpu, n in enumerate(drops[ctypes.c_int(i)]):
                if n:
                    out[str(cpu)] += int(n)
        for r in (self.events, self.spans):
            if isinstance(r, PerfReader) and r.lost:
                out["perf"] += r.lost
        return dict(out)

    def _update_meta(self, final: bool = False) -> None:
        per_cpu = self._drops_per_cpu()
        total = int(sum(per_cpu.values()))
        self.meta.lost_events = {"total": total, "per_cpu": per_cpu}
        events: dict[str, Any] = {"counts": dict(sorted(self.counts.items())), "unknown": {}}
        b = self.bpf
        if self._zaps_known():
            totals = np.zeros(2 * len(LEVELS), dtype=np.int64)
            zt = b[b"zap_totals"]
            for i in range(len(totals)):
                totals[i] = sum(int(v) for v in zt[ctypes.c_int(i)])
            if totals.any():  # none: leave zaps_by_level to the shadow-MMU page-table rule
                events["zap_totals"] = {str(lv): {"leaf": int(totals[2 * (lv - 1)]),
                                                  "nonleaf": int(totals[2 * (lv - 1) + 1])}
                                        for lv in LEVELS if totals[2 * (lv - 1)] or totals[2 * (lv - 1) + 1]}
            ret = b[b"retained"]
            events["retained_at_end"] = {str(lv): int(ret[ctypes.c_int(lv)].value) for lv in LEVELS
                                         if int(ret[ctypes.c_int(lv)].value)}
            events["retained_peak"] = int(b[b"stats"][ctypes.c_int(STAT_RETAINED_PEAK)].value)
        stats = b[b"stats"]
        problems = {"spans_too_deep": int(stats[ctypes.c_int(STAT_DEPTH_OVERFLOW)].value),
                    "tables_untracked": int(stats[ctypes.c_int(STAT_TABLES_FULL)].value),
                    "unmatched_returns": int(stats[ctypes.c_int(STAT_UNMATCHED_RETURN)].value)}
        events["recorder_errors"] = {k: v for k, v in problems.items() if v}
        if self.plan.spans:
            owners = vm_owners(b[b"vm_owner"])
            events["vm_owner"] = {self.hasher.one(k): pid for k, (pid, _) in owners.items()}
            events["vm_owner_from"] = {self.hasher.one(k): how for k, (_, how) in owners.items()}
        self.meta.events = events
        if final and total:
            self.meta.notes.append(f"{total} events were lost (ring buffer full); per CPU: {per_cpu}")

    def _write_stacks(self) -> None:
        if not self._stack_ids or not self.defines["TDP_STACKS"]:
            return
        assert self.writer is not None
        table = self.bpf[b"stack_traces"]
        rows = []
        for sid in sorted(self._stack_ids):
            try:
                addrs = list(table.walk(sid))
            except KeyError:
                continue
            rows += [(sid, d, self.bpf.ksym(a).decode("utf-8", "replace")) for d, a in enumerate(addrs)]
        if rows:
            df = pd.DataFrame(rows, columns=STACKS.names)
            df["depth"] = df["depth"].astype(np.int16)
            self.writer.append("stacks", df)
