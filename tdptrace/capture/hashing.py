"""Keyed hashing of kernel pointers, so captures identify VMs and roots without holding raw addresses.

The salt is random per capture and never written: hashes correlate within one capture only, and a raw
pointer cannot be recovered by trying the (small) space of kernel addresses.

`scrub_table` and `PointerHasher.scrub_json` are the last line: CaptureWriter runs every chunk and meta.json
through them, so a kernel address that a parser left in any text column, name or note is stored as its keyed
hash whatever wrote it.
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# The lowest kernel (upper canonical half) address with 4-level paging; everything from here to 2^64 - 1.
KERNEL_BASE = 0xFFFF800000000000
# A kernel virtual address as tracing prints it, hex with or without 0x: 0xffff8880..., ffffffffc0a1...
_HEX = r"ffff[89a-f][0-9a-f]{11}"
# Decimal numbers that may be 64-bit pointers (>= 2^63 has 19 or 20 digits; longer runs hide two side by side).
_DEC_MIN_DIGITS = 19
# RE2 prefilter for pyarrow.compute (no look-arounds there): a row that cannot match is never looked at again.
_PREFILTER = f"(?i){_HEX}|[0-9]{{{_DEC_MIN_DIGITS}}}"
# The exact pattern: no boundaries on the hex form, so two addresses printed back to back are both found.
_TOKEN = re.compile(f"(?i)(?:0x)?({_HEX})|([0-9]{{{_DEC_MIN_DIGITS},}})")
_LOOKS_LIKE_ADDRESS = re.compile(f"(?i){_HEX}")
# A function's return value that is a kernel pointer, seen as a signed 64-bit integer: [-2^47, -4096]
# (-4095..-1 are errno values).
_RET_POINTER_MIN, _RET_POINTER_MAX = -(1 << 47), -4096


class PointerHasher:
    """Maps kernel pointer values to 16-hex-digit keyed BLAKE2b digests (vectorised over unique values)."""

    def __init__(self, salt: bytes | None = None) -> None:
        self._salt = salt if salt is not None else os.urandom(16)

    def one(self, value: int) -> str:
        """Hash one pointer value (never a string that itself looks like a kernel address)."""
        h = hashlib.blake2b(int(value).to_bytes(8, "little", signed=False), digest_size=8, key=self._salt)
        return _not_address(h.hexdigest())

    def text(self, token: str) -> str:
        """Hash a run of digits too long to be one pointer (several printed together)."""
        return _not_address(hashlib.blake2b(token.encode(), digest_size=8, key=self._salt, person=b"run").hexdigest())

    def column(self, values: pd.Series | np.ndarray) -> pd.Series:
        """Hash a column of pointers (nullable); 0 and nulls stay null. Cost is per unique value."""
        s = pd.Series(values)
        if s.empty:
            return pd.Series([], dtype="string")
        mask = s.notna()
        uniq = pd.unique(s[mask])
        mapping = {v: (self.one(int(v)) if int(v) != 0 else None) for v in uniq}
        out = s.map(mapping)
        return out.astype("string")

    # Kept for callers that scrub a column themselves (marker details); the writer scrubs everything anyway.
    KERNEL_ADDR = _TOKEN

    def scrub_str(self, text: str) -> str:
        """`text` with every kernel address in it (hex or decimal, whatever surrounds it) as 'ptr:<hash>'."""
        return _TOKEN.sub(self._replace, text)

    def _replace(self, m: re.Match) -> str:
        hexa, dec = m.group(1), m.group(2)
        if hexa is not None:
            return "ptr:" + self.one(int(hexa, 16))
        if len(dec) <= 20:
            v = int(dec)
            return "ptr:" + self.one(v) if (1 << 63) <= v < (1 << 64) else dec
        return "ptr:" + self.text(dec)

    def scrub_text(self, text: pd.Series) -> pd.Series:
        """Replace kernel addresses inside free text by 'ptr:<hash>' (pandas in, pandas out)."""
        s = pd.Series(text, dtype="string")
        arr = pa.array(s.to_numpy(dtype=object, na_value=None), type=pa.string())
        out = self.scrub_array(arr)
        if out is arr:
            return s
        return pd.Series(out.to_pandas(types_mapper=lambda t: pd.StringDtype()), index=s.index)

    def scrub_array(self, arr: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        """The same strings with kernel addresses hashed; the input itself when none holds one."""
        has = _candidates(arr)
        if not pc.any(has).as_py():
            return arr
        flat = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
        mask = has.combine_chunks() if isinstance(has, pa.ChunkedArray) else has
        hits = pc.filter(flat, mask).to_pylist()
        done: dict[str, str] = {}
        new = [done[v] if v in done else done.setdefault(v, self.scrub_str(v)) for v in hits]
        return pc.replace_with_mask(flat, mask, pa.array(new, type=flat.type))

    def scrub_json(self, value: Any) -> Any:
        """A JSON-able value (meta.json) with addresses in every string, key and out-of-range integer hashed."""
        if isinstance(value, str):
            return self.scrub_str(value) if _might_hold(value) else value
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return "ptr:" + self.one(value) if (1 << 63) <= value < (1 << 64) else value
        if isinstance(value, dict):
            return {self.scrub_json(str(k)) if not isinstance(k, str) else self.scrub_json(k): self.scrub_json(v)
                    for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.scrub_json(v) for v in value]
        return value


try:
    from tdptrace.capture import _address_scan  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: the regex prefilter alone
    _address_scan = None


def _candidates(arr: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Rows that may hold a kernel address (_PREFILTER), nulls never: one C pass per chunk where the compiled
    prefilter is built, else the regex."""
    if _address_scan is None or not pa.types.is_string(arr.type) or os.environ.get("TDPTRACE_PURE", "") not in ("", "0"):
        return pc.fill_null(pc.match_substring_regex(arr, _PREFILTER), False)
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    out = []
    for c in chunks:
        if not len(c):
            out.append(pa.array([], pa.bool_()))
            continue
        _, offsets, data = c.buffers()
        mask = np.frombuffer(_address_scan.rows(offsets, data if data is not None else b"", c.offset, len(c)),
                             dtype=np.bool_)
        if c.null_count:
            mask = mask & c.is_valid().to_numpy(zero_copy_only=False)
        out.append(pa.array(mask))
    return pa.chunked_array(out, pa.bool_()) if isinstance(arr, pa.ChunkedArray) else out[0]


