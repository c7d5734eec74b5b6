"""Getting records out of the kernel in batches: a BPF ring buffer read through mmap as one numpy array.

The recorder's ring buffers hold fixed-size records (probes/record.h), so everything between the
consumer and producer positions is a strided array: one slice, one busy-bit check and one copy per batch
instead of one Python callback per event. Layout (kernel/bpf/ringbuf.c, since Linux 5.8): page 0 = consumer
position (writable), page 1 = producer position, then the data area mapped twice in a row so a record that
wraps is still contiguous. Each record starts with an 8-byte header {u32 len | BUSY<<31 | DISCARD<<30, u32 pg_off}.
Kernels older than 5.8 have no ring buffer: PerfReader takes BCC's perf buffer instead.
"""
from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass

import numpy as np

BUSY_BIT = np.uint32(1 << 31)
DISCARD_BIT = np.uint32(1 << 30)
HEADER_BYTES = 8
PAGE_SIZE = mmap.PAGESIZE


class TransportError(RuntimeError):
    """The ring buffer holds something other than the fixed-size records this reader was made for."""


@dataclass
class BatchStats:
    """Cumulative counts of one reader."""

    records: int = 0
    batches: int = 0
    discarded: int = 0


class RingReader:
    """Drains one BPF ring buffer map of fixed-size records into numpy structured arrays."""

    def __init__(self, map_fd: int, size_bytes: int, record: np.dtype) -> None:
        if size_bytes <= 0 or size_bytes & (size_bytes - 1) or size_bytes % PAGE_SIZE:
            raise ValueError(f"ring buffer size {size_bytes} is not a power-of-two number of pages")
        self.record = np.dtype(record)
        self.size = size_bytes
        self.stride = (self.record.itemsize + HEADER_BYTES + 7) & ~7
        self._cons_map = mmap.mmap(map_fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data_map = mmap.mmap(map_fd, PAGE_SIZE + 2 * size_bytes, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=PAGE_SIZE)
        self._cons = np.frombuffer(self._cons_map, dtype="<u8", count=1)
        self._prod = np.frombuffer(self._data_map, dtype="<u8", count=1)
        self._data = np.frombuffer(self._data_map, dtype=np.uint8, offset=PAGE_SIZE)
        self._slot = np.dtype([("len", "<u4"), ("pg_off", "<u4"), ("rec", self.record),
                               ("_pad", "u1", (self.stride - HEADER_BYTES - self.record.itemsize,))])
        self.stats = BatchStats()

    def pending_bytes(self) -> int:
        """Bytes produced and not yet consumed."""
        return int(self._prod[0]) - int(self._cons[0])

    def drain(self, max_records: int | None = None) -> np.ndarray:
        """Copy out every committed record (up to max_records) and release their space to the kernel."""
        cons = int(self._cons[0])
        prod = int(self._prod[0])
        n = (prod - cons) // self.stride
        if max_records is not None:
            n = min(n, max_records)
        if n <= 0:
            return np.zeros(0, dtype=self.record)
        start = cons & (self.size - 1)
        slots = self._data[start: start + n * self.stride].view(self._slot)
        lens = slots["len"]
        busy = np.flatnonzero(lens & BUSY_BIT)
        if len(busy):
            n = int(busy[0])
            slots, lens = slots[:n], lens[:n]
        discarded = (lens & DISCARD_BIT) != 0
        bad = (lens & ~(BUSY_BIT | DISCARD_BIT)) != self.record.itemsize
        if bad.any():
            raise TransportError(f"ring buffer record of {int(lens[bad][0] & ~(BUSY_BIT | DISCARD_BIT))} bytes, "
                                 f"expected {self.record.itemsize}: probes/record.h and records.py disagree")
        out = slots["rec"][~discarded].copy() if discarded.any() else slots["rec"].copy()
        self._cons[0] = cons + n * self.stride
        self.stats.records += len(out)
        self.stats.batches += 1
        self.stats.discarded += int(discarded.sum())
        return out

    def close(self) -> None:
        """Unmap (views into the maps must be gone; drain() only hands out copies)."""
        self._cons = self._prod = self._data = None  # type: ignore[assignment]
        self._cons_map.close()
        self._data_map.close()


class PerfReader:
    """Kernels older than 5.8: BCC's per-CPU perf buffer, one small raw-bytes callback per record.

    Slower than RingReader (a Python call per record) but the payload is still decoded in batches; the
    kernel side counts failed submissions as drops, and BCC's lost-sample callback adds its own count.
    """

    def __init__(self, table, record: np.dtype, page_cnt: int) -> None:
        self.record = np.dtype(record)
        self._parts: list[bytes] = []
        self.lost = 0
        self.stats = BatchStats()
        size = self.record.itemsize

        def on_event(cpu: int, data: int, length: int) -> None:
            self._parts.append(ctypes.string_at(data, size))

        def on_lost(count: int) -> None:
            self.lost += count

        table.open_perf_buffer(on_event, page_cnt=page_cnt, lost_cb=on_lost)
        self._bpf = table.bpf

    def pending_bytes(self) -> int:
        return 0

    def drain(self, max_records: int | None = None) -> np.ndarray:
        self._bpf.perf_buffer_poll(timeout=0)
        parts, self._parts = self._parts, []
        out = np.frombuffer(b"".join(parts), dtype=self.record).copy() if parts else np.zeros(0, self.record)
        self.stats.records += len(out)
        self.stats.batches += 1
        return out

    def close(self) -> None:
        pass
