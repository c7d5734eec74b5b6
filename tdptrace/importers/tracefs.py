"""The tracefs text format (`cat trace`, `cat trace_pipe`): line headers -> common columns.

  <comm>-<tid> [(<tgid>)] [<cpu>] [<flags>] <sec>.<frac>: <event>: <body>
Lost events appear as 'CPU:N [LOST N EVENTS]'; the `trace` file's header says
'entries-in-buffer/entries-written: A/B' (B > A means the ring buffer overwrote B-A events).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tdptrace.importers.textnum import dec_to_i64, narrow, seconds_to_ns

HEADER_RE = (r"^\s*(?P<comm>.*)-(?P<tid>\d+)\s+(?:\(\s*(?P<tgid>[-\d]+)\)\s+)?\[(?P<cpu>\d+)\]\s+"
             r"(?:(?P<flags>[^\s\[\]:]{4,6})\s+)?(?P<sec>\d+)\.(?P<frac>\d+):\s+(?P<event>[^:\s]+):\s?(?P<body>.*)$")
LOST_RE = r"^\s*CPU:\s*(?P<cpu>\d+)\s+\[LOST (?P<n>\d+) EVENTS\]"
ENTRIES_RE = re.compile(r"entries-in-buffer/entries-written:\s*(\d+)/(\d+)")


@dataclass
class ParsedBlock:
    """Common-column table of event lines plus what else the block held."""

    events: pa.Table
    lost: list[tuple[int, int, int]] = field(default_factory=list)  # (cpu, count, seq of following event)
    unparsed: int = 0
    unparsed_example: str = ""
    header_overrun: int = 0
    comment_lines: int = 0
    # Where each event and each lost-events line stood among the lines parsed (0-based), and which events printed
    # a tgid column: what the native scan needs to merge the lines it left to this parser back in order.
    rows: np.ndarray | None = None
    lost_rows: np.ndarray | None = None
    tgid_mask: np.ndarray | None = None


def split_lines(data: bytes) -> pa.Array:
    """Bytes of whole lines -> Arrow string array (invalid UTF-8 replaced, so garbage still parses as garbage)."""
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()
    arr = pa.array(raw, type=pa.binary())
    try:
        return arr.cast(pa.string())
    except pa.ArrowInvalid:  # not UTF-8: decode with replacement characters
        return pa.array(data.decode("utf-8", errors="replace").split("\n")[: len(raw)], type=pa.string())


# Fast path for the tracefs layout: split '<prefix>: <event>: <body>' on the first two ': ', then split the
# prefix from the right on white space into '<comm>-<tid>', '[cpu]', flags, '<sec>.<frac>' - no regex at all.
# Lines that do not fit (no flags column, a tgid column, odd comms) take the full regex; both keep line order.
_FIELDS = ("comm", "tid", "tgid", "cpu", "sec", "frac", "event", "body")


def _pad2(lists: pa.Array) -> pa.Array:
    """Lists with fewer than two elements become ['', ''] so element 1 always exists."""
    return pc.if_else(pc.less(pc.list_value_length(lists), 2), pa.scalar(["", ""], lists.type), lists)


def _fields_fast(lines: pa.Array) -> tuple[pa.Array, dict[str, pa.Array]]:
    """(ok mask over `lines`, named string fields of the ok lines in order)."""
    n = len(lines)
    parts = pc.split_pattern(lines, ": ", max_splits=2)
    three = pc.equal(pc.list_value_length(parts), 3).to_numpy(zero_copy_only=False)
    cand = np.flatnonzero(three)
    p3 = parts if len(cand) == n else parts.take(pa.array(cand))
    pre = pc.list_element(p3, 0)
    tok = pc.utf8_split_whitespace(pre, max_splits=3, reverse=True)
    four = pc.equal(pc.list_value_length(tok), 4).to_numpy(zero_copy_only=False)
    fast = np.zeros(len(cand), dtype=bool)
    f4: dict[str, pa.Array] = {}
    if four.any():
        all4 = bool(four.all())
        t4 = tok if all4 else tok.take(pa.array(np.flatnonzero(four)))
        p4 = p3 if all4 else p3.take(pa.array(np.flatnonzero(four)))
        ct, cpu, ts, event = pc.list_element(t4, 0), pc.list_element(t4, 1), pc.list_element(t4, 3), \
            pc.list_element(p4, 1)
        # Cheap shape checks (a full regex per field costs more than the parse itself).
        c2 = pc.split_pattern(ct, "-", max_splits=1, reverse=True)
        s2 = pc.split_pattern(ts, ".", max_splits=1)
        tid, sec, frac = pc.list_element(_pad2(c2), 1), pc.list_element(_pad2(s2), 0), pc.list_element(_pad2(s2), 1)
        cpu_digits = pc.utf8_slice_codeunits(cpu, 1, -1)
        good = pc.and_(pc.and_(pc.and_(pc.starts_with(cpu, "["), pc.ends_with(cpu, "]")), pc.utf8_is_digit(cpu_digits)),
                       pc.and_(pc.and_(pc.utf8_is_digit(tid), pc.utf8_is_digit(sec)), pc.utf8_is_digit(frac)))
        good = pc.and_(good, pc.equal(pc.find_substring(event, " "), -1))
        good = pc.fill_null(good, False).to_numpy(zero_copy_only=False)
        sel = np.flatnonzero(four)[good] if not all4 else np.flatnonzero(good)
        fast[sel] = True
        if good.all():
            pick = lambda a: a  # noqa: E731
        else:
            keep = pa.array(good)
            pick = lambda a: a.filter(keep)  # noqa: E731
        f4 = {"comm": pc.utf8_ltrim_whitespace(pick(pc.list_element(c2, 0))), "tid": pick(tid),
              "tgid": pa.nulls(len(sel), pa.string()), "cpu": pick(cpu_digits), "sec": pick(sec),
              "frac": pick(frac), "event": pick(event), "body": pick(pc.list_element(p4, 2))}
    ok = np.zeros(n, dtype=bool)
    ok[cand[fast]] = True
    slow_rows = np.flatnonzero(~ok)
    fs: dict[str, pa.Array] = {}
    slow_ok_rows = np.zeros(0, dtype=np.int64)
    if len(slow_rows):
        m = pc.extract_regex(lines.take(pa.array(slow_rows)), HEADER_RE)
        valid = m.is_valid().to_numpy(zero_copy_only=False)
        slow_ok_rows = slow_rows[valid]
        good = m.filter(pa.array(valid))
        fs = {name: pc.struct_field(good, name) for name in _FIELDS}
        ok[slow_ok_rows] = True
    fast_rows = cand[fast]
    if not len(slow_ok_rows):
        return pa.array(ok), f4 if f4 else {k: pa.array([], pa.string()) for k in _FIELDS}
    if not len(fast_rows):
        return pa.array(ok), fs
    order = pa.array(np.argsort(np.concatenate([fast_rows, slow_ok_rows]), kind="stable"))
    merged = {k: pa.concat_arrays([f4[k].cast(pa.string()), fs[k].cast(pa.string())]).take(order) for k in _FIELDS}
    return pa.array(ok), merged


def parse_lines(lines: pa.Array, seq0: int, header_re: str = HEADER_RE) -> ParsedBlock:
    """Parse tracefs-style lines; seq numbers start at seq0 and follow line order."""
    stripped = pc.utf8_ltrim_whitespace(lines)
    is_comment = pc.starts_with(stripped, "#")
    is_empty = pc.equal(pc.utf8_length(stripped), 0)
    skip = pc.or_(is_comment, is_empty)
    comments = lines.filter(is_comment)
    overrun = 0
    for c in comments.to_pylist()[:64]:
        m = ENTRIES_RE.search(c)
        if m:
            overrun += max(0, int(m.group(2)) - int(m.group(1)))
    keep = pc.invert(skip)
    body_lines = lines.filter(keep)
    if header_re == HEADER_RE:
        ok, f = _fields_fast(body_lines)
    else:
        m = pc.extract_regex(body_lines, header_re)
        ok = m.is_valid()
        good = m.filter(ok)
        f = {name: pc.struct_field(good, [i]) for i, name in enumerate(good.type.names)}
    n = int(pc.sum(ok).as_py() or 0)
    seq = np.arange(seq0, seq0 + n, dtype=np.int64)
    hasn = None
    if n:
        tgid = f["tgid"]
        pid = np.full(n, -1, dtype=np.int32)
        has = pc.and_(pc.is_valid(tgid), pc.match_substring_regex(pc.fill_null(tgid, ""), r"^\d+$"))
        hasn = has.to_numpy(zero_copy_only=False)
        if hasn.any():
            pid[hasn] = narrow(dec_to_i64(tgid.filter(has)), np.int32, "pid")
            fill_pids(pid, hasn, dec_to_i64(f["tid"], "pid"))
        events = pa.table({
            "ts": seconds_to_ns(f["sec"], f["frac"]),
            "seq": seq,
            "cpu": narrow(dec_to_i64(f["cpu"], "cpu"), np.int16, "cpu"),
            "tid": narrow(dec_to_i64(f["tid"], "pid"), np.int32, "pid"),
            "pid": pid,
            "comm": f["comm"],
            "event": f["event"],
            "body": f["body"],
        })
    else:
        events = empty_events()
    body_pos = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
    okn = ok.to_numpy(zero_copy_only=False) if isinstance(ok, (pa.Array, pa.ChunkedArray)) else np.asarray(ok)
    block = ParsedBlock(events=events, header_overrun=overrun, comment_lines=len(comments), rows=body_pos[okn],
                        lost_rows=np.zeros(0, dtype=np.int64),
                        tgid_mask=hasn if hasn is not None and hasn.any() else None)
    bad = body_lines.filter(pc.invert(ok))
    if len(bad):
        lost = pc.extract_regex(bad, LOST_RE)
        lost_ok = lost.is_valid()
        if pc.any(lost_ok).as_py():
            # Position each lost marker before the next parsed event line (its seq).
            okn = ok.to_numpy(zero_copy_only=False)
            after = np.cumsum(okn)  # events parsed up to and including each line
            bad_pos = np.flatnonzero(~okn)
            lost_pos = bad_pos[lost_ok.to_numpy(zero_copy_only=False)]
            lv = lost.filter(lost_ok)
            cpus = dec_to_i64(pc.struct_field(lv, [0]))
            cnts = dec_to_i64(pc.struct_field(lv, [1]))
            block.lost = [(int(c), int(k), int(seq0 + after[p])) for c, k, p in zip(cpus, cnts, lost_pos)]
            block.lost_rows = body_pos[lost_pos]
        rest = bad.filter(pc.invert(lost_ok))
        block.unparsed = len(rest)
        if len(rest):
            block.unparsed_example = rest[0].as_py()
    return block


def fill_pids(pid: np.ndarray, has_tgid: np.ndarray, tid: np.ndarray) -> None:
    """A thread's first events can print '(-------)' before its tgid is saved: give them the tgid that other
    lines of the same thread show (in place)."""
    known = pd.Series(pid, dtype=np.int64).where(has_tgid).groupby(tid).transform("max")
    fill = ~has_tgid & known.notna().to_numpy()
    pid[fill] = known.to_numpy()[fill].astype(np.int32)


def empty_events() -> pa.Table:
    """A common-column table with no rows."""
    return pa.table({
        "ts": pa.array([], pa.int64()), "seq": pa.array([], pa.int64()), "cpu": pa.array([], pa.int16()),
        "tid": pa.array([], pa.int32()), "pid": pa.array([], pa.int32()), "comm": pa.array([], pa.string()),
        "event": pa.array([], pa.string()), "body": pa.array([], pa.string()),
    })


def looks_like(head: str) -> bool:
    """True when the first lines look like tracefs output."""
    if head.lstrip().startswith("# tracer:"):
        return True
    lines = [ln for ln in head.splitlines()[:50] if ln and not ln.startswith("#")]
    rx = re.compile(HEADER_RE.replace("(?P<", "(?P<"))
    return any(rx.match(ln) for ln in lines[:20])
