"""Turn decoded trace events into capture tables: SPTE chunks stream to disk as they come; spans, yields and
retained-table figures are derived once at the end from the same definitions the live recorder uses."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tdptrace.capture import CaptureMeta, CaptureWriter
from tdptrace.capture.hashing import PointerHasher
from tdptrace.capture.pagetables import classify, retained_series
from tdptrace.capture.raw import RawChunk
from tdptrace.capture.schema import MARKERS, SPANS, ZAP_COUNT_COLUMNS
from tdptrace.capture.spans import ZapIndex, build_spans
from tdptrace.capture.waits import WaitPairer
from tdptrace.kernel.spte import Encoding, detect_encoding


def tdp_role_level_is_parent(release: str | None) -> bool:
    """True for kernels whose TDP MMU traces page-table allocations one level too high (5.10)."""
    from tdptrace.kernel.release import parse_version

    v = parse_version(release or "")
    return v is not None and v < (5, 11)


# SPTE columns kept in memory (as the capture stores them) for spans, zaps and retained tables at the end, instead
# of reading back the chunks just written.
_SPTE_KEPT = {"ts": np.int64, "seq": np.int64, "tid": np.int32, "as_id": np.uint8, "gfn": np.uint64,
              "level": np.uint8, "old_spte": np.uint64, "new_spte": np.uint64}


class Assembler:
    """Collects RawChunks into a capture. SPTE rows are written per chunk (bounded memory while parsing)."""

    def __init__(self, writer: CaptureWriter, encoding: Encoding | None, hasher: PointerHasher | None = None):
        self.writer = writer
        self.encoding = encoding
        self.hasher = hasher or writer.hasher  # one salt per capture: the writer's scrubber hashes alike
        self.calls: list[pd.DataFrame] = []
        self.page_tables: list[pd.DataFrame] = []
        self.markers: list[pd.DataFrame] = []
        self.marker_tables: list[pa.Table] = []
        self.lost: list[tuple[int, int, int]] = []
        self.counts: Counter = Counter()
        self.unknown: Counter = Counter()
        self.legacy_hint = False
        self.spte_rows = 0
        self._spte_parts: list[dict[str, np.ndarray]] = []  # the columns the whole-capture derivations need
        self.header_overrun = 0
        self.waits = WaitPairer(self.hasher)
        self.waiters_enabled = (False, False)  # (lock contention, fault latency) recorded, even if none seen

    def add(self, chunk: RawChunk) -> None:
        """Take one decoded block."""
        if chunk.from_handle_changed_spte:
            self.legacy_hint = True
        sp = chunk.sptes
        if len(sp):
            col = (lambda c: sp.column(c).to_numpy()) if isinstance(sp, pa.Table) else (lambda c: sp[c].to_numpy())
            if detect_encoding(col("old_spte"), col("new_spte")) == Encoding.LEGACY:
                self.legacy_hint = True
            self.writer.append("sptes", sp)
            self.spte_rows += len(sp)
            self._spte_parts.append({c: col(c).astype(t, copy=False) for c, t in _SPTE_KEPT.items()})
        for lst, df in ((self.calls, chunk.calls), (self.page_tables, chunk.page_tables),
                        (self.markers, chunk.markers)):
            if len(df):
                lst.append(df)
        if chunk.marker_table is not None and chunk.marker_table.num_rows:
            self.marker_tables.append(chunk.marker_table)
        self.counts.update(chunk.counts)
        self.unknown.update(chunk.unknown)
        if chunk.waits is not None and len(chunk.waits):
            self.writer.append("waits", self.waits.add(chunk.waits))

    def finish(self, step: Callable[[str], None] | None = None) -> dict[str, int]:
        """Derive spans, yields and retained tables, write every remaining table, fill meta. Returns stats.
        `step` is told the name of each finishing step as it starts (for progress)."""
        step = step or (lambda name: None)
        meta = self.writer.meta
        enc = self.encoding or (Encoding.LEGACY if self.legacy_hint else Encoding.PRESENT_BIT)
        meta.spte_encoding = enc.value
        if self.encoding is None:
            meta.notes.append(f"kernel release unknown: SPTE presence decided by the {enc.value} rule "
                              "(pass --kernel RELEASE to be sure)")
        sptes = pd.DataFrame({c: (np.concatenate([p[c] for p in self._spte_parts]) if self._spte_parts
                                  else np.zeros(0, dtype=t)) for c, t in _SPTE_KEPT.items()})
        self._spte_parts = []
        cls = classify(sptes, enc)
        zap = cls["zap"].to_numpy()
        zaps = ZapIndex(sptes["tid"].to_numpy()[zap], sptes["seq"].to_numpy()[zap],
                        sptes["level"].to_numpy()[zap], cls["old_leaf"].to_numpy()[zap])
        calls = pd.concat(self.calls, ignore_index=True) if self.calls else _empty_calls()
        step("zap spans and yield points")
        spans, yields, entry_only = build_spans(calls, zaps)
        # The markers (most of the rows still to write) are sorted, scrubbed and written on a second thread while
        # the spans and retained tables are derived and written here: Arrow and Parquet work without the GIL.
        # Not when chunks are observed (a live capture): its observer hears them on one thread, in order.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tdptrace-markers") \
            if self.writer.on_chunk is None else None
        written = pool.submit(self._write_markers, entry_only) if pool else None
        try:
            self._finish_tables(step, meta, sptes, cls, spans, yields)
        finally:
            if pool:
                wait([written])
                pool.shutdown()
        if written is None:
            self._write_markers(entry_only)
        else:
            written.result()  # an error writing them (a full disk) is raised here
        if self.waits.seen_lock or self.waits.seen_fault:  # nothing can be open otherwise
            self.writer.append("waits", self.waits.close())
        if self.waits.lost_ends:
            meta.notes.append(f"{self.waits.lost_ends} lock contention waits lost their contention_end event and "
                              "were left out")
        stats = {"spans": len(spans), "yields": len(yields), "orphan_returns": spans.attrs.get("orphan_returns", 0)}
        total_lost = self._write_lost()
        meta.events = {"counts": dict(sorted(self.counts.items())), "unknown": dict(sorted(self.unknown.items()))}
        has_calls = len(calls) > 0
        meta.capabilities = {
            "sptes": self.spte_rows > 0,
            "spans": len(spans) > 0,
            "yield_points": bool(has_calls and len(spans) > 0),
            "yield_returns": bool(len(yields) and yields["paired"].any()),
            "page_table_events": bool(self.page_tables),
            "retained_tables": self.spte_rows > 0,
            "lock_contention": self.waits.seen_lock or self.waiters_enabled[0],
            "fault_latency": self.waits.seen_fault or self.waiters_enabled[1],
        }
        stats["lost"] = total_lost
        return stats

    def _finish_tables(self, step: Callable[[str], None], meta: CaptureMeta, sptes: pd.DataFrame,
                       cls: pd.DataFrame, spans: pd.DataFrame, yields: pd.DataFrame) -> None:
        """Spans (with the tables retained at their end), yields and page tables, written."""
        step("retained page tables")
        series = retained_series(sptes, cls)
        if len(spans):
            spans_out = self._spans_table(spans, series.at(spans["attr_end"].to_numpy()), bool(len(sptes)))
            self.writer.append("spans", spans_out)
        if len(yields):
            self.writer.append("yields", self._yields_table(yields))
        step("writing page tables and markers")
        if self.page_tables:
            pt = pd.concat(self.page_tables, ignore_index=True)
            if tdp_role_level_is_parent(meta.kernel.get("release")) and self.spte_rows:
                # 5.10's TDP MMU allocates a table with the role level of the entry that points at it
                # (alloc_tdp_mmu_page(vcpu, gfn, iter.level)); seen on Debian 5.10.223: 'l2' for level-1 tables.
                pt["level"] = (pt["level"].astype(np.int64) - 1).clip(lower=1).astype(np.uint8)
                meta.notes.append("5.10 TDP MMU: kvm_mmu_get_page role levels shifted down by one to the "
                                  "table's own level; kvm_mmu_prepare_zap_page does not fire for TDP tables")
            self.writer.append("page_tables", pt)

    def _write_markers(self, entry_only: pd.DataFrame) -> None:
        """Every marker in event order, one Parquet part."""
        markers = self.markers + ([self._calls_as_markers(entry_only)] if len(entry_only) else [])
        if markers or self.marker_tables:
            # Kernel addresses in 'detail' are hashed by the writer's scrubber, like every text column.
            parts = [pa.Table.from_pandas(df[MARKERS.names], schema=MARKERS, preserve_index=False) for df in markers]
            m = pa.concat_tables(parts + [t.cast(MARKERS) for t in self.marker_tables])
            self.writer.append("markers", m.take(pc.sort_indices(m, [("seq", "ascending")])))

    def _spans_table(self, spans: pd.DataFrame, retained: np.ndarray, have_sptes: bool) -> pd.DataFrame:
        h = self.hasher
        out = pd.DataFrame({
            "ts": spans["ts"].to_numpy(np.int64), "seq": spans["seq"].to_numpy(np.int64),
            "cpu": spans["cpu"].to_numpy(), "tid": spans["tid"].to_numpy(), "pid": spans["pid"].to_numpy(),
            "comm": spans["comm"], "span_id": spans["span_id"].to_numpy(), "function": spans["function"],
        })
        complete = spans["paired"].to_numpy()
        end = pd.array(spans["end_ts"].to_numpy(np.int64), dtype="Int64")
        end[~complete] = pd.NA
        out["end_ts"] = end
        out["duration_ns"] = end - out["ts"].to_numpy()
        out["complete"] = complete
        out["parent_id"] = spans["parent_id"].astype("Int64").to_numpy()
        out["depth"] = spans["depth"].to_numpy()
        caller = spans["caller_ret"].astype("string")
        out["caller"] = caller.mask(caller == "").to_numpy()
        out["vm"] = h.column(spans["arg_kvm"]).to_numpy()
        out["root"] = h.column(spans["arg_root"]).to_numpy()
        out["gfn_start"] = spans["arg_start"].astype("Int64").astype("UInt64").to_numpy()
        out["gfn_end"] = spans["arg_end"].astype("Int64").astype("UInt64").to_numpy()
        for a in ("zap_level", "shared", "can_yield", "flush"):
            out[a] = spans[f"arg_{a}"].astype("Int64").to_numpy()
        out["ret"] = spans["ret"].astype("Int64").to_numpy()
        for c in ("yields", "lock_drops", "away_ns", "max_gap_ns"):
            out[c] = spans[c].to_numpy()
        out["zaps_known"] = have_sptes
        for c in ZAP_COUNT_COLUMNS:
            col = pd.array(spans[c].to_numpy(np.int64), dtype="Int64")
            if not have_sptes:
                col[:] = pd.NA
            out[c] = col
        ret = pd.array(retained.astype(np.int64), dtype="Int64")
        if not have_sptes:
            ret[:] = pd.NA
        ret[~complete] = pd.NA
        out["retained_after"] = ret
        out["stack_id"] = pd.array([pd.NA] * len(out), dtype="Int64")
        return out[SPANS.names]

    def _yields_table(self, y: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({
            "ts": y["ts"].to_numpy(np.int64), "seq": y["seq"].to_numpy(np.int64), "cpu": y["cpu"].to_numpy(),
            "tid": y["tid"].to_numpy(), "pid": y["pid"].to_numpy(), "comm": y["comm"].to_numpy(),
            "function": y["function"].to_numpy(), "ret_ts": y["ret_ts"].to_numpy(),
            "ret": y["ret"].astype("Int64").to_numpy(), "span_id": y["span_id"].astype("Int64").to_numpy(),
            "lock": self.hasher.column(y["arg_lock"]).to_numpy(),
        }).sort_values("seq", kind="stable", ignore_index=True)

    @staticmethod
    def _calls_as_markers(c: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({
            "ts": c["ts"].to_numpy(), "seq": c["seq"].to_numpy(), "cpu": c["cpu"].to_numpy(),
            "tid": c["tid"].to_numpy(), "pid": c["pid"].to_numpy(), "comm": c["comm"].to_numpy(),
            "event": np.where(c["is_return"].to_numpy(), "return", "call"), "function": c["function"].to_numpy(),
            "detail": c["args"].to_numpy(),
        })

    def _write_lost(self) -> int:
        meta = self.writer.meta
        per_cpu: Counter = Counter()
        rows = []
        for cpu, count, seq in self.lost:
            per_cpu[str(cpu)] += count
            rows.append((seq, cpu, count))
        if self.header_overrun:
            per_cpu["unknown"] += self.header_overrun
            rows.append((-1, -1, self.header_overrun))
        if rows:
            df = pd.DataFrame(rows, columns=["seq", "cpu", "count"])
            df["ts"] = pd.array([pd.NA] * len(df), dtype="Int64")
            df["seq"] = df["seq"].astype("Int64")
            df.loc[df["seq"] < 0, "seq"] = pd.NA
            self.writer.append("lost", df[["ts", "seq", "cpu", "count"]])
        total = int(sum(per_cpu.values()))
        meta.lost_events = {"total": total, "per_cpu": dict(per_cpu)}
        return total


def _empty_calls() -> pd.DataFrame:
    cols = {"ts": np.int64, "seq": np.int64, "cpu": np.int16, "tid": np.int32, "pid": np.int32}
    df = pd.DataFrame({k: np.zeros(0, dtype=v) for k, v in cols.items()})
    for c in ("comm", "symbol", "function", "caller", "args"):
        df[c] = pd.Series([], dtype="string")
    df["is_return"] = np.zeros(0, dtype=bool)
    df["at_entry"] = np.zeros(0, dtype=bool)
    return df
