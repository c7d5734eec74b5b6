"""Keyed hashing of kernel pointers, so captures identify VMs and roots without holding raw addresses.

The salt is random per capture and never written: hashes correlate within one capture only, and a raw
pointer cannot be recovered by trying the (small) space of kernel addresses.
"""
from __future__ import annotations

import hashlib
import os

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
