"""Capture directories: chunked Parquet tables plus meta.json, written safely and read with clear errors.

Files are created 0600 inside 0700 directories; chunks and meta are written to a temporary name and renamed,
so a reader never sees half a file and a killed writer leaves every finished chunk readable.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tdptrace import __version__
from tdptrace.capture.hashing import PointerHasher, scrub_table
from tdptrace.capture.schema import FORMAT_NAME, FORMAT_VERSION, META_FILE, TABLES, TITLES, unit
from tdptrace.errors import BadCapture, BadInput, OutputFull
from tdptrace.kernel.spte import Encoding
from tdptrace.safefs import DIR_MODE, Dir, UnsafePath, open_parent, untrusted_reason

STATUS_RECORDING = "recording"
STATUS_COMPLETE = "complete"


_FULL = (errno.ENOSPC, errno.EDQUOT)


def _full(path: Path, exc: OSError, capture: Path) -> OutputFull:
    """The one-line error for a write that found no space left (the temporary file is already gone). A caller
    that then removes the capture (an import) changes the hint to say so."""
    return OutputFull(f"no space left writing {path} ({os.strerror(exc.errno or errno.ENOSPC)})",
                      f"free space or choose another -o; everything written before is intact in {capture}")


def _is_full(exc: OSError) -> bool:
    """ENOSPC/EDQUOT, also when pyarrow reports it only in its message."""
    return exc.errno in _FULL or "No space left" in str(exc) or "quota" in str(exc).lower()


# Capture directories that a CaptureWriter of this process opened and has not closed complete (by device and
# inode): remove_capture deletes only these, so cleaning up after a failed write can never take a capture that
# somebody else (or an earlier, finished write) made.
_WRITTEN: set[tuple[int, int]] = set()


@dataclass
class CaptureMeta:
    """meta.json: what produced the capture and what it can and cannot tell."""

    source: dict[str, Any]
    kernel: dict[str, Any] = field(default_factory=dict)
    kvm: dict[str, Any] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    clock: dict[str, Any] = field(default_factory=dict)
    probes: dict[str, Any] = field(default_factory=lambda: {"attached": [], "missing": []})
    capabilities: dict[str, bool] = field(default_factory=dict)
    events: dict[str, Any] = field(default_factory=lambda: {"counts": {}, "unknown": {}})
    lost_events: dict[str, Any] = field(default_factory=lambda: {"total": 0, "per_cpu": {}})
    spte_encoding: str = "present-bit"
    status: str = STATUS_RECORDING
    tables: dict[str, dict[str, int]] = field(default_factory=dict)
    created_unix_ns: int = field(default_factory=time.time_ns)
    tool_version: str = __version__
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CaptureMeta":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "source" not in known:
            raise BadCapture("meta.json has no 'source'", "the capture is damaged; re-import or re-record it")
        for name, value in known.items():
            want = _META_TYPES.get(name)
            if want is not None and not isinstance(value, want):
                raise BadCapture(f"malformed meta.json: '{name}' is a {type(value).__name__}, not a {want.__name__}",
                                 "the capture is damaged; re-import or re-record it")
        for (name, key), want in _META_NESTED_TYPES.items():
            inner = known.get(name, {})
            if key in inner and not isinstance(inner[key], want):
                value = inner[key]
                raise BadCapture(f"malformed meta.json: '{name}.{key}' is a {type(value).__name__}",
                                 "the capture is damaged; re-import or re-record it")
        if known.get("spte_encoding", "present-bit") not in _SPTE_ENCODINGS:
            raise BadCapture(f"malformed meta.json: unknown spte_encoding '{str(known['spte_encoding'])[:20]}'",
                             "the capture is damaged, or written by a newer tdptrace")
        if any(not isinstance(v, dict) or not all(isinstance(n, int) for n in v.values())
               for v in known.get("tables", {}).values()):
            raise BadCapture("malformed meta.json: 'tables' entries must map to row and chunk counts",
                             "the capture is damaged; re-import or re-record it")
        return cls(**known)


# The JSON type of each meta.json field, checked on open so a damaged file fails there, in one clear line.
_META_TYPES: dict[str, type] = {
    "source": dict, "kernel": dict, "kvm": dict, "host": dict, "clock": dict, "probes": dict, "capabilities": dict,
    "events": dict, "lost_events": dict, "spte_encoding": str, "status": str, "tables": dict, "created_unix_ns": int,
    "tool_version": str, "format": str, "notes": list,
}
# Values inside those objects that readers use, by (field, key), when the key is present.
_META_NESTED_TYPES: dict[tuple[str, str], type | tuple[type, ...]] = {
    ("kernel", "release"): (str, type(None)), ("host", "hostname"): (str, type(None)), ("events", "counts"): dict,
    ("events", "unknown"): dict,
    ("events", "zap_totals"): dict, ("events", "retained_at_end"): dict, ("events", "retained_peak"): int,
    ("lost_events", "total"): int, ("lost_events", "per_cpu"): dict,
}
_SPTE_ENCODINGS = frozenset(e.value for e in Encoding)


def default_host() -> dict[str, Any]:
    """Host identity stored in every capture (fleets merge captures by it)."""
    u = os.uname()
    return {"hostname": socket.gethostname(), "machine": u.machine}


class CaptureWriter:
    """Writes a capture directory chunk by chunk; `close()` marks it complete.

    Use as a context manager; on an exception the capture is left with status 'recording' and every chunk
    written so far intact, which readers accept (with a note that it is incomplete).

    Every file goes through descriptors of the capture's own directories (safefs), and every chunk and meta.json
    through the pointer scrubber: whatever a writer hands in, no kernel address reaches the disk raw.
    `on_chunk(table, chunk)` is called with every chunk once it is on disk, exactly as written (the live
    stream hands these to its user, so what it yields is what the capture holds).
    """

    def __init__(self, path: str | Path, meta: CaptureMeta, overwrite: bool = False,
                 hasher: PointerHasher | None = None,
                 on_chunk: Callable[[str, pa.Table], None] | None = None) -> None:
        self.path = Path(path)
        self.meta = meta
        self.hasher = hasher or PointerHasher()
        self.on_chunk = on_chunk
        self._dir = _open_for_writing(self.path, overwrite)
        self._tables: dict[str, Dir] = {}
        self._chunks: dict[str, int] = {}
        self._rows: dict[str, int] = {}
        self._dropped_returns = 0
        self._lock = threading.Lock()  # two tables may be written at once (the assembler's last steps)
        try:
            self.write_meta()
        except OutputFull as exc:  # not even meta.json fits: leave nothing behind, and say so
            self.release()
            remove_capture(self.path)
            exc.hint = "free space or choose another -o; nothing was written"
            raise

    def write_meta(self) -> None:
        self.meta.tables = {name: {"rows": self._rows.get(name, 0), "chunks": n} for name, n in self._chunks.items()}
        d = json.loads(self.meta.to_json())
        if self._dropped_returns:
            d["notes"] = d.get("notes", []) + ["return codes not kept because they were kernel pointers: "
                                               f"{self._dropped_returns}"]
        data = json.dumps(self.hasher.scrub_json(d), indent=1, sort_keys=True).encode()
        try:
            self._dir.write_bytes(META_FILE, data)
        except OSError as exc:
            if _is_full(exc):
                raise _full(self.path / META_FILE, exc, self.path) from None
            raise

    def append(self, table: str, frame: pd.DataFrame | pa.Table) -> None:
        """Write one chunk of `table` (a frame holding the table's columns; extra columns are an error)."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table}")
        schema = TABLES[table]
        if isinstance(frame, pd.DataFrame):
            if len(frame) == 0:
                return
            missing = [f.name for f in schema if f.name not in frame.columns]
            extra = [c for c in frame.columns if c not in schema.names]
            if missing or extra:
                raise ValueError(f"{table}: missing columns {missing}, unexpected {extra}")
            tbl = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
        else:
            if frame.num_rows == 0:
                return
            tbl = frame.select(schema.names).cast(schema)
        tbl, dropped = scrub_table(tbl, self.hasher)
        with self._lock:
            self._dropped_returns += dropped
            d = self._table_dir(table)
        n = self._chunks.get(table, 0)  # one table is never written by two threads at once
        name = f"part-{n:06d}.parquet"
        dictionary, encodings = _encodings(schema)
        try:
            d.write_with(name, lambda f: pq.write_table(tbl, f, compression="zstd", compression_level=6,
                                                        use_dictionary=dictionary, column_encoding=encodings))
        except OSError as exc:  # pyarrow raises OSError subclasses; ENOSPC shows in errno or in the text
            if _is_full(exc):
                if exc.errno is None:
                    exc.errno = errno.ENOSPC
                raise _full(self.path / table / name, exc, self.path) from None
            raise
        with self._lock:
            self._chunks[table] = n + 1
            self._rows[table] = self._rows.get(table, 0) + tbl.num_rows
        if self.on_chunk is not None:
            self.on_chunk(table, tbl)

    def _table_dir(self, table: str) -> Dir:
        d = self._tables.get(table)
        if d is None:
            try:
                d = self._dir.make_private_dir(table, exist_ok=True)
            except OSError as exc:
                if _is_full(exc):
                    raise _full(self.path / table, exc, self.path) from None
                raise
            self._tables[table] = d
        return d

    def close(self) -> None:
        """Mark the capture complete (all tables flushed)."""
        self.meta.status = STATUS_COMPLETE
        try:
            self.write_meta()
            st = self._dir.fstat()
            _WRITTEN.discard((st.st_dev, st.st_ino))
        finally:
            self.release()

    def release(self) -> None:
        """Close the directory descriptors (the capture stays as it is)."""
        for d in self._tables.values():
            d.close()
        self._tables.clear()
        self._dir.close()

    def discard(self) -> None:
        """Remove what this writer wrote (a recording that never started), through its own descriptors."""
        self.release()
        remove_capture(self.path)

    def __enter__(self) -> "CaptureWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.write_meta()
        except OSError:
            pass  # the error that got us here is the one to report (often the same full disk)
        finally:
            self.release()


def _refuse(path: Path, what: str, hint: str = "refusing to replace it; choose another -o") -> UnsafePath:
    return UnsafePath(f"{path} {what}", hint)


def _open_for_writing(path: Path, overwrite: bool) -> Dir:
    """The capture directory, new (exclusive: of two writers racing for one name exactly one gets it) or, with
    overwrite, an existing capture of the caller's own emptied of its tables. Nothing is followed through a link
    and nothing is removed from a directory another user owns or can write to."""
    try:
        parent, name = open_parent(path)
    except UnsafePath:
        raise
    except BadInput as exc:
        if "does not exist" in exc.message:
            raise BadInput(f"directory {path.parent} does not exist", "create it first or choose another -o") from None
        raise
    with parent:
        try:
            st = parent.lstat(name)
        except OSError as exc:  # e.g. a name too long
            raise BadInput(f"cannot create {name[:60]}...: {os.strerror(exc.errno or 0)}",
                           "choose another -o") from None
        if st is not None:
            if not overwrite:
                raise BadInput(f"{path} already exists", "choose another -o or pass --force to replace it")
            if stat.S_ISLNK(st.st_mode):
                raise _refuse(path, "is a symbolic link")
            if not stat.S_ISDIR(st.st_mode):
                raise BadInput(f"{path} exists and is not a capture", "refusing to replace it; choose another -o")
            try:
                d = parent.subdir(name)
            except OSError:
                raise _refuse(path, "changed while being opened") from None
            try:
                why = untrusted_reason(d.fstat())
                if why:
                    raise _refuse(path, f"is {why}")
                mst = d.lstat(META_FILE)
                if mst is None or not stat.S_ISREG(mst.st_mode):
                    raise BadInput(f"{path} exists and is not a capture", "refusing to replace it; choose another -o")
                _clear_capture(d)
                os.fchmod(d.fd, DIR_MODE)
            except BaseException:
                d.close()
                raise
        else:
            try:
                d = parent.make_private_dir(name)
            except FileExistsError:
                raise BadInput(f"{path} already exists", "choose another -o or pass --force to replace it") from None
            except UnsafePath:
                raise _refuse(path, "was replaced by another user's directory while being created") from None
            except OSError as exc:  # a name too long, a read-only or full filesystem, no permission
                raise BadInput(f"cannot create {name[:60]}: {os.strerror(exc.errno)}" if exc.errno else
                               f"cannot create {name[:60]}", "choose another -o") from None
    st = d.fstat()
    _WRITTEN.add((st.st_dev, st.st_ino))
    return d


def _clear_capture(d: Dir) -> None:
    """Remove a capture's own entries (meta.json, its tables, temporary files) from directory `d`; anything
    else a person put there stays. Links are removed as links, never followed."""
    for entry in d.names():
        if entry in TABLES:
            d.remove_tree(entry)
        elif entry == META_FILE or (entry.startswith(".") and ".tmp" in entry):
            st = d.lstat(entry)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                d.unlink(entry)


# Free-text columns whose values are mostly unique: prefix-delta encoding beats a dictionary.
_FREE_TEXT = frozenset({"detail", "symbol"})


def _encodings(schema: pa.Schema) -> tuple[list[str], dict[str, str]]:
    """Parquet encodings per column: delta for integers (timestamps, sequence numbers, gfns and SPTE values
    change little from row to row: about 0.7 byte per SPTE row instead of 9), dictionaries for repeated
    strings, prefix deltas for free text. All are standard encodings that pyarrow, pandas and DuckDB read."""
    dictionary = [f.name for f in schema if pa.types.is_string(f.type) and f.name not in _FREE_TEXT]
    encodings = {f.name: "DELTA_BINARY_PACKED" for f in schema if pa.types.is_integer(f.type)}
    encodings.update({f.name: "DELTA_BYTE_ARRAY" for f in schema if f.name in _FREE_TEXT})
    return dictionary, encodings


def remove_capture(path: Path) -> bool:
    """Remove a capture that a CaptureWriter of this process left unfinished (its entries, then the directory if
    nothing else is left in it). Any other directory, a link, a finished capture or one written by someone else
    is left alone: returns False then."""
    try:
        parent, name = open_parent(path)
    except BadInput:
        return False
    with parent:
        st = parent.lstat(name)
        if st is None or not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) not in _WRITTEN:
            return False
        try:
            d = parent.subdir(name)
        except OSError:
            return False
        with d:
            dst = d.fstat()
            if (dst.st_dev, dst.st_ino) != (st.st_dev, st.st_ino) or untrusted_reason(dst):
                return False
            _clear_capture(d)
            left = d.names()
        _WRITTEN.discard((st.st_dev, st.st_ino))
        if not left:
            os.rmdir(name, dir_fd=parent.fd)
    return True


