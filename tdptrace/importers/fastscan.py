"""The importer's native hot path for tracefs text: a block of bytes -> typed columns in one C pass
(_tracefs_scan.c), SPTE changes decoded on the way; the few lines it does not take are read by the pure
parser (tracefs.parse_lines) and merged back in line order, so the result is the pure path's to the value.

Without the compiled module (a build without a C compiler) `available()` is False and the importer reads every
line with the pure parser: same figures, slower. TDPTRACE_PURE=1 forces that (the tests compare both).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tdptrace.capture.raw import RawChunk
from tdptrace.capture.schema import SPTES
from tdptrace.importers import tracefs
from tdptrace.capture.waits import WAIT_EVENTS
from tdptrace.importers.decode import KNOWN_OTHER, MARKER_EVENTS, TEXT, _normalised_events, decode
from tdptrace.importers.tracefs import ParsedBlock
from tdptrace.kernel.tracefs import GET_PAGE, PREPARE_ZAP, SPTE_CHANGED

try:
    from tdptrace.importers import _tracefs_scan as _native  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: the pure path reads everything
    _native = None


def available() -> bool:
    """True when the compiled scanner is importable and not switched off (TDPTRACE_PURE=1)."""
    return _native is not None and os.environ.get("TDPTRACE_PURE", "") in ("", "0")


@dataclass
class Scanned:
    """One block scanned: the counts the import reports, lost-event markers, and the decoded events."""

    events: int
    unparsed: int
    unparsed_example: str
    comment_lines: int
    header_overrun: int
    lost: list[tuple[int, int, int]]
    chunk: RawChunk | None
    rest: pa.Table | None = None  # events left for decode() (seq from the block's 0), when finish_scan(defer=True)


def _ints(buf: bytes, dtype: type) -> np.ndarray:
    return np.frombuffer(buf, dtype=dtype)


def _strings(offsets: bytes, data: bytes) -> pa.Array:
    off = pa.py_buffer(offsets)
    return pa.Array.from_buffers(pa.string(), len(offsets) // 4 - 1, [None, off, pa.py_buffer(data)])


def _text(arr: pa.Array) -> pd.Series:
    return pd.Series(pd.array(arr, dtype=TEXT))


# Events decode() reads into tables of their own; every other event whose body is not a kprobe location becomes
# a marker as it is (event name, body as detail), which is done here in Arrow without the per-kind decoders.
_DECODED = pa.array(sorted({SPTE_CHANGED, GET_PAGE, PREPARE_ZAP} | WAIT_EVENTS))
_NOT_UNKNOWN = MARKER_EVENTS | KNOWN_OTHER


def _split(ev: pa.Table) -> tuple[pa.Table | None, tuple[pa.Table, Counter, Counter] | None]:
    """The events decode() must read, and the plain markers as an Arrow table with their counts (Arrow only:
    this runs on the scanning thread)."""
    if not ev.num_rows:
        return None, None
    name = _normalised_events(ev.column("event"))
    body = ev.column("body").combine_chunks()
    special = pc.or_(pc.is_in(name, _DECODED), pc.starts_with(body, "("))
    if not pc.any(pc.invert(special)).as_py():
        return ev, None
    plain = pc.invert(special)
    names = name.filter(plain)
    markers = pa.table({
        "ts": ev.column("ts").filter(plain), "seq": ev.column("seq").filter(plain),
        "cpu": ev.column("cpu").filter(plain), "tid": ev.column("tid").filter(plain),
        "pid": ev.column("pid").filter(plain), "comm": ev.column("comm").filter(plain), "event": names,
        "function": pa.nulls(len(names), pa.string()), "detail": body.filter(plain),
    })
    vc = pc.value_counts(names).flatten()
    counts = Counter(dict(zip(vc[0].to_pylist(), vc[1].to_pylist())))
    unknown = Counter({k: v for k, v in counts.items() if k not in _NOT_UNKNOWN})
    rest = ev.filter(special)
    return (rest if rest.num_rows else None), (markers, counts, unknown)


def _decode_split(ev: pa.Table) -> tuple[RawChunk | None, tuple[pa.Table, Counter, Counter] | None]:
    """decode() of the events that need it, and the plain markers as an Arrow table with their counts."""
    rest, plain = _split(ev)
    return (decode(rest) if rest is not None else None), plain


def scan_block(data: bytes) -> Scanned:
    """Parse and decode one block of whole tracefs lines (numbered from seq 0), like
    decode(tracefs.parse_lines(tracefs.split_lines(data), 0).events) and the block's counts."""
    return finish_scan(prescan(data))


