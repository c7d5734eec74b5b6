"""Range checks for numeric command-line options: NaN, infinities, negatives and absurd sizes are refused
in one line before any work starts (typer parses 'nan' and 'inf' as valid floats)."""
from __future__ import annotations

from typing import Optional

from tdptrace.errors import BadInput

PID_MAX = 1 << 22  # /proc/sys/kernel/pid_max can be at most 2^22 on 64-bit


def in_range(option: str, value: Optional[float], lo: float, hi: float, *, lo_open: bool = False,
             unit: str = "") -> None:
    """Raise BadInput unless lo <= value <= hi (lo < value with lo_open); None passes (option not given)."""
    if value is None:
        return
    ok = (lo < value if lo_open else lo <= value) and value <= hi  # False for NaN
    if not ok:
        low = f"above {lo:g}" if lo_open else f"from {lo:g}"
        raise BadInput(f"{option} {value} is out of range", f"give a number {low} to {hi:g}{unit}")


def pid(option: str, value: int, allow_zero: bool = True) -> None:
    """A process id (0 meaning 'all' where allowed)."""
    in_range(option, value, 0 if allow_zero else 1, PID_MAX - 1)
