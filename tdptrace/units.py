"""Durations typed by people ('10ms', '250us', '1.5s') and printed for people ('99.7 ms')."""
from __future__ import annotations

import re

from tdptrace.errors import BadInput

_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|µs|ms|s)?\s*")


def parse_duration(text: str, default_unit: str = "ms") -> int:
    """'10ms' -> 10_000_000 ns; a bare number is in `default_unit`."""
    m = _DURATION.fullmatch(text or "")
    if not m:
        raise BadInput(f"'{text}' is not a duration", "give e.g. 10ms, 500us, 1.5s or 2000000ns")
    ns = float(m.group(1)) * _UNITS[m.group(2) or default_unit]
    if ns <= 0:
        raise BadInput(f"duration '{text}' must be above zero", "give e.g. 10ms")
    return int(round(ns))


def fmt_ns(ns: int | float | None) -> str:
    """A duration in the unit that reads best: '850 us', '8.0 ms', '1.95 s'."""
    if ns is None:
        return "-"
    ns = float(ns)
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.1f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.0f} us"
    return f"{ns:.0f} ns"