@dataclass
class Prescanned:
    """A block after the C scan and the Arrow work (what the scanning thread does): the native SPTE columns,
    the events decode() still has to read, the plain markers, and the pure parser's share of the block."""

    n: int
    s_cols: tuple | None
    s_seq: np.ndarray
    s_tid: np.ndarray
    s_pid: np.ndarray
    rest: pa.Table | None
    plain: tuple[pa.Table, Counter, Counter] | None
    slow: ParsedBlock | None
    lost_seq: np.ndarray


def prescan(data: bytes) -> Prescanned:
    """The part of scan_block that holds the GIL least (C scan, numpy, Arrow compute), run on a second thread
    while the previous block is decoded and written; finish_scan does the rest."""
    (s_idx, s_ts, s_cpu, s_tid, s_asid, s_gfn, s_level, s_old, s_new, s_coff, s_comm,
     e_idx, e_ts, e_cpu, e_tid, e_coff, e_comm, e_eoff, e_event, e_boff, e_body,
     o_idx, o_off, o_line) = _native.scan(data)
    s_rows, e_rows, o_rows = _ints(s_idx, np.int64), _ints(e_idx, np.int64), _ints(o_idx, np.int64)
    # Lines the scan left alone: the pure parser reads them (comments, lost-events lines, odd layouts, damage).
    slow: ParsedBlock | None = None
    slow_rows = np.zeros(0, dtype=np.int64)
    if len(o_rows):
        lines = _strings(o_off, o_line)
        try:
            lines.validate(full=True)
        except pa.ArrowInvalid:  # not UTF-8: replace like split_lines does
            raw = pa.Array.from_buffers(pa.binary(), len(lines), lines.buffers()).to_pylist()
            lines = pa.array([b.decode("utf-8", errors="replace") for b in raw], type=pa.string())
        slow = tracefs.parse_lines(lines, 0)
        slow_rows = o_rows[slow.rows]
    n_s, n_e, n_o = len(s_rows), len(e_rows), len(slow_rows)
    # seq = rank of the line among the block's event lines (each of the three row lists is in line order).
    all_rows = np.sort(np.concatenate([s_rows, e_rows, slow_rows]))
    n = len(all_rows)
    e_seq = np.searchsorted(all_rows, e_rows)
    o_seq = np.searchsorted(all_rows, slow_rows)
    s_seq = np.searchsorted(all_rows, s_rows)
    e_tid_a = _ints(e_tid, np.int32)
    s_tid_a = _ints(s_tid, np.int32)
    e_pid = np.full(n_e, -1, dtype=np.int32)
    s_pid = np.full(n_s, -1, dtype=np.int32)
    if slow is not None and slow.tgid_mask is not None:  # tgid printed on some lines: fill across the block
        pid = np.full(n, -1, dtype=np.int32)
        has = np.zeros(n, dtype=bool)
        tid = np.zeros(n, dtype=np.int64)
        tid[e_seq], tid[s_seq] = e_tid_a, s_tid_a
        tid[o_seq] = slow.events.column("tid").to_numpy()
        opid = slow.events.column("pid").to_numpy()
        pid[o_seq] = np.where(slow.tgid_mask, opid, -1)
        has[o_seq] = slow.tgid_mask
        tracefs.fill_pids(pid, has, tid)
        e_pid, s_pid = pid[e_seq], pid[s_seq]
        slow_events = slow.events.set_column(slow.events.column_names.index("pid"), "pid", pa.array(pid[o_seq]))
    else:
        slow_events = slow.events if slow is not None else None
    ev = pa.table({
        "ts": _ints(e_ts, np.int64), "seq": e_seq.astype(np.int64), "cpu": _ints(e_cpu, np.int16),
        "tid": e_tid_a, "pid": e_pid, "comm": _strings(e_coff, e_comm), "event": _strings(e_eoff, e_event),
        "body": _strings(e_boff, e_body),
    })
    if slow_events is not None and n_o:
        slow_events = slow_events.set_column(1, "seq", pa.array(o_seq.astype(np.int64)))
        ev = pa.concat_tables([ev, slow_events.cast(ev.schema)]).sort_by("seq") if n_e else slow_events
    rest, plain = _split(ev)
    lost_seq = (np.searchsorted(all_rows, o_rows[slow.lost_rows]) if slow is not None and slow.lost
                else np.zeros(0, dtype=np.int64))
    return Prescanned(n, (s_ts, s_cpu, s_coff, s_comm, s_asid, s_gfn, s_level, s_old, s_new) if n_s else None,
                      s_seq, s_tid_a, s_pid, rest, plain, slow, lost_seq)


