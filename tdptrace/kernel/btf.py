"""A pure-Python reader of raw BTF: the kernel's own description of its functions' parameters.

Reads /sys/kernel/btf/vmlinux and /sys/kernel/btf/<module> on a live host, and, for a kernel package on disk,
the .BTF section of a module file (.ko, .ko.xz, .ko.zst, .ko.gz) as split BTF over the vmlinux base taken
from the package's vmlinuz (or a vmlinux ELF, or a raw BTF file). No libbpf, no bpftool: the lab resolves a
guest kernel's probes before booting it, on a host that may have neither.

Layout follows include/uapi/linux/btf.h: a header, a type section, a string section; split BTF numbers its
types after the base's and offsets its strings past the base's string section.
"""
from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from tdptrace.errors import BadInput

BTF_MAGIC = 0xEB9F
SYSFS_BTF = Path("/sys/kernel/btf")

# BTF_KIND_* (include/uapi/linux/btf.h).
KIND_NAMES: dict[int, str] = {
    0: "void", 1: "int", 2: "ptr", 3: "array", 4: "struct", 5: "union", 6: "enum", 7: "fwd", 8: "typedef",
    9: "volatile", 10: "const", 11: "restrict", 12: "func", 13: "func_proto", 14: "var", 15: "datasec",
    16: "float", 17: "decl_tag", 18: "type_tag", 19: "enum64",
}
_MODIFIERS = {"typedef", "volatile", "const", "restrict", "type_tag"}
# Bytes after the 12-byte btf_type: fixed part, and per vlen entry.
_EXTRA: dict[int, tuple[int, int]] = {
    1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0), 15: (0, 12),
    17: (4, 0), 19: (0, 12),
}
_INT_SIGNED, _INT_BOOL = 1, 4
FUNC_LINKAGE = {0: "static", 1: "global", 2: "extern"}


class BtfError(BadInput):
    """The bytes are not BTF this reader understands (bad magic, truncated, unknown kind)."""


class NoBtf(BtfError):
    """A kernel image without BTF: its kernel was built without CONFIG_DEBUG_INFO_BTF."""


@dataclass(frozen=True)
class BtfType:
    """One raw type record: kind, name, vlen, kind_flag, size_or_type, and its kind-specific data."""

    id: int
    kind: int
    name: str
    vlen: int
    kind_flag: bool
    size_or_type: int
    extra: tuple[int, ...]  # INT: (encoding word,); ARRAY: (type, index, nelems); others: flattened entries

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, f"kind{self.kind}")


@dataclass(frozen=True)
class Param:
    """One function parameter as BTF describes it: name, C type, and what a probe needs to fetch it."""

    name: str
    type: str  # C spelling: 'struct kvm *', 'gfn_t', 'bool'
    size: int  # bytes of the resolved type (8 for pointers); 0 when unknown
    kind: str  # resolved kind: 'ptr', 'int', 'bool', 'enum', 'struct', 'union', 'float', ...
    signed: bool = False

    @property
    def scalar(self) -> bool:
        """Passed in one integer register (x86-64 System V) when among the first six."""
        return self.kind in ("ptr", "int", "bool", "enum") and 0 < self.size <= 8

    @property
    def fetch_type(self) -> str:
        """The kprobe_events fetch type that reads this parameter from its register."""
        if self.kind == "ptr":
            return "x64"
        if self.kind == "bool":
            return "u8"
        bits = 8 * self.size if self.size in (1, 2, 4, 8) else 64
        return f"{'s' if self.signed else 'u'}{bits}"


@dataclass(frozen=True)
class Function:
    """A function BTF describes: its C name, linkage, parameters in order and return type."""

    name: str
    linkage: str
    params: tuple[Param, ...]
    returns: str  # 'void' for none

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


