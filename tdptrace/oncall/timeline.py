"""A capture as a Perfetto trace (protobuf, built with the `perfetto` package's trace builder), to zoom into
in the Perfetto UI or query with its trace processor.

Layout: one process per VMM (pid) with one thread track per task that zapped; every zap span is a slice on
its task's track (nested spans nest), named after the function, with the VM, gfn range, lock mode, zap
level, yields, longest gap and zaps per level as arguments. Below each such task, a child track
"mmu_lock" carries the holds (and the stretches that include time away) and the yield points between them.
Counter tracks: retained non-leaf page tables, and SPTE zaps per level (cumulative). Kernel log reports are
instants on a "kernel log" track; waiters (record --waiters) get a track of their own per waiting task.
Timestamps are the capture clock in ns, unchanged: the time base of triage, report and the kernel log.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional

import numpy as np
import pandas as pd

from tdptrace.capture import Capture
from tdptrace.errors import BadInput
from tdptrace.kernel.mmu_lock import lock_mode
from tdptrace.metrics.holds import HOLD, df_holds
from tdptrace.metrics.stretches import capture_bounds, df_stretches
from tdptrace.oncall.kernel_log import KernelReport

SEQUENCE_ID = 1
# Zap counters are sampled at most once per this many ns (the last value in each bucket): a teardown zaps
# hundreds of thousands of SPTEs and the UI needs only the shape.
COUNTER_BUCKET_NS = 100_000

SLICE_BEGIN, SLICE_END, INSTANT, COUNTER = 1, 2, 3, 4


@dataclass
class ExportStats:
    """What went into the file (the test checks these against the capture)."""

    path: Path
    packets: int
    span_slices: int
    hold_slices: int
    yield_slices: int
    wait_slices: int
    counter_points: int
    log_instants: int
    bytes: int


class _Tracks:
    """Track uuids: one per process, task, task's mmu_lock child, counter and waiter track."""

    def __init__(self) -> None:
        self.uuid: dict[tuple, int] = {}
        self.descriptors: list[Any] = []

    def get(self, key: tuple, make) -> int:
        if key not in self.uuid:
            self.uuid[key] = len(self.uuid) + 1
            self.descriptors.append(make(self.uuid[key]))
        return self.uuid[key]


def _annotate(ev: Any, args: dict[str, Any]) -> None:
    for k, v in args.items():
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        a = ev.debug_annotations.add()
        a.name = k
        if isinstance(v, (bool, np.bool_)):
            a.bool_value = bool(v)
        elif isinstance(v, (int, np.integer)):
            a.int_value = int(v)
        elif isinstance(v, (float, np.floating)):
            a.double_value = float(v)
        else:
            a.string_value = str(v)


def _opt(v: Any) -> Optional[int]:
    return None if v is None or pd.isna(v) else int(v)