def _yields_no_sptes(rest: pa.Table) -> bool:
    """True when decode() of these events gives no SPTE rows (no SPTE line the scan left, no 5.10-style
    __handle_changed_spte kprobe), so they may be decoded later than the block's SPTE rows are written."""
    if pc.any(pc.equal(rest.column("event"), SPTE_CHANGED)).as_py():
        return False
    return not pc.any(pc.match_substring(rest.column("body"), "handle_changed_spte")).as_py()


_EMPTY_CHUNK: list[RawChunk] = []


def _empty_chunk() -> RawChunk:
    """A chunk of no events (its empty frames made once: nothing appends to a frame of no rows)."""
    if not _EMPTY_CHUNK:
        _EMPTY_CHUNK.append(decode(tracefs.empty_events()))
    e = _EMPTY_CHUNK[0]
    return RawChunk(sptes=e.sptes, calls=e.calls, page_tables=e.page_tables, markers=e.markers, waits=e.waits)


def finish_scan(p: Prescanned, defer: bool = False) -> Scanned:
    """decode() of the block's few special events and the chunk put together (pandas work: main thread).
    With `defer`, events that give no SPTE rows are handed back undecoded in Scanned.rest instead: decode()
    costs the same for a few dozen rows as for thousands, so the importer decodes them for many blocks at once."""
    rest = p.rest
    if defer and rest is not None and _yields_no_sptes(rest):
        chunk, deferred = None, rest
    else:
        chunk, deferred = (decode(rest) if rest is not None else None), None
    plain, slow, n = p.plain, p.slow, p.n
    if p.s_cols is not None:
        s_ts, s_cpu, s_coff, s_comm, s_asid, s_gfn, s_level, s_old, s_new = p.s_cols
        s_seq, s_tid_a, s_pid = p.s_seq, p.s_tid, p.s_pid
        native = pa.table({
            "ts": _ints(s_ts, np.int64), "seq": s_seq.astype(np.int64), "cpu": _ints(s_cpu, np.int16),
            "tid": s_tid_a, "pid": s_pid, "comm": _strings(s_coff, s_comm),
            "as_id": _ints(s_asid, np.uint8), "gfn": _ints(s_gfn, np.uint64), "level": _ints(s_level, np.uint8),
            "old_spte": _ints(s_old, np.uint64), "new_spte": _ints(s_new, np.uint64),
        }, schema=SPTES)
        if chunk is None:
            chunk = _empty_chunk()
        if len(chunk.sptes):  # SPTE lines the scan left to the pure decoder ('[FAILED TO PARSE]', 0x values)
            both = pa.concat_tables([pa.Table.from_pandas(chunk.sptes[SPTES.names], schema=SPTES,
                                                          preserve_index=False), native])
            native = both.take(pc.sort_indices(both, [("seq", "ascending")]))
        chunk.sptes = native
        chunk.counts = chunk.counts + Counter({SPTE_CHANGED: len(s_seq)})
    if plain is not None:
        if chunk is None:
            chunk = _empty_chunk()
        chunk.marker_table, counts, unknown = plain
        chunk.counts = chunk.counts + counts
        chunk.unknown = chunk.unknown + unknown
    lost: list[tuple[int, int, int]] = []
    if slow is not None and slow.lost:
        lost = [(c, k, int(s)) for (c, k, _), s in zip(slow.lost, p.lost_seq)]
    return Scanned(events=n, unparsed=slow.unparsed if slow else 0,
                   unparsed_example=slow.unparsed_example if slow else "",
                   comment_lines=slow.comment_lines if slow else 0,
                   header_overrun=slow.header_overrun if slow else 0, lost=lost, chunk=chunk, rest=deferred)
