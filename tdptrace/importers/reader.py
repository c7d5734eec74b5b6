"""Reading trace text: transparent decompression (.xz, .gz, .zst by magic bytes) and bounded-size line blocks."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from tdptrace.errors import BadInput

BLOCK_BYTES = 16 << 20

MAGIC = {
    b"\xfd7zXZ\x00": "xz",
    b"\x1f\x8b": "gz",
    b"\x28\xb5\x2f\xfd": "zst",
    b"BZh": "bz2",
}
# What a damaged or truncated .xz/.gz/.bz2/.zst raises while reading (zlib.error is not an OSError).
DECOMPRESS_ERRORS = (lzma.LZMAError, zlib.error, OSError, EOFError)
TRACE_DAT_MAGIC = b"\x17\x08\x44tracing"
PERF_DATA_MAGIC = (b"PERFILE2", b"2ELIFREP")


def compression_of(head: bytes) -> str | None:
    """Compression format from the first bytes of a file, or None for plain."""
    for magic, name in MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def open_binary(path: Path) -> BinaryIO:
    """Open a possibly compressed file for reading decompressed bytes."""
    try:
        f = open(path, "rb")
    except IsADirectoryError:
        raise BadInput(f"{path} is a directory", "give a trace text file (or trace.dat)")
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file", "check the path")
    except PermissionError:
        raise BadInput(f"{path}: permission denied", "run as a user who can read it")
    head = f.read(8)
    f.seek(0)
    kind = compression_of(head)
    if kind == "xz":
        return lzma.open(f)  # type: ignore[return-value]
    if kind == "gz":
        return gzip.open(f)  # type: ignore[return-value]
    if kind == "bz2":
        return bz2.open(f)  # type: ignore[return-value]
    if kind == "zst":
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError:
            f.close()
            raise BadInput(f"{path} is zstd-compressed and the zstandard module is missing",
                           "pip install zstandard, or decompress it first: zstd -d FILE")
        return io.BufferedReader(_ZstdFrames(f, zstandard), buffer_size=1 << 20)
    return f


class _ZstdFrames(io.RawIOBase):
    """Every zstd frame of a file in turn (pzstd and zstd -T write several). Unlike zstandard's stream_reader,
    which stops silently, a file that ends inside a frame raises EOFError and damaged data OSError."""

    def __init__(self, raw: BinaryIO, zstandard) -> None:  # noqa: ANN001 - the optional module
        self._raw, self._z = raw, zstandard
        self._d = zstandard.ZstdDecompressor().decompressobj()
        self._buf = bytearray()
        self._pos = 0
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001 - a writable buffer
        while self._pos >= len(self._buf):
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._in_frame:
                    raise EOFError("the zstd stream ends inside a frame (truncated file)")
                return 0
            self._buf, self._pos = bytearray(), 0
            self._feed(chunk)
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n

    def _feed(self, chunk: bytes) -> None:
        while chunk:
            if self._d.eof:
                self._d = self._z.ZstdDecompressor().decompressobj()
            try:
                self._buf += self._d.decompress(chunk)
            except self._z.ZstdError as exc:
                raise OSError(f"zstd: {exc}") from None
            self._in_frame = not self._d.eof
            chunk = self._d.unused_data if self._d.eof else b""

    def close(self) -> None:
        self._raw.close()
        super().close()


def sniff(path: Path, size: int = 65536) -> bytes:
    """The first decompressed bytes of a file (for format detection)."""
    with open_binary(path) as f:
        try:
            return f.read(size)
        except DECOMPRESS_ERRORS as exc:
            raise BadInput(f"{path}: cannot decompress ({exc})", "the file is damaged or truncated")


def _raw_file(f) -> BinaryIO | None:  # noqa: ANN001 - any of the decompressing readers
    """The file under a decompressing reader (gzip, lzma, bz2, the zstd frames), or the file itself."""
    for attr in ("fileobj", "_fp", "_raw", "raw"):
        inner = getattr(f, attr, None)
        if inner is not None and hasattr(inner, "tell"):
            return _raw_file(inner) if not isinstance(inner, io.FileIO) else inner
    if isinstance(f, lzma.LZMAFile) or isinstance(f, gzip.GzipFile) or isinstance(f, bz2.BZ2File):
        return None
    return f


def _tell(raw) -> int:  # noqa: ANN001
    try:
        return raw.tell() if raw is not None else 0
    except (OSError, ValueError):
        return 0


@dataclass
class Block:
    """A run of whole lines (bytes ending in a newline) and whether it is the file's last block."""

    data: bytes
    last: bool
    truncated_tail: bytes  # bytes after the last newline of the file (a truncated last line), only on the last block
    long_lines: int = 0  # lines longer than one block, skipped (read through, never held) since the previous block
    long_line_bytes: int = 0  # length of the first such line
    consumed: int = 0  # bytes of the file itself (compressed, if it is) read so far: progress against its size


def blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[Block]:
    """Yield blocks of whole lines, each about block_bytes long, so memory stays bounded on any file size.
    A line longer than block_bytes (no trace line is: the kernel prints a few KiB at most) is read through
    without being kept, and counted on the next block."""
    with open_binary(path) as f:
        raw = _raw_file(f)
        carry = b""
        skipping = 0  # bytes of the over-long line being read through (0: none)
        long_lines = long_bytes = 0

        def read() -> bytes:
            try:
                return f.read(block_bytes)
            except DECOMPRESS_ERRORS as exc:
                raise BadInput(f"{path}: cannot decompress ({exc})", "the file is damaged or truncated")

        while True:
            chunk = read()
            if not chunk:
                if skipping:  # the file ends inside an over-long line
                    long_lines, long_bytes = long_lines + 1, long_bytes or skipping
                yield Block(b"", True, carry, long_lines, long_bytes, _tell(raw))
                return
            if skipping:
                nl = chunk.find(b"\n")
                if nl < 0:
                    skipping += len(chunk)
                    continue
                long_lines, long_bytes = long_lines + 1, long_bytes or skipping + nl
                skipping, chunk = 0, chunk[nl + 1:]
                if not chunk:
                    continue
            data = carry + chunk
            cut = data.rfind(b"\n")
            carry = data if cut < 0 else data[cut + 1:]
            if len(carry) > block_bytes:
                skipping, carry = len(carry), b""
            if cut < 0:
                continue
            yield Block(data[: cut + 1], False, b"", long_lines, long_bytes, _tell(raw))
            long_lines = long_bytes = 0
