"""Keyed hashing of kernel pointers, so captures identify VMs and roots without holding raw addresses.

The salt is random per capture and never written: hashes correlate within one capture only, and a raw
pointer cannot be recovered by trying the (small) space of kernel addresses.
"""
from __future__ import annotations

import hashlib
import os
import re

import numpy as np
import pandas as pd


class PointerHasher:
    """Maps kernel pointer values to 16-hex-digit keyed BLAKE2b digests (vectorised over unique values)."""

    def __init__(self, salt: bytes | None = None) -> None:
        self._salt = salt if salt is not None else os.urandom(16)

    def one(self, value: int) -> str:
        """Hash one pointer value."""
        h = hashlib.blake2b(int(value).to_bytes(8, "little", signed=False), digest_size=8, key=self._salt)
        return h.hexdigest()

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

    # A kernel virtual address as tracing prints it: 0xffff8880..., ffffffffc0a1... (upper canonical half).
    KERNEL_ADDR = re.compile(r"(?<![0-9a-fA-Fx])(?:0x)?ffff[89a-f][0-9a-f]{11}(?![0-9a-fA-F])", re.I)

    def scrub_text(self, text: pd.Series) -> pd.Series:
        """Replace kernel addresses inside free text (marker details) by 'ptr:<hash>'."""
        import pyarrow as pa
        import pyarrow.compute as pc

        s = pd.Series(text, dtype="string")
        arr = pa.array(s.to_numpy(dtype=object, na_value=None), type=pa.string())
        # Cheap RE2 prefilter over all rows; the exact pattern (with boundaries) runs only where it may match.
        has = pd.Series(pc.fill_null(pc.match_substring_regex(arr, "(?i)ffff[89a-f][0-9a-f]{11}"), False)
                        .to_numpy(zero_copy_only=False), index=s.index)
        if not has.any():
            return s
        sub = s[has].str.replace(self.KERNEL_ADDR, lambda m: "ptr:" + self.one(int(m.group(0), 16)), regex=True)
        out = s.copy()
        out[has] = sub
        return out
