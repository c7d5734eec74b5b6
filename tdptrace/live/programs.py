"""The BPF C programs shipped with tdptrace (probes/, installed as the tdptrace.probes package data), the text
BCC compiles from them, and the one way settings reach their compiler: integer -D defines under TDP_* names.

BCC rewrites map methods (`stats.lookup(&k)`) in its main source only, so a header of probes/ that uses maps
cannot simply be #included: `program_source` splices the probes' own headers into the program's text, each
once, with #line markers so that compiler messages still name the header and line. Only that text and the
validated defines reach BCC, plus the fentry stubs tdptrace.live.fentry_programs generates from BTF-checked
function names and integers; `program_text` shows it all exactly as compiled (`record --ebpf`).
"""
from __future__ import annotations

import ctypes
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

_DEFINE_NAME = re.compile(r"^TDP_[A-Z0-9_]+$")
# A quoted include of a file next to the program (the probes' own headers); <...> includes are the kernel's.
_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*(?://.*|/\*.*\*/[ \t]*)?$')
_HEADER_NAME = re.compile(r"^[A-Za-z0-9_.]+\.h$")


def probes_dir() -> Path:
    """Where the BPF C sources and their headers are (the tdptrace.probes package data)."""
    return Path(str(resources.files("tdptrace.probes")))


def cflag(name: str, value: int | bool) -> str:
    """One -D setting; only integers under TDP_* names reach the compiler (never text from the command line)."""
    if not _DEFINE_NAME.match(name):
        raise ValueError(f"bad define name {name!r}")
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: defines must be integers, not {type(value).__name__}")
    return f"-D{name}={int(value)}"


def cflags(defines: Mapping[str, int | bool]) -> list[str]:
    """Every setting as a validated -D flag."""
    return [cflag(k, v) for k, v in defines.items()]


def program_source(name: str, directory: Path | None = None) -> str:
    """The program `name` (a file of probes/) with the probes' headers it includes spliced in, each once."""
    d = directory or probes_dir()
    out: list[str] = []
    _splice(d, name, out, set())
    return "".join(out)


def _splice(d: Path, name: str, out: list[str], seen: set[str]) -> None:
    seen.add(name)
    lines = (d / name).read_text().splitlines(keepends=True)
    out.append(f'#line 1 "{name}"\n')
    for n, line in enumerate(lines, start=1):
        m = _LOCAL_INCLUDE.match(line)
        if not m:
            out.append(line if line.endswith("\n") else line + "\n")
            continue
        header = m.group(1)
        if not _HEADER_NAME.match(header):
            raise ValueError(f"{name}:{n}: #include \"{header}\": only headers next to the program can be included")
        if header not in seen:
            _splice(d, header, out, seen)
        out.append(f'#line {n + 1} "{name}"\n')


def program_text(name: str, defines: Mapping[str, int | bool], stubs: str = "") -> str:
    """The program exactly as compiled: the settings as #defines, a blank line, then program_source(name),
    then the generated fentry stubs if any (tdptrace.live.fentry_programs)."""
    settings = [f"#define {flag[2:].replace('=', ' ', 1)}" for flag in cflags(defines)]
    return "\n".join(settings) + "\n\n" + program_source(name) + stubs


def bcc_compat(bpf_class: Any) -> None:
    """BCC 0.26 cannot map a `signed char` (__s8) map field to ctypes; teach it (harmless where it can)."""
    bpf_class.str2ctype.setdefault("signed char", ctypes.c_byte)


def load(name: str, defines: Mapping[str, int | bool], bpf_class: Any = None, stubs: str = "") -> Any:
    """Compile program `name` with these settings (and generated fentry stubs) and load it with BCC (its
    tracepoint and fentry programs attach themselves). bcc is imported here, lazily; BCC's own exceptions
    pass through to the caller."""
    if bpf_class is None:
        from bcc import BPF as bpf_class  # noqa: N813, PLC0415 - lazily, only on the live path
    bcc_compat(bpf_class)
    flags = cflags(defines)
    return bpf_class(text=(program_source(name) + stubs).encode(), cflags=flags)


# Shared libraries BCC compiles with (clang and LLVM): the recording process runs none of their code once the
# programs are loaded.
_COMPILER_LIBS = re.compile(r"/lib(LLVM|clang)[^/]*\.so")
_MADV_DONTNEED = 4


def release_compiler_memory(maps: Path = Path("/proc/self/maps")) -> int:
    """After the compile: give the C heap clang freed back to the kernel (malloc_trim) and drop this
    process's pages of the compiler libraries' file mappings (they come back from the page cache if BCC
    ever compiles again). Returns how many bytes of compiler mappings were dropped; 0 where nothing could be."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        libc.malloc_trim(0)
    except AttributeError:  # not glibc
        pass
    dropped = 0
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or not _COMPILER_LIBS.search(parts[5]) or parts[1] != "r-xp":
            continue  # code only: read-only data may hold relocated pointers (RELRO), which the file has not
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if libc.madvise(lo, hi - lo, _MADV_DONTNEED) == 0:
            dropped += hi - lo
    return dropped
