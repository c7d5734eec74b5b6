"""Durations typed by people ('500us', '10ms', '2s', '1m', '1h'; a bare number is seconds) and printed for
people ('99.7 ms'). Every duration on the command line is read here, so they all share one grammar."""
from __future__ import annotations

import re

from tdptrace.errors import BadInput

NS_PER = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
          "h": 3_600_000_000_000}
GRAMMAR = "500us, 10ms, 2s, 1m, 1h; a bare number is seconds"
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|µs|ms|s|m|h)?\s*")


def parse_duration(text: str) -> int:
    """'10ms' -> 10_000_000 ns, '2' -> 2 s; zero is a duration (callers decide whether they accept it)."""
    m = _DURATION.fullmatch(text or "")
    if not m:
        raise BadInput(f"'{text}' is not a duration", f"give e.g. {GRAMMAR}")
    number, unit = m.groups()
    if unit is None or unit == "s":  # exact for integers: '3600' is 3600 s to the nanosecond
        whole, _, frac = number.partition(".")
        ns = int(whole or 0) * 1_000_000_000 + int(round(float(f"0.{frac or 0}") * 1e9))
    else:
        value = float(number) * NS_PER[unit]
        if value > 1e30:  # float('1' * 400) is inf: too long to be a duration anyone meant
            raise BadInput(f"'{text}' is too long a duration", f"give e.g. {GRAMMAR}")
        ns = int(round(value))
    return ns


def fmt_duration(ns: int) -> str:
    """A duration in the grammar parse_duration reads, exact where a unit divides it: '10ms', '48h', '1.5s'."""
    if ns == 0:
        return "0"
    for unit in ("h", "m", "s", "ms", "us", "ns"):
        if ns % NS_PER[unit] == 0:
            return f"{ns // NS_PER[unit]}{unit}"
    for unit in ("s", "ms", "us"):
        if ns >= NS_PER[unit]:
            return f"{ns / NS_PER[unit]:g}{unit}"
    return f"{ns}ns"


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