class TimelineWriter:
    """Builds the packets of one capture's timeline and streams them to a file object."""

    def __init__(self, cap: Capture, reports: Optional[list[KernelReport]] = None) -> None:
        from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

        self.pb = pb
        self.cap = cap
        self.reports = reports or []
        self.tracks = _Tracks()
        self.lo, self.hi = capture_bounds(cap)
        self.counts = {"span_slices": 0, "hold_slices": 0, "yield_slices": 0, "wait_slices": 0,
                       "counter_points": 0, "log_instants": 0}

    # -- tracks -------------------------------------------------------------------------------------------
    def _process(self, pid: int, name: str) -> int:
        def make(uuid: int):
            d = self.pb.TrackDescriptor(uuid=uuid)
            d.process.pid = int(pid)
            d.process.process_name = name
            return d
        return self.tracks.get(("process", pid), make)

    def _thread(self, pid: int, tid: int, comm: str) -> int:
        pid = tid if pid < 0 else pid
        parent = self._process(pid, comm)

        def make(uuid: int):
            d = self.pb.TrackDescriptor(uuid=uuid, parent_uuid=parent)
            d.thread.pid = int(pid)
            d.thread.tid = int(tid)
            d.thread.thread_name = comm
            return d
        return self.tracks.get(("thread", tid), make)

    def _child(self, parent: int, key: tuple, name: str) -> int:
        return self.tracks.get(key, lambda uuid: self.pb.TrackDescriptor(uuid=uuid, parent_uuid=parent, name=name))

    def _counter(self, name: str, unit: Optional[str] = None) -> int:
        def make(uuid: int):
            d = self.pb.TrackDescriptor(uuid=uuid, name=name)
            d.counter.SetInParent()
            if unit:
                d.counter.unit_name = unit
            return d
        return self.tracks.get(("counter", name), make)

    # -- events -------------------------------------------------------------------------------------------
    def _events(self) -> pd.DataFrame:
        """Every event as a row: ts, order (ties: ends before begins), type, track, name, args."""
        rows: list[pd.DataFrame] = [self._span_events(), self._lock_events(), self._wait_events(),
                                    self._counter_events(), self._marker_events(), self._log_events()]
        ev = pd.concat([r for r in rows if len(r)], ignore_index=True) if any(len(r) for r in rows) else \
            pd.DataFrame({"ts": [], "order": [], "type": [], "track": [], "name": [], "args": []})
        return ev.sort_values(["ts", "order"], kind="stable", ignore_index=True)

    def _span_events(self) -> pd.DataFrame:
        sp = self.cap.spans
        if sp.empty:
            return pd.DataFrame()
        release = (self.cap.meta.kernel or {}).get("release")
        y = self.cap.yields
        yfns = y.groupby("span_id")["function"].agg(lambda s: tuple(sorted(set(s.astype(str))))) if len(y) else {}
        tracks = [self._thread(int(p), int(t), str(c)) for p, t, c in zip(sp["pid"], sp["tid"], sp["comm"])]
        end = sp["end_ts"].fillna(self.hi).to_numpy(np.int64)
        args = []
        for r in sp.itertuples(index=False):  # spans: a few per zap operation, not per SPTE
            lm = lock_mode(str(r.function), _opt(r.shared), yfns.get(r.span_id, ()) if len(y) else (), release)
            zaps = {f"{k}_l{lv}": _opt(getattr(r, f"{k}_l{lv}")) for lv in range(1, 6) for k in ("leaf", "nonleaf")}
            args.append({"span_id": int(r.span_id), "vm": None if pd.isna(r.vm) else str(r.vm),
                         "gfn_start": _opt(r.gfn_start), "gfn_end": _opt(r.gfn_end), "lock_mode": lm.mode,
                         "zap_level": _opt(r.zap_level), "shared": _opt(r.shared), "can_yield": _opt(r.can_yield),
                         "yields": int(r.yields), "max_gap_ns": _opt(r.max_gap_ns),
                         "retained_after": _opt(r.retained_after), "complete": bool(r.complete),
                         "caller": None if pd.isna(r.caller) else str(r.caller)}
                        | {k: v for k, v in zaps.items() if v})
        self.counts["span_slices"] = len(sp)
        n = len(sp)
        # Ties at one timestamp: an end closes before a begin opens; outer spans open first and close last.
        depth = sp["depth"].to_numpy(np.int64)
        begins = pd.DataFrame({"ts": sp["ts"].to_numpy(np.int64), "order": 100 + depth, "type": SLICE_BEGIN,
                               "track": tracks, "name": sp["function"].astype(str).to_numpy(), "args": args})
        ends = pd.DataFrame({"ts": end, "order": 50 - depth, "type": SLICE_END, "track": tracks,
                             "name": [None] * n, "args": [None] * n})
        return pd.concat([begins, ends], ignore_index=True)

    def _lock_events(self) -> pd.DataFrame:
        """Holds (and stretches with time away) and yield points on each task's mmu_lock child track."""
        sp = self.cap.spans
        if sp.empty:
            return pd.DataFrame()
        st = df_holds(self.cap, df_stretches(self.cap, self.hi))
        y = self.cap.yields
        y = y[y["span_id"].notna()]
        tinfo = sp.drop_duplicates("tid").set_index("tid")
        parts = []

        def lock_track(tid: int) -> int:
            r = tinfo.loc[tid]
            return self._child(self._thread(int(r["pid"]), int(tid), str(r["comm"])), ("lock", tid),
                               f"mmu_lock (tid {tid})")

        if len(st):
            tr = [lock_track(int(t)) for t in st["tid"]]
            name = np.where(st["kind"] == HOLD, "hold", "without a yield, incl. time away")
            args = [{"gap_ns": int(g), "ends_at": str(e), "lower_bound": bool(lb), "span_id": int(s)}
                    for g, e, lb, s in zip(st["gap_ns"], st["ends_at"], st["lower_bound"], st["span_id"])]
            parts += [pd.DataFrame({"ts": st["start"].to_numpy(np.int64), "order": 120, "type": SLICE_BEGIN,
                                    "track": tr, "name": name, "args": args}),
                      pd.DataFrame({"ts": (st["start"] + st["gap_ns"]).to_numpy(np.int64), "order": 30,
                                    "type": SLICE_END, "track": tr, "name": None, "args": None})]
            self.counts["hold_slices"] = len(st)
        if len(y):
            y = y[y["tid"].isin(tinfo.index)]
            tr = [lock_track(int(t)) for t in y["tid"]]
            ret = y["ret_ts"]
            has_ret = ret.notna().to_numpy()
            args = [{"ret": _opt(r), "lock": None if pd.isna(lk) else str(lk)} for r, lk in zip(y["ret"], y["lock"])]
            ts = y["ts"].to_numpy(np.int64)
            parts.append(pd.DataFrame({"ts": ts, "order": np.where(has_ret, 110, 115),
                                       "type": np.where(has_ret, SLICE_BEGIN, INSTANT), "track": tr,
                                       "name": "yield " + y["function"].astype(str).str.replace("__cond_resched_",
                                                                                                  "", regex=False),
                                       "args": args}))
            if has_ret.any():
                parts.append(pd.DataFrame({"ts": ret[has_ret].to_numpy(np.int64), "order": 40, "type": SLICE_END,
                                           "track": np.asarray(tr)[has_ret], "name": None, "args": None}))
            self.counts["yield_slices"] = len(y)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def _wait_events(self) -> pd.DataFrame:
        from tdptrace.metrics.waiters import has_waiters

        if not has_waiters(self.cap):
            return pd.DataFrame()
        w = self.cap.table("waits")
        if w.empty:
            return pd.DataFrame()
        end = w["end_ts"].fillna(self.hi).to_numpy(np.int64)
        tracks = []
        for p, t, c, k in zip(w["pid"], w["tid"], w["comm"], w["kind"]):
            th = self._thread(int(p), int(t), str(c))
            tracks.append(self._child(th, ("wait", int(t), str(k)),
                                      f"{'mmu_lock waits' if k == 'lock' else 'vCPU faults'} (tid {int(t)})"))
        name = np.where(w["kind"] == "lock", "wait mmu_lock " + w["mode"].fillna("?").astype(str),
                        "fault vcpu " + w["vcpu"].astype("string").fillna("?"))
        args = [{"lock": None if pd.isna(lk) else str(lk), "address": _opt(a), "complete": not pd.isna(e)}
                for lk, a, e in zip(w["lock"], w["address"], w["end_ts"])]
        self.counts["wait_slices"] = len(w)
        return pd.concat([
            pd.DataFrame({"ts": w["ts"].to_numpy(np.int64), "order": 100, "type": SLICE_BEGIN, "track": tracks,
                          "name": name, "args": args}),
            pd.DataFrame({"ts": end, "order": 50, "type": SLICE_END, "track": tracks, "name": None, "args": None}),
        ], ignore_index=True)

    def _counter_events(self) -> pd.DataFrame:
        if not len(self.cap.sptes):
            return pd.DataFrame()
        from tdptrace.metrics.retained import df_retained
        from tdptrace.metrics.zaps import df_zaps

        parts = []
        ch = df_retained(self.cap)
        if len(ch):
            b = ch.assign(bucket=ch["ts"].to_numpy(np.int64) // COUNTER_BUCKET_NS).groupby("bucket").tail(1)
            tr = self._counter("retained non-leaf page tables")
            first = pd.DataFrame({"ts": [self.lo], "value": [0]})
            vals = pd.concat([first, pd.DataFrame({"ts": b["ts"].to_numpy(np.int64),
                                                   "value": b["retained"].to_numpy(np.int64)})])
            parts.append(vals.assign(track=tr))
        z = df_zaps(self.cap)
        for (lv, leaf), g in z.groupby(["level", "leaf"]):
            tr = self._counter(f"SPTE zaps L{int(lv)} {'leaf' if leaf else 'non-leaf'} (cumulative)")
            n = np.arange(1, len(g) + 1, dtype=np.int64)
            d = pd.DataFrame({"ts": g["ts"].to_numpy(np.int64), "value": n})
            d = d.assign(bucket=d["ts"] // COUNTER_BUCKET_NS).groupby("bucket").tail(1).drop(columns="bucket")
            parts.append(pd.concat([pd.DataFrame({"ts": [self.lo], "value": [0]}), d]).assign(track=tr))
        if not parts:
            return pd.DataFrame()
        c = pd.concat(parts, ignore_index=True)
        self.counts["counter_points"] = len(c)
        return pd.DataFrame({"ts": c["ts"].to_numpy(np.int64), "order": 10, "type": COUNTER,
                             "track": c["track"].to_numpy(), "name": None,
                             "args": c["value"].to_numpy(np.int64)})

    def _marker_events(self) -> pd.DataFrame:
        m = self.cap.markers
        m = m[m["event"].isin(["kvm_mmu_zap_all_fast", "call"])] if len(m) else m
        if m.empty:
            return pd.DataFrame()
        tracks = [self._thread(int(p), int(t), str(c)) for p, t, c in zip(m["pid"], m["tid"], m["comm"])]
        name = np.where(m["event"] == "call", m["function"].astype(str), m["event"].astype(str))
        return pd.DataFrame({"ts": m["ts"].to_numpy(np.int64), "order": 90, "type": INSTANT, "track": tracks,
                             "name": name, "args": [{"detail": None if pd.isna(d) else str(d)} for d in m["detail"]]})

    def _log_events(self) -> pd.DataFrame:
        if not self.reports:
            return pd.DataFrame()
        from tdptrace.oncall.clockmap import ClockMap
        from tdptrace.oncall.triage import match_reports

        matches = [m for m in match_reports(self.cap, self.reports, ClockMap.from_meta(self.cap.meta.clock))
                   if m.capture_ns is not None]
        if not matches:
            return pd.DataFrame()
        tr = self.tracks.get(("log",), lambda uuid: self.pb.TrackDescriptor(uuid=uuid, name="kernel log"))
        self.counts["log_instants"] = len(matches)
        return pd.DataFrame({"ts": [m.capture_ns for m in matches], "order": 95, "type": INSTANT, "track": tr,
                             "name": [m.kind.replace("_", " ") for m in matches],
                             "args": [{"line": m.line_no, "text": m.text, "explained": m.consistent,
                                       "explanation": m.explanation, "stuck_ns": m.stuck_ns} for m in matches]})

    # -- packets ------------------------------------------------------------------------------------------
    def packets(self) -> Iterator[Any]:
        """Track descriptors first, then every event in time order."""
        ev = self._events()
        first = True
        for d in self.tracks.descriptors:
            p = self.pb.TracePacket(trusted_packet_sequence_id=SEQUENCE_ID)
            if first:
                p.sequence_flags = self.pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
                first = False
            p.track_descriptor.CopyFrom(d)
            yield p
        for ts, typ, track, name, args in zip(ev["ts"], ev["type"], ev["track"], ev["name"], ev["args"]):
            p = self.pb.TracePacket(timestamp=int(ts), trusted_packet_sequence_id=SEQUENCE_ID)
            te = p.track_event
            te.type = int(typ)
            te.track_uuid = int(track)
            if typ == COUNTER:
                te.counter_value = int(args)
            else:
                if name is not None:
                    te.name = str(name)
                if isinstance(args, dict):
                    _annotate(te, args)
            yield p


def export(cap: Capture, output: Path, reports: Optional[list[KernelReport]] = None,
           force: bool = False) -> ExportStats:
    """Write the capture's timeline to `output`: streamed to a 0600 temporary file in the output's directory,
    opened through its descriptor, and renamed into place (tdptrace.safefs), so a link planted under either name
    is replaced, never written through; an existing file is replaced only with `force`."""
    import stat as st_

    from perfetto.trace_builder.proto_builder import StreamingTraceProtoBuilder

    from tdptrace.safefs import open_parent

    w = TimelineWriter(cap, reports)
    counts = {"packets": 0, "bytes": 0}

    def fill(f: BinaryIO) -> None:
        b = StreamingTraceProtoBuilder(f)
        for p in w.packets():
            b.write_packet(p)
            counts["packets"] += 1
        counts["bytes"] = f.tell()

    parent, name = open_parent(output)
    with parent:
        st = parent.lstat(name)
        if st is not None and not st_.S_ISREG(st.st_mode):
            raise BadInput(f"{output} exists and is not a regular file", "choose another -o")
        if st is not None and not force:
            raise BadInput(f"{output} already exists", "choose another -o or pass --force to replace it")
        try:
            parent.write_with(name, fill)
        except OSError as exc:
            raise BadInput(f"cannot write {output}: {exc.strerror or exc}", "choose another -o") from None
    return ExportStats(path=output, packets=counts["packets"], bytes=counts["bytes"], **w.counts)