def _might_hold(text: str) -> bool:
    return bool(_TOKEN.search(text))


def _not_address(digest: str) -> str:
    """A digest that starts like a kernel address would be hashed again by the scrubber: move it off."""
    return "e" + digest[1:] if _LOOKS_LIKE_ADDRESS.match(digest) else digest


def pointer_returns(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Mask of integer return values that are kernel pointers (never stored: a return code is not one)."""
    return pc.fill_null(pc.and_(pc.greater_equal(values, _RET_POINTER_MIN), pc.less_equal(values, _RET_POINTER_MAX)),
                        False)


def scrub_table(tbl: pa.Table, hasher: PointerHasher) -> tuple[pa.Table, int]:
    """Every string column with kernel addresses hashed, pointer-valued 'ret' columns nulled; returns the table
    and how many return values were dropped."""
    dropped = 0
    for i, f in enumerate(tbl.schema):
        col = tbl.column(i)
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            new = hasher.scrub_array(col)
        elif f.name == "ret" and pa.types.is_integer(f.type) and pa.types.is_signed_integer(f.type) \
                and f.type.bit_width == 64:
            mask = pointer_returns(col)
            n = pc.sum(mask).as_py() or 0
            if not n:
                continue
            dropped += n
            new = pc.if_else(mask, pa.scalar(None, type=f.type), col)
        else:
            continue
        if new is not col:
            tbl = tbl.set_column(i, f, new)
    return tbl, dropped


__all__ = ["KERNEL_BASE", "PointerHasher", "pointer_returns", "scrub_table"]
