"""Kernel addresses -> 'symbol+0xoff/0xsize [module]', the way tracefs prints a kprobe location.

trace-cmd and perf print kprobe locations as raw addresses; /proc/kallsyms of the traced host (or the copy
a trace.dat holds, `trace-cmd dump --kallsyms`) names them. Lookup is a vectorised bisect (numpy searchsorted)
over the sorted address table.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tdptrace.errors import BadInput
from tdptrace.importers.textnum import hex_to_u64

# "ffffffffc0a1b2c0 t tdp_mmu_zap_leafs\t[kvm]"; only text symbols name code addresses.
_LINE_RE = r"^(?P<addr>[0-9a-fA-F]{1,16})\s+(?P<type>[tTwW])\s+(?P<name>\S+)(?:\s+\[(?P<mod>[^\]]+)\])?\s*$"
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


@dataclass(frozen=True)
class Kallsyms:
    """Text symbols sorted by address; `ends[i]` is where symbol i stops (the next symbol's address)."""

    addrs: np.ndarray  # uint64, strictly increasing
    ends: np.ndarray  # uint64
    names: pa.Array  # string
    modules: pa.Array  # string, "" for the core kernel

    def __len__(self) -> int:
        return len(self.addrs)

    def resolve(self, addrs: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """(location 'sym+0xoff/0xsize [mod]' or null where unknown, bare symbol or null) for each address."""
        addrs = np.asarray(addrs, dtype=np.uint64)
        i = np.searchsorted(self.addrs, addrs, side="right") - 1
        known = (i >= 0) & (addrs != 0)
        i = np.where(known, i, 0)
        if len(self.addrs):
            known &= addrs < self.ends[i]
        else:
            known[:] = False
        take = pa.array(i)
        names = self.names.take(take)
        mods = self.modules.take(take)
        off = hex_strings(addrs - np.where(known, self.addrs[i] if len(self.addrs) else 0, 0))
        size = hex_strings(np.where(known, (self.ends[i] - self.addrs[i]) if len(self.addrs) else 0, 0))
        mod = pc.if_else(pc.equal(mods, ""), "", pc.binary_join_element_wise(" [", mods, "]", ""))
        loc = pc.binary_join_element_wise(names, "+0x", off, "/0x", size, mod, "")
        mask = pa.array(~known)
        null = pa.scalar(None, pa.string())
        return pc.if_else(mask, null, loc), pc.if_else(mask, null, names)


def hex_strings(values: np.ndarray) -> pa.Array:
    """uint64 -> lower-case hex digits without leading zeros ('0' for 0), vectorised."""
    v = np.asarray(values, dtype=np.uint64)
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    nib = ((v[:, None] >> shifts) & np.uint64(0xF)).astype(np.uint8)
    raw = _HEX[nib].reshape(-1).tobytes()
    arr = pa.Array.from_buffers(pa.binary(16), len(v), [None, pa.py_buffer(raw)]).cast(pa.string())
    trimmed = pc.utf8_ltrim(arr, characters="0")
    return pc.if_else(pc.equal(trimmed, ""), "0", trimmed)


# Limits far above any real kallsyms (KSYM_NAME_LEN is 512 since Linux 6.1, 128 before; /proc/kallsyms of a
# distribution kernel with its modules is 10-20 MB), so a damaged or hostile file is refused before it costs.
MAX_NAME = 1024
MAX_BYTES = 256 << 20


def parse_kallsyms(text: str, source: str = "kallsyms") -> Kallsyms:
    """Parse /proc/kallsyms text (other lines, e.g. trace-cmd's section headers, are skipped)."""
    lines = pa.array(text.splitlines(), type=pa.string())
    long = pc.greater(pc.binary_length(lines), MAX_NAME + 64)
    if pc.any(long).as_py():
        row = int(np.flatnonzero(long.to_numpy(zero_copy_only=False))[0])
        raise BadInput(f"{source}: line {row + 1} is {len(lines[row].as_py()):,} characters long (kernel symbol "
                       f"names are at most 512)", "give a copy of /proc/kallsyms from the traced host")
    m = pc.extract_regex(lines, _LINE_RE)
    m = m.filter(m.is_valid())
    if len(m) == 0:
        raise BadInput(f"{source} holds no kallsyms lines ('ADDRESS t NAME [MODULE]')",
                       "give a copy of /proc/kallsyms from the traced host, read as root")
    addrs = hex_to_u64(pc.struct_field(m, "addr"), "kallsyms address")
    if not addrs.any():
        raise BadInput(f"{source}: every address is 0 (kallsyms was read without privilege)",
                       "copy /proc/kallsyms as root on the traced host")
    names = pc.struct_field(m, "name")
    mods = pc.fill_null(pc.struct_field(m, "mod"), "")
    keep = addrs != 0
    order = np.argsort(addrs[keep], kind="stable")
    a = addrs[keep][order]
    idx = pa.array(np.flatnonzero(keep)[order])
    names, mods = names.take(idx), mods.take(idx)
    first = np.ones(len(a), dtype=bool)
    first[1:] = a[1:] != a[:-1]  # aliases at one address: keep the first listed
    a = a[first]
    names, mods = names.filter(pa.array(first)), mods.filter(pa.array(first))
    ends = np.empty_like(a)
    ends[:-1] = a[1:]
    ends[-1] = a[-1] + np.uint64(0x1000)  # the last symbol: assume at most a page
    return Kallsyms(addrs=a, ends=ends, names=names, modules=mods)


def load_kallsyms(path: str | Path) -> Kallsyms:
    """Read a kallsyms file (plain or compressed)."""
    from tdptrace.importers.reader import DECOMPRESS_ERRORS, open_binary

    p = Path(path)
    with open_binary(p) as f:
        try:
            data = f.read(MAX_BYTES + 1)
        except DECOMPRESS_ERRORS as exc:
            raise BadInput(f"{p}: cannot read ({exc})", "give a copy of /proc/kallsyms from the traced host")
    if len(data) > MAX_BYTES:
        raise BadInput(f"{p} is larger than {MAX_BYTES >> 20} MiB, not a kallsyms file",
                       "give a copy of /proc/kallsyms from the traced host")
    return parse_kallsyms(data.decode("utf-8", errors="replace"), str(p))