class Capture:
    """A capture opened for analysis: meta plus lazily loaded pandas frames, one per table."""

    def __init__(self, path: Path, meta: CaptureMeta) -> None:
        self.path = path
        self.meta = meta
        self._frames: dict[str, pd.DataFrame] = {}

    @classmethod
    def open(cls, path: str | Path) -> "Capture":
        p = Path(path)
        if not p.exists():
            raise BadCapture(f"{p}: no such capture",
                             "give the directory written by 'tdptrace record' or 'tdptrace import'")
        if not p.is_dir():
            raise BadCapture(f"{p} is a file, not a capture directory",
                             "import trace text first: tdptrace import FILE -o CAPTURE.tdp")
        mp = p / META_FILE
        if not mp.exists():
            raise BadCapture(f"{p}: meta.json is missing", "this is not a tdptrace capture, or it is damaged")
        try:
            d = json.loads(mp.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadCapture(f"{mp}: unreadable meta.json ({exc.__class__.__name__})", "the capture is damaged")
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise BadCapture(f"{mp}: not a tdptrace capture", "open a directory written by tdptrace")
        if d.get("format_version") != FORMAT_VERSION:
            raise BadCapture(f"{p}: capture format version {d.get('format_version')} is not supported "
                             f"(this tdptrace reads version {FORMAT_VERSION})", "use a matching tdptrace version")
        try:
            meta = CaptureMeta.from_dict(d)
        except TypeError as exc:
            raise BadCapture(f"{mp}: malformed meta.json ({exc})", "the capture is damaged")
        cap = cls(p, meta)
        for name, info in (meta.tables or {}).items():
            if name in TABLES and info.get("chunks", 0) > 0 and not (p / name).is_dir():
                raise BadCapture(f"{p}: table '{name}' is missing", "the capture is damaged; re-import or re-record it")
        return cap

    @property
    def complete(self) -> bool:
        return self.meta.status == STATUS_COMPLETE

    def has(self, table: str) -> bool:
        d = self.path / table
        return d.is_dir() and any(d.glob("part-*.parquet"))

    def table(self, name: str, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """The table as a DataFrame (empty with the right columns when absent): the columns and pandas dtypes
        of docs/api.md "Frame columns" (columns_doc(name) lists them)."""
        if name not in TABLES:
            raise KeyError(name)
        cols = list(columns) if columns is not None else None
        key = name if cols is None else f"{name}:{','.join(cols)}"
        if key in self._frames:
            return self._frames[key]
        schema = TABLES[name]
        files = sorted((self.path / name).glob("part-*.parquet")) if (self.path / name).is_dir() else []
        expected = int((self.meta.tables.get(name) or {}).get("chunks", 0) or 0)
        if len(files) < expected or any(not f.is_file() for f in files):
            raise BadCapture(f"{self.path}: table '{name}' is damaged ({len([f for f in files if f.is_file()])} "
                             f"of {expected} chunk files)", "re-import or re-record the capture")
        if files:
            want = pa.schema([schema.field(c) for c in cols]) if cols is not None else schema
            try:
                tbl = pa.concat_tables([_read_chunk(f, want) for f in files])
            except (pa.ArrowException, OSError, ValueError) as exc:
                why = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
                raise BadCapture(f"{self.path}: table '{name}' is damaged ({why})",
                                 "re-import or re-record the capture")
        else:
            sch = schema if cols is None else pa.schema([schema.field(c) for c in cols])
            tbl = sch.empty_table()
        df = _to_frame(tbl, schema)
        why = _value_problem(name, df) or (self._span_ref_problem(df) if name == "yields" else None)
        if why:
            raise BadCapture(f"{self.path}: table '{name}' is damaged ({why})", "re-import or re-record the capture")
        self._frames[key] = df
        return df

    def _span_ref_problem(self, yields: pd.DataFrame) -> str | None:
        if "span_id" not in yields.columns or not yields["span_id"].notna().any():
            return None
        ids = self.table("spans", ["span_id"])["span_id"].to_numpy()
        refs = yields["span_id"].dropna().to_numpy(np.int64)
        bad = ~np.isin(refs, ids)
        return f"yield point in span {int(refs[bad][0])}, which does not exist" if bad.any() else None

    sptes = cached_property(lambda self: self.table("sptes"))
    spans = cached_property(lambda self: self.table("spans"))
    yields = cached_property(lambda self: self.table("yields"))
    page_tables = cached_property(lambda self: self.table("page_tables"))
    markers = cached_property(lambda self: self.table("markers"))
    lost = cached_property(lambda self: self.table("lost"))
    stacks = cached_property(lambda self: self.table("stacks"))
    waits = cached_property(lambda self: self.table("waits"))


def _read_chunk(f: Path, want: pa.Schema) -> pa.Table:
    """One chunk file as exactly the columns and types of `want`; ValueError (saying which column and how)
    for a chunk of another table, a dropped or retyped column, or nulls where the format has none."""
    pf = pq.ParquetFile(f)
    have = pf.schema_arrow
    for fld in want:
        if fld.name not in have.names:
            raise ValueError(f"{f.name}: column '{fld.name}' is missing")
    tbl = pf.read(columns=want.names)
    cols = []
    for fld in want:
        col = tbl.column(fld.name)
        if col.type != fld.type:
            try:
                col = col.cast(fld.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                raise ValueError(f"{f.name}: column '{fld.name}' is {col.type}, not {fld.type}") from None
        if not fld.nullable and col.null_count:
            raise ValueError(f"{f.name}: column '{fld.name}' has {col.null_count} missing values")
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=want)


# Ranges the analysis relies on (sums of times must not overflow int64, (tid, seq) pack into one int64 key, the
# span tree must be a tree); anything outside them is damage, reported as such rather than met half-way.
_MAX_TS = 1 << 62
_MAX_SEQ = 1 << 39
_TID_RANGE = (-1, 1 << 23)
_MAX_DEPTH = 4096


def _out_of(df: pd.DataFrame, col: str, lo: int, hi: int) -> str | None:
    if col not in df.columns:
        return None
    v = df[col].dropna().to_numpy(np.int64) if df[col].hasnans else df[col].to_numpy(np.int64)
    bad = (v < lo) | (v >= hi)
    return f"{col} {int(v[bad][0])} is out of range" if bad.any() else None


def _value_problem(name: str, df: pd.DataFrame) -> str | None:
    """Why the values of a loaded table cannot be what a tdptrace writer wrote, or None."""
    if df.empty:
        return None
    for col in ("ts", "end_ts", "ret_ts"):
        why = _out_of(df, col, 0, _MAX_TS)
        if why:
            return why
    why = _out_of(df, "seq", 0, _MAX_SEQ) or _out_of(df, "tid", *_TID_RANGE)
    if why or name != "spans":
        return why
    if "complete" in df.columns:
        done = df["complete"].to_numpy(bool)
        for col in ("end_ts", "duration_ns"):
            if col in df.columns and df[col].isna().to_numpy()[done].any():
                return f"a complete span has no {col}"
        if "end_ts" in df.columns and "ts" in df.columns:
            end = df["end_ts"].to_numpy(np.int64, na_value=0)[done]
            if (end < df["ts"].to_numpy(np.int64)[done]).any():
                return "a span ends before it starts"
    if "span_id" in df.columns:
        ids = df["span_id"].to_numpy(np.int64)
        if (ids < 0).any() or len(np.unique(ids)) != len(ids):
            return "span ids are not unique non-negative numbers"
        if "parent_id" in df.columns and "depth" in df.columns:
            depth = df["depth"].to_numpy(np.int64)
            if (depth < 0).any() or (depth > _MAX_DEPTH).any():
                return "span depth out of range"
            has = df["parent_id"].notna().to_numpy()
            par = df["parent_id"].to_numpy(np.int64, na_value=-1)[has]
            pos = pd.Index(ids).get_indexer(par)
            if (pos < 0).any():
                return f"parent span {int(par[pos < 0][0])} does not exist"
            if (depth[pos] >= depth[has]).any():  # a parent is always shallower: no span is its own ancestor
                return "span nesting is not a tree"
    return None


def dtype_name(f: pa.Field) -> str:
    """The pandas dtype a reader gives column `f` (the conversion of _to_frame), by name."""
    if pa.types.is_string(f.type):
        return "string"
    if f.nullable and f.type in _NULLABLE:
        return str(_NULLABLE[f.type])
    return str(np.dtype(f.type.to_pandas_dtype()))


def columns_doc(table: str) -> str:
    """One line naming every column of `table` with its pandas dtype and unit (for docstrings)."""
    return "columns: " + ", ".join(f"{f.name} ({dtype_name(f)}{', ' + unit(f.name) if unit(f.name) else ''})"
                                   for f in TABLES[table])


def table_frame(name: str, tbl: pa.Table | None = None) -> pd.DataFrame:
    """Table `name` of a capture as the reader gives it (the dtypes of docs/api.md): from an Arrow table with the
    schema's columns, or empty."""
    schema = TABLES[name]
    return _to_frame(schema.empty_table() if tbl is None else tbl, schema)


_NULLABLE = {
    pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(), pa.uint8(): pd.UInt8Dtype(), pa.uint32(): pd.UInt32Dtype(),
    pa.uint64(): pd.UInt64Dtype(), pa.bool_(): pd.BooleanDtype(),
}


def _to_frame(tbl: pa.Table, schema: pa.Schema) -> pd.DataFrame:
    """Arrow -> pandas: non-null columns become plain numpy; nullable ints/bools become pandas nullable dtypes
    (so a null stays null instead of turning the column into floats); strings become 'string'."""

    def mapper(t: pa.DataType):
        if pa.types.is_string(t):
            return pd.StringDtype()
        return _NULLABLE.get(t)

    df = tbl.to_pandas(types_mapper=mapper)
    for name in tbl.column_names:
        f = schema.field(name)
        if not f.nullable and f.type in _NULLABLE:
            df[name] = df[name].to_numpy(dtype=f.type.to_pandas_dtype())
    return df


for _table in TABLES:  # each table attribute's docstring: what a row is and every column (schema-derived)
    getattr(Capture, _table).__doc__ = f"{TITLES[_table]}; {columns_doc(_table)}."
