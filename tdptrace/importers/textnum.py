"""Vectorised number parsing of Arrow string arrays (hex and decimal) without a Python loop per value."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tdptrace.errors import BadInput

_LUT = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _LUT[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _LUT[_c] = 10 + _i
_SHIFTS = (np.arange(15, -1, -1, dtype=np.uint64) * np.uint64(4))


def hex_to_u64(arr: pa.Array | pa.ChunkedArray, what: str = "value") -> np.ndarray:
    """Parse hex strings (with or without 0x) into uint64; nulls become 0. Raises BadInput on bad digits."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    arr = pc.fill_null(arr, "0")
    if pc.any(pc.starts_with(arr, "0x")).as_py() or pc.any(pc.starts_with(arr, "0X")).as_py():
        arr = pc.replace_substring_regex(arr, pattern="^0[xX]", replacement="")
    lengths = pc.utf8_length(arr).to_numpy(zero_copy_only=False)
    if lengths.max(initial=0) > 16 or lengths.min(initial=1) == 0:
        raise BadInput(f"a {what} is not a 64-bit hex number", "the trace line is damaged")
    padded = pc.utf8_lpad(arr, width=16, padding="0")
    padded = pa.array(padded) if not isinstance(padded, pa.Array) else padded
    offsets = np.frombuffer(padded.buffers()[1], dtype=np.int32)[padded.offset: padded.offset + n + 1]
    raw = np.frombuffer(padded.buffers()[2], dtype=np.uint8)[offsets[0]: offsets[0] + 16 * n]
    nib = _LUT[raw].reshape(n, 16)
    if (nib == 255).any():
        raise BadInput(f"a {what} is not a hex number", "the trace line is damaged")
    return np.bitwise_or.reduce(nib.astype(np.uint64) << _SHIFTS, axis=1)


def dec_to_i64(arr: pa.Array | pa.ChunkedArray, what: str = "value") -> np.ndarray:
    """Parse decimal strings into int64; nulls become 0."""
    try:
        return pc.fill_null(pc.cast(arr, pa.int64()), 0).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise BadInput(f"a {what} is not a decimal number", "the trace line is damaged")


def narrow(values: np.ndarray, dtype: type, what: str) -> np.ndarray:
    """int64 values as the capture's narrower column type; BadInput instead of a silent wrap-around."""
    info = np.iinfo(dtype)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise BadInput(f"a {what} is out of range ({values.min()}..{values.max()})", "the trace line is damaged")
    return values.astype(dtype)


def auto_to_u64(arr: pa.Array | pa.ChunkedArray, what: str = "value") -> np.ndarray:
    """Parse kprobe argument values: '0x..' hex, or decimal (possibly negative, stored two's complement)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    arr = pc.fill_null(arr, "0")
    is_hex = pc.starts_with(arr, "0x").to_numpy(zero_copy_only=False)
    out = np.zeros(len(arr), dtype=np.uint64)
    if is_hex.any():
        out[is_hex] = hex_to_u64(arr.filter(pa.array(is_hex)), what)
    if (~is_hex).any():
        # Decimal: negative values as two's complement, and values from 2^63 up (a pointer printed by a
        # '%si:u64' kprobe fetch, e.g. root=18446612685283207810) as the 64-bit value they are.
        dec = arr.filter(pa.array(~is_hex))
        neg = pc.starts_with(dec, "-").to_numpy(zero_copy_only=False)
        vals = np.zeros(len(dec), dtype=np.uint64)
        try:
            if (~neg).any():
                vals[~neg] = pc.cast(dec.filter(pa.array(~neg)), pa.uint64()).to_numpy(zero_copy_only=False)
            if neg.any():
                vals[neg] = pc.cast(dec.filter(pa.array(neg)), pa.int64()).to_numpy(zero_copy_only=False).view(
                    np.uint64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise BadInput(f"a {what} is neither hex nor a 64-bit decimal number", "the trace line is damaged")
        out[~is_hex] = vals
    return out


def seconds_to_ns(sec: pa.Array, frac: pa.Array) -> np.ndarray:
    """'123' + '456789' (tracefs '123.456789') -> nanoseconds; the fraction may have 1..9 digits."""
    s = dec_to_i64(sec, "timestamp")
    f = dec_to_i64(frac, "timestamp")
    digits = pc.utf8_length(frac).to_numpy(zero_copy_only=False)
    if digits.size and digits.max() > 9:
        raise BadInput("a timestamp has more than 9 fractional digits", "the trace line is damaged")
    scale = np.power(np.int64(10), (9 - digits).astype(np.int64))
    return s * np.int64(1_000_000_000) + f * scale
