"""Scan a capture for raw kernel addresses: every integer and string cell of every table, and meta.json."""
from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq

KERNEL_HEX = re.compile(r"(?i)ffff[89a-f][0-9a-f]{11}")  # no boundaries: back-to-back addresses count too
KERNEL_DEC = re.compile(r"(?<![0-9])[0-9]{19,20}(?![0-9])")
KERNEL_MIN = 0xFFFF800000000000
SPTE_COLUMNS = {"old_spte", "new_spte"}  # SPTE values, not pointers (bit 63 is an SPTE flag)


def scan_for_kernel_addresses(cap: Path) -> list[str]:
    """Every integer and string cell of every table, and meta.json: where a kernel address shows."""
    found = []
    text = (cap / "meta.json").read_text()
    found += [f"meta.json: {m}" for m in KERNEL_HEX.findall(text)]
    found += [f"meta.json: {m}" for m in KERNEL_DEC.findall(text) if int(m) >= KERNEL_MIN]
    for f in sorted(cap.glob("*/part-*.parquet")):
        tbl = pq.read_table(f)
        for name in tbl.column_names:
            col = tbl.column(name)
            t = str(col.type)
            if t.startswith(("int", "uint")) and name not in SPTE_COLUMNS:
                vals = col.to_pylist()
                # as unsigned: the kernel half, except small negatives (-1, -errno), which are not pointers
                bad = [v for v in vals if v is not None and KERNEL_MIN <= (v & 0xFFFFFFFFFFFFFFFF) < 2**64 - 4096]
                found += [f"{f.parent.name}.{name}: {hex(v & 0xFFFFFFFFFFFFFFFF)}" for v in bad[:3]]
            elif t in ("string", "large_string"):
                for v in col.to_pylist():
                    if v and (KERNEL_HEX.search(v) or any(int(m) >= KERNEL_MIN for m in KERNEL_DEC.findall(v))):
                        found.append(f"{f.parent.name}.{name}: {v[:60]}")
                        break
    return found


def addresses_in(text: str) -> list[str]:
    """Kernel addresses (hex anywhere, decimal >= the kernel base) in any printed text."""
    return KERNEL_HEX.findall(text) + [m for m in KERNEL_DEC.findall(text) if int(m) >= KERNEL_MIN]
