"""Capture directories: chunked Parquet tables plus meta.json, written safely and read with clear errors.

Files are created 0600 inside 0700 directories; chunks and meta are written to a temporary name and renamed,
so a reader never sees half a file and a killed writer leaves every finished chunk readable.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tdptrace import __version__
from tdptrace.capture.schema import FORMAT_NAME, FORMAT_VERSION, META_FILE, TABLES
from tdptrace.errors import BadCapture, BadInput, OutputFull
from tdptrace.kernel.spte import Encoding

STATUS_RECORDING = "recording"
STATUS_COMPLETE = "complete"


_FULL = (errno.ENOSPC, errno.EDQUOT)


def _full(path: Path, exc: OSError) -> OutputFull:
    """The one-line error for a write that found no space left (the temporary file is already gone)."""
    return OutputFull(f"no space left writing {path} ({os.strerror(exc.errno)})",
                      f"free space or choose another -o; everything written before is intact in {path.parent}")


def _write_private(path: Path, data: bytes) -> None:
    """Write bytes to path atomically with mode 0600."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        if exc.errno in _FULL:
            raise _full(path, exc) from None
        raise
    os.replace(tmp, path)


def _mkdir_private(path: Path) -> None:
    path.mkdir(mode=0o700, parents=False, exist_ok=True)
    os.chmod(path, 0o700)


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
    """

    def __init__(self, path: str | Path, meta: CaptureMeta, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.meta = meta
        try:
            replacing = self.path.exists()
        except OSError as exc:  # e.g. a name too long: pathlib raises instead of answering False
            raise BadInput(f"cannot create {self.path.name[:60]}...: {os.strerror(exc.errno or 0)}",
                           "choose another -o") from None
        if replacing:
            if not overwrite:
                raise BadInput(f"{self.path} already exists", "choose another -o or pass --force to replace it")
            if not (self.path / META_FILE).exists():
                raise BadInput(f"{self.path} exists and is not a capture", "refusing to replace it; choose another -o")
            remove_capture(self.path)
        parent = self.path.parent
        if not parent.exists():
            raise BadInput(f"directory {parent} does not exist", "create it first or choose another -o")
        try:  # exclusive: of two writers racing for the same new path, exactly one gets it
            self.path.mkdir(mode=0o700, exist_ok=replacing)
        except FileExistsError:
            raise BadInput(f"{self.path} already exists", "choose another -o or pass --force to replace it")
        except OSError as exc:  # a name too long, a read-only or full filesystem, no permission
            raise BadInput(f"cannot create {self.path.name[:60]}: {os.strerror(exc.errno)}" if exc.errno else
                           f"cannot create {self.path.name[:60]}", "choose another -o") from None
        os.chmod(self.path, 0o700)
        self._chunks: dict[str, int] = {}
        self._rows: dict[str, int] = {}
        self.write_meta()

    def write_meta(self) -> None:
        self.meta.tables = {name: {"rows": self._rows.get(name, 0), "chunks": n} for name, n in self._chunks.items()}
        _write_private(self.path / META_FILE, self.meta.to_json().encode())

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
        d = self.path / table
        _mkdir_private(d)
        n = self._chunks.get(table, 0)
        final = d / f"part-{n:06d}.parquet"
        tmp = d / f".part-{n:06d}.parquet.tmp"
        dictionary, encodings = _encodings(schema)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
            pq.write_table(tbl, tmp, compression="zstd", compression_level=6, use_dictionary=dictionary,
                           column_encoding=encodings)
        except OSError as exc:  # pyarrow raises OSError subclasses; ENOSPC shows in errno or in the text
            tmp.unlink(missing_ok=True)
            if exc.errno in _FULL or "No space left" in str(exc) or "quota" in str(exc).lower():
                if exc.errno is None:
                    exc.errno = errno.ENOSPC
                raise _full(final, exc) from None
            raise
        os.replace(tmp, final)
        self._chunks[table] = n + 1
        self._rows[table] = self._rows.get(table, 0) + tbl.num_rows

    def close(self) -> None:
        """Mark the capture complete (all tables flushed)."""
        self.meta.status = STATUS_COMPLETE
        self.write_meta()

    def __enter__(self) -> "CaptureWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.write_meta()


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


def remove_capture(path: Path) -> None:
    for table in TABLES:
        d = path / table
        if d.is_dir():
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    (path / META_FILE).unlink(missing_ok=True)


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
            raise BadCapture(f"{p}: no such capture", "give the directory written by 'tdptrace record' or 'tdptrace import'")
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
        """The table as a DataFrame (empty with the right columns when absent)."""
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
            try:
                parts = [pq.read_table(f, columns=cols, schema=schema) for f in files]
                tbl = pa.concat_tables(parts)
            except (pa.ArrowException, OSError) as exc:
                raise BadCapture(f"{self.path}: table '{name}' is damaged ({str(exc).splitlines()[0][:120]})",
                                 "re-import or re-record the capture")
        else:
            sch = schema if cols is None else pa.schema([schema.field(c) for c in cols])
            tbl = sch.empty_table()
        df = _to_frame(tbl, schema)
        self._frames[key] = df
        return df

    @cached_property
    def sptes(self) -> pd.DataFrame:
        return self.table("sptes")

    @cached_property
    def spans(self) -> pd.DataFrame:
        return self.table("spans")

    @cached_property
    def yields(self) -> pd.DataFrame:
        return self.table("yields")

    @cached_property
    def page_tables(self) -> pd.DataFrame:
        return self.table("page_tables")

    @cached_property
    def markers(self) -> pd.DataFrame:
        return self.table("markers")

    @cached_property
    def lost(self) -> pd.DataFrame:
        return self.table("lost")



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
