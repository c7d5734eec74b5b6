"""Kernel symbol names: compiler copies (.isra/.constprop/.part/.cold) and lookups in kallsyms or
available_filter_functions text. The one reader of symbol lists for doctor, record, top and the lab."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

# Compiler-generated clones keep the function's name with a suffix; they are what a probe must attach to.
_SUFFIX_PART = r"\.(?:isra|constprop|part|cold|llvm)(?:\.\d+)?"
_SUFFIX = re.compile(rf"(?:{_SUFFIX_PART})+(?:\..*)?$")


def base_symbol(symbol: str) -> str:
    """The C name behind a compiler-made copy: 'zap_gfn_range.isra.0' -> 'zap_gfn_range'."""
    return _SUFFIX.sub("", symbol)


def is_compiler_copy(symbol: str) -> bool:
    """True for .isra/.constprop/.part copies, whose argument order may differ from the C prototype (BTF
    describes the C function, not the copy)."""
    return base_symbol(symbol) != symbol


def is_cold_part(symbol: str) -> bool:
    """A '.cold' split-off of a function's unlikely path: never a probe point."""
    return symbol.endswith(".cold") or ".cold." in symbol


def text_symbols(kallsyms: str | Iterable[str]) -> set[str]:
    """Names of text symbols ('ADDR t NAME [module]', types t/T/w/W) in kallsyms text."""
    lines = kallsyms.splitlines() if isinstance(kallsyms, str) else kallsyms
    out: set[str] = set()
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[1] in ("t", "T", "w", "W"):
            out.add(parts[2])
    return out


def text_symbols_named(kallsyms: str, names: Iterable[str]) -> set[str]:
    """The text symbols of kallsyms text that are one of `names` or a compiler copy of one (NAME.suffix):
    one regular-expression pass instead of splitting every line (a host has ~200k symbols; under the lab's
    emulated CPU splitting them all took seconds)."""
    alts = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))
    if not alts:
        return set()
    pat = re.compile(rf"^\S+[ \t]+[tTwW][ \t]+((?:{alts})(?:\.[^\s]*)?)(?=\s|$)", re.M)
    return set(pat.findall(kallsyms))


def read_text_symbols(path: Path = Path("/proc/kallsyms")) -> set[str]:
    """Text symbol names of a kallsyms file (the running kernel's by default)."""
    with open(path, errors="replace") as f:
        return text_symbols(f)


def listed_functions(filter_functions: str) -> set[str]:
    """Names in tracefs available_filter_functions text ('name [module]' or 'name' per line)."""
    return {line.split()[0] for line in filter_functions.splitlines() if line.strip()}


def copies_of(names: Iterable[str], symbols: Iterable[str]) -> dict[str, list[str]]:
    """For each C name, the symbols that are it or a compiler copy of it (no .cold parts), the plain name
    first; names absent map to []."""
    wanted = {n: [] for n in names}
    for sym in symbols:
        if is_cold_part(sym):
            continue
        base = base_symbol(sym)
        if base in wanted:
            wanted[base].append(sym)
    return {n: sorted(set(v), key=lambda s: (s != n, s)) for n, v in wanted.items()}
