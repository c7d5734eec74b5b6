"""Which text formats tdptrace reads, how each is recognised, and the line parser for each."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from tdptrace.errors import BadInput
from tdptrace.importers import tracefs
from tdptrace.importers.tracefs import ParsedBlock

LineParser = Callable[[pa.Array, int], ParsedBlock]

# (name, recogniser over the first decoded 64 KiB); first match wins, most specific first.
PROBES: list[tuple[str, Callable[[str], bool]]] = [
    ("tracefs", tracefs.looks_like),
]


def line_parser(kind: str, kallsyms: str | Path | None = None, kprobe_events: str | Path | None = None) -> LineParser:
    """The parser turning a block of lines into common columns for format `kind`."""
    if kind == "tracefs":
        return tracefs.parse_lines
    raise BadInput(f"format '{kind}' is not supported by this build", "convert it to tracefs text")


def report_binary(path: Path, kind: str) -> tuple[Path, str]:
    """Turn a binary trace (trace.dat, perf.data) into text with its own tool; returns (text path, format)."""
    raise BadInput(f"{path} is a {kind} file", "report it to text first (trace-cmd report / perf script)")