class Btf:
    """Parsed BTF (a base, or split BTF over one): types by id, strings, functions by name."""

    def __init__(self, data: bytes, base: Btf | None = None, source: str = "") -> None:
        self.source = source
        self.base = base
        if len(data) < 24:
            raise BtfError(f"{source or 'BTF'}: {len(data)} bytes is too short for a BTF header")
        magic = struct.unpack_from("<H", data, 0)[0]
        if magic == BTF_MAGIC:
            self._e = "<"
        elif struct.unpack_from(">H", data, 0)[0] == BTF_MAGIC:
            self._e = ">"
        else:
            raise BtfError(f"{source or 'data'} is not BTF (magic {data[:2].hex()})")
        _, _, _, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(self._e + "HBBIIIII", data, 0)
        start = hdr_len
        if start + max(type_off + type_len, str_off + str_len) > len(data):
            raise BtfError(f"{source or 'BTF'}: sections run past the end of the data (truncated?)")
        self._strings = data[start + str_off:start + str_off + str_len]
        self._str_base = base.strings_len if base else 0
        self.first_id = (base.last_id + 1) if base else 1
        self.types: list[BtfType] = []
        self._parse_types(data[start + type_off:start + type_off + type_len])
        self.last_id = self.first_id + len(self.types) - 1
        self.strings_len = self._str_base + len(self._strings)
        self._funcs: dict[str, list[int]] = {}
        for t in self.types:
            if t.kind == 12:
                self._funcs.setdefault(t.name, []).append(t.id)

    # -- raw records ---------------------------------------------------------------------------------
    def string(self, off: int) -> str:
        """The NUL-terminated string at `off` (split BTF: offsets below the base's length are the base's)."""
        if off < self._str_base:
            assert self.base is not None
            return self.base.string(off)
        local = off - self._str_base
        if local >= len(self._strings):
            raise BtfError(f"{self.source or 'BTF'}: string offset {off} out of range")
        end = self._strings.find(b"\0", local)
        return self._strings[local:end if end >= 0 else len(self._strings)].decode("utf-8", "replace")

    def _parse_types(self, sec: bytes) -> None:
        e, pos, tid = self._e, 0, self.first_id
        while pos < len(sec):
            if pos + 12 > len(sec):
                raise BtfError(f"{self.source or 'BTF'}: type section truncated at byte {pos}")
            name_off, info, size_or_type = struct.unpack_from(e + "III", sec, pos)
            pos += 12
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31)
            if kind not in KIND_NAMES or kind == 0:
                raise BtfError(f"{self.source or 'BTF'}: unknown BTF kind {kind} at type {tid} "
                               "(a newer kernel's BTF than this reader knows)")
            fixed, per = _EXTRA.get(kind, (0, 0))
            n = fixed + per * vlen
            if pos + n > len(sec):
                raise BtfError(f"{self.source or 'BTF'}: type {tid} runs past the type section")
            extra = struct.unpack_from(e + "I" * (n // 4), sec, pos) if n else ()
            pos += n
            self.types.append(BtfType(tid, kind, self._name(name_off), vlen, kflag, size_or_type, extra))
            tid += 1

    def _name(self, off: int) -> str:
        return self.string(off) if off else ""

    def type(self, tid: int) -> BtfType | None:
        """The type record `tid` (None for void, id 0)."""
        if tid == 0:
            return None
        if tid < self.first_id:
            if self.base is None:
                raise BtfError(f"{self.source or 'BTF'}: type {tid} belongs to a base BTF that was not given")
            return self.base.type(tid)
        i = tid - self.first_id
        if i >= len(self.types):
            raise BtfError(f"{self.source or 'BTF'}: type id {tid} out of range")
        return self.types[i]

    # -- types as C ----------------------------------------------------------------------------------
    def type_name(self, tid: int) -> str:
        """C spelling of type `tid`: 'struct kvm *', 'const char *', 'gfn_t', 'void'."""
        t = self.type(tid)
        if t is None:
            return "void"
        k = t.kind_name
        if k == "ptr":
            inner = self.type_name(t.size_or_type)
            return inner + ("*" if inner.endswith("*") else " *")
        if k in ("const", "volatile", "restrict"):
            inner = self.type_name(t.size_or_type)
            return f"{inner} {k}" if inner.endswith("*") else f"{k} {inner}"
        if k == "type_tag":
            return self.type_name(t.size_or_type)
        if k in ("struct", "union", "enum", "enum64"):
            tag = "enum" if k == "enum64" else k
            return f"{tag} {t.name}" if t.name else f"{tag} (anon)"
        if k == "fwd":
            return f"{'union' if t.kind_flag else 'struct'} {t.name}"
        if k == "array":
            return f"{self.type_name(t.extra[0])}[{t.extra[2]}]"
        if k == "func_proto":
            return "function"
        return t.name or k

    def resolved(self, tid: int) -> tuple[str, int, bool]:
        """(kind, size in bytes, signed) of `tid` once typedefs and qualifiers are peeled off."""
        seen = 0
        t = self.type(tid)
        while t is not None and t.kind_name in _MODIFIERS:
            t = self.type(t.size_or_type)
            seen += 1
            if seen > 64:
                raise BtfError(f"{self.source or 'BTF'}: typedef loop at type {tid}")
        if t is None:
            return "void", 0, False
        k = t.kind_name
        if k == "ptr":
            return "ptr", 8, False
        if k == "int":
            enc = (t.extra[0] >> 24) & 0x0F
            if enc & _INT_BOOL:
                return "bool", t.size_or_type, False
            return "int", t.size_or_type, bool(enc & _INT_SIGNED)
        if k in ("enum", "enum64"):
            return "enum", t.size_or_type, not t.kind_flag if k == "enum" else False
        if k in ("struct", "union", "float"):
            return k, t.size_or_type, k == "float"
        return k, 0, False

    # -- functions ------------------------------------------------------------------------------------
    def function_names(self) -> set[str]:
        """Names of every FUNC this BTF (not its base) describes."""
        return set(self._funcs)

    def function(self, name: str) -> Function | None:
        """The function `name` as described here (or in the base); None when BTF does not describe it."""
        ids = self._funcs.get(name)
        if not ids:
            return self.base.function(name) if self.base else None
        found = {self._function(name, i) for i in ids}
        # Two static functions of one name with different prototypes: BTF cannot say which one a symbol is.
        return found.pop() if len(found) == 1 else None

    def _function(self, name: str, tid: int) -> Function:
        func = self.type(tid)
        assert func is not None
        proto = self.type(func.size_or_type)
        if proto is None or proto.kind_name != "func_proto":
            raise BtfError(f"{self.source or 'BTF'}: function {name} has no prototype")
        params = []
        for i in range(proto.vlen):
            name_off, ptype = proto.extra[2 * i], proto.extra[2 * i + 1]
            if ptype == 0:  # '...' of a variadic function
                params.append(Param("...", "...", 0, "varargs"))
                continue
            kind, size, signed = self.resolved(ptype)
            params.append(Param(self._name(name_off) or f"arg{i}", self.type_name(ptype), size, kind, signed))
        return Function(name, FUNC_LINKAGE.get(func.vlen, str(func.vlen)), tuple(params),
                        self.type_name(proto.size_or_type))


# -- where BTF comes from ------------------------------------------------------------------------------
def parse(data: bytes, base: Btf | None = None, source: str = "") -> Btf:
    """BTF from raw bytes (split over `base` when given)."""
    return Btf(data, base, source)


def read_sysfs(name: str = "vmlinux", base: Btf | None = None, root: Path = SYSFS_BTF) -> Btf | None:
    """The running kernel's BTF of `name` (vmlinux, or a module such as kvm over the vmlinux base); None
    when the kernel does not expose it."""
    path = root / name
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if name != "vmlinux" and base is None:
        base = read_sysfs("vmlinux", root=root)
    return parse(data, base if name != "vmlinux" else None, str(path))


def decompress(data: bytes, source: str = "") -> bytes:
    """Bytes of a possibly compressed file (xz, zstd, gzip, bzip2, lzma by magic; anything else as is). Only
    the first stream is read and bytes after it are ignored, as a bzImage's payload is followed by others."""
    try:
        if data[:6] == b"\xfd7zXZ\x00":
            return lzma.LZMADecompressor().decompress(data)
        if data[:4] == b"\x28\xb5\x2f\xfd":
            import zstandard  # noqa: PLC0415 - only for .zst inputs

            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        if data[:2] == b"\x1f\x8b":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
        if data[:3] == b"BZh":
            return bz2.BZ2Decompressor().decompress(data)
        if data[:3] == b"\x5d\x00\x00":
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
    except (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError) as exc:
        raise BtfError(f"{source or 'data'}: cannot decompress ({exc})") from None
    except Exception as exc:  # zstandard.ZstdError has no common base with the others
        if type(exc).__name__ == "ZstdError":
            raise BtfError(f"{source or 'data'}: cannot decompress ({exc})") from None
        raise
    return data


def elf_sections(data: bytes, source: str = "") -> dict[str, bytes]:
    """Section name -> contents of a 64-bit little-endian ELF file (NOBITS sections give b'')."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BtfError(f"{source or 'file'} is not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shoff == 0 or shoff + shnum * shentsize > len(data):
        raise BtfError(f"{source or 'ELF'}: no section headers (truncated?)")
    heads = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = heads[shstrndx]
    strtab = data[names[4]:names[4] + names[5]]
    out = {}
    for name_off, sh_type, _, _, off, size, *_ in heads:
        end = strtab.find(b"\0", name_off)
        name = strtab[name_off:end].decode("ascii", "replace")
        out[name] = b"" if sh_type == 8 else data[off:off + size]
    return out


def elf_function_symbols(data: bytes, source: str = "") -> set[str]:
    """Names of the function symbols (STT_FUNC) in an ELF file's .symtab: what a module really contains,
    compiler copies (.isra/.constprop/.part) included."""
    secs = elf_sections(data, source)
    symtab, strtab = secs.get(".symtab", b""), secs.get(".strtab", b"")
    out = set()
    for pos in range(0, len(symtab) - 23, 24):
        name_off, info = struct.unpack_from("<IB", symtab, pos)
        shndx, = struct.unpack_from("<H", symtab, pos + 6)
        if info & 0x0F == 2 and shndx != 0 and name_off:  # STT_FUNC, defined here
            end = strtab.find(b"\0", name_off)
            out.add(strtab[name_off:end].decode("ascii", "replace"))
    return out


def vmlinux_from_bzimage(data: bytes, source: str = "") -> bytes:
    """The vmlinux ELF inside an x86 bzImage (vmlinuz): the setup header's payload, decompressed."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise BtfError(f"{source or 'file'} is not an x86 bzImage (no HdrS setup header)")
    setup_sects = data[0x1F1] or 4
    payload_offset = struct.unpack_from("<I", data, 0x248)[0]
    start = (setup_sects + 1) * 512 + payload_offset
    payload = data[start:]  # payload_length can stop short of the stream's end; read the first stream
    elf = decompress(payload, source)
    if elf[:4] != b"\x7fELF":
        raise BtfError(f"{source or 'bzImage'}: payload compression not recognised (magic {payload[:4].hex()})")
    return elf


def read_base(path: Path) -> Btf:
    """vmlinux BTF from a file: raw BTF (as /sys/kernel/btf/vmlinux), a vmlinux ELF, or a vmlinuz bzImage."""
    data = _read(path)
    if data[:2] in (b"\x9f\xeb", b"\xeb\x9f"):
        return parse(data, None, str(path))
    if data[:4] != b"\x7fELF":
        data = vmlinux_from_bzimage(data, str(path))
    btf = elf_sections(data, str(path)).get(".BTF")
    if not btf:
        raise NoBtf(f"{path} has no .BTF section (kernel built without CONFIG_DEBUG_INFO_BTF)")
    return parse(btf, None, f"{path}:.BTF")


@dataclass
class Module:
    """One kernel module file read from disk: its split BTF (None when it has none) and function symbols."""

    path: Path
    btf: Btf | None
    symbols: set[str]


def read_module(path: Path, base: Btf | None, with_btf: bool = True) -> Module:
    """A module file (.ko, .ko.xz, .ko.zst, .ko.gz): its .BTF as split BTF over `base`, and its symbols.
    A module with a .BTF section but no base given is an error (its types and strings live in the base),
    unless with_btf=False asks for the symbols alone."""
    data = decompress(_read(path), str(path))
    secs = elf_sections(data, str(path))
    raw = secs.get(".BTF")
    btf = None
    if raw and with_btf:
        if base is None:
            raise BtfError(f"{path}: module BTF is split BTF and needs the kernel's vmlinux BTF as its base")
        btf = parse(raw, base, f"{path}:.BTF")
    return Module(path, btf, elf_function_symbols(data, str(path)))


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BtfError(f"cannot read {path} ({exc.strerror})") from None
