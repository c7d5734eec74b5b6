"""The text of tracefs `kprobe_events`: which function (and entry or return) each kprobe event probes.

perf and trace-cmd print a kprobe's location as a raw address; with this map an event name alone says where
it fired. Lines look like (Documentation/trace/kprobetrace.rst):
  p:tdp/zap_leafs_enter tdp_mmu_zap_leafs root=%si start=%dx
  r10:tdp/zap_leafs_exit kvm:tdp_mmu_zap_leafs ret=$retval:u8
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tdptrace.errors import BadInput

_LINE = re.compile(r"^(?P<kind>[pr])(?P<maxactive>\d*):(?:(?P<group>[^/\s]+)/)?(?P<event>\S+)\s+"
                   r"(?:(?P<mod>[^:\s]+):)?(?P<sym>[A-Za-z_.$][\w.$]*)(?:\+(?P<off>0x[0-9a-fA-F]+|\d+))?"
                   r"(?P<args>(?:\s+\S+)*)\s*$")


@dataclass(frozen=True)
class KprobeEvent:
    """One kprobe event: the function it probes, at what offset, entry or return, and its argument names."""

    group: str
    event: str
    function: str
    offset: int
    is_return: bool
    args: tuple[str, ...]


def parse_kprobe_events(text: str, source: str = "kprobe_events") -> dict[str, KprobeEvent]:
    """Map 'group:event' and bare 'event' to its KprobeEvent. Deletions ('-:') and comments are skipped."""
    out: dict[str, KprobeEvent] = {}
    bad: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("-:"):
            continue
        m = _LINE.match(line)
        if not m:
            bad.append(line)
            continue
        off = m["off"] or "0"
        ev = KprobeEvent(
            group=m["group"] or "kprobes",
            event=m["event"], function=m["sym"], offset=int(off, 0), is_return=m["kind"] == "r",
            args=tuple(a.split("=", 1)[0] for a in m["args"].split() if "=" in a),
        )
        out[f"{ev.group}:{ev.event}"] = ev
        out.setdefault(ev.event, ev)
    if not out:
        example = f" (e.g. '{bad[0][:60]}')" if bad else ""
        raise BadInput(f"{source} holds no kprobe definitions{example}",
                       "give the text of /sys/kernel/tracing/kprobe_events from the traced host")
    return out


def load_kprobe_events(path: str | Path) -> dict[str, KprobeEvent]:
    """Read a kprobe_events file."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise BadInput(f"{p}: no such file", "give the text of tracefs kprobe_events from the traced host")
    except (IsADirectoryError, PermissionError) as exc:
        raise BadInput(f"{p}: cannot read ({exc.strerror})", "give a readable copy of tracefs kprobe_events")
    return parse_kprobe_events(text, str(p))
