"""Map kernel-log times onto a capture's clock, so a stall report can be lined up with the zap spans.

Two capture clocks exist (meta.clock): imported trace text keeps the trace clock as printed - tracefs 'local'
by default, the same local_clock() base as printk's [seconds] stamps - and the live recorder stores
{"name": "monotonic", "anchor": {"monotonic_ns": ..., "realtime_ns": ...}}, whose anchor also converts
wall-clock stamps (dmesg -T, --time-format iso, journalctl). printk stamps and CLOCK_MONOTONIC share their
base on x86 with a stable TSC; they drift apart by suspend time only on CLOCK_BOOTTIME captures.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Clock names whose zero is the kernel's boot, like printk stamps (tracefs trace_clock names included).
_BOOT_BASED = {"trace (as printed)", "local", "global", "mono", "monotonic", "mono_raw", "boot", "perf", "x86-tsc"}


@dataclass(frozen=True)
class ClockMap:
    """How to turn printk uptime and wall-clock stamps into capture ns; None where it cannot."""

    name: str
    uptime_offset_ns: int | None  # capture_ns = uptime_ns + offset
    wall_offset_ns: int | None    # capture_ns = wall_ns + offset
    note: str = ""

    @classmethod
    def from_meta(cls, clock: dict[str, Any] | None) -> "ClockMap":
        clock = clock or {}
        name = str(clock.get("name") or "unknown")
        anchor = clock.get("anchor") or {}
        # Live captures name it "CLOCK_MONOTONIC" (the ftrace backend adds how it was printed in brackets).
        base = name.split(" (", 1)[0].strip().lower().removeprefix("clock_")
        uptime = 0 if base in _BOOT_BASED or name.startswith("trace") else None
        wall = None
        if "realtime_ns" in anchor:
            base = next((anchor[k] for k in ("monotonic_ns", "boot_ns", "capture_ns", "ts_ns") if k in anchor), None)
            if base is not None:
                wall = int(base) - int(anchor["realtime_ns"])
        notes = []
        if base in ("boot", "boottime"):
            notes.append("capture clock is CLOCK_BOOTTIME: printk stamps differ from it by any time spent suspended")
        if uptime is None:
            notes.append(f"capture clock '{name}' has no known relation to printk stamps")
        if wall is None:
            notes.append("capture has no wall-clock anchor: dmesg -T / iso stamps cannot be placed "
                         "(use plain dmesg, whose [seconds] stamps share the trace clock)")
        return cls(name, uptime, wall, "; ".join(notes))

    def describe(self) -> dict[str, Any]:
        """The one time base every output uses (the capture clock, in seconds) and how kernel log stamps map
        onto it, said once."""
        if self.uptime_offset_ns == 0:
            text = (f"times are seconds on the capture clock ({self.name}), the clock of the kernel log's "
                    "[seconds] stamps: a dmesg line at [T] is at T s here")
        elif self.uptime_offset_ns is not None:
            text = (f"times are seconds on the capture clock ({self.name}); a dmesg line at [T] is at "
                    f"T {self.uptime_offset_ns / 1e9:+.6f} s here")
        else:
            text = f"times are seconds on the capture clock ({self.name}); dmesg [seconds] stamps cannot be mapped"
        if self.wall_offset_ns is not None:
            text += (f"; wall-clock stamps (dmesg -T) map through the recorded anchor: capture = wall "
                     f"{self.wall_offset_ns / 1e9:+.6f} s")
        return {"clock": self.name, "unit": "s", "dmesg_offset_ns": self.uptime_offset_ns,
                "wall_offset_ns": self.wall_offset_ns, "text": text}

    def to_capture_ns(self, uptime_ns: int | None, wall_ns: int | None) -> int | None:
        """The capture-clock time of a log line from its uptime stamp (preferred) or wall-clock stamp."""
        if uptime_ns is not None and self.uptime_offset_ns is not None:
            return uptime_ns + self.uptime_offset_ns
        if wall_ns is not None and self.wall_offset_ns is not None:
            return wall_ns + self.wall_offset_ns
        return None
