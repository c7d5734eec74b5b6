"""Kernel log reports that matter after a zap stall: RCU stalls, soft/hard lockups and hung tasks.

Parses `dmesg` text (plain `[  123.456789]` stamps, `dmesg -T` ctime stamps, `--time-format iso`, raw `<4>`
levels, printk caller ids, `journalctl -k` prefixes, or no stamps at all) into KernelReport records.
Keep the patterns in sync with the kernel's format strings:
  kernel/rcu/tree_stall.h  "INFO: %s self-detected stall on CPU", "INFO: %s detected stalls on CPUs/tasks:",
                           print_cpu_stall_info "\\t%d-%c%c%c%c: (%lu %s) ..." and "\\t(t=%lu jiffies g=%ld ...)"
                           (before 5.x: "INFO: %s self-detected stall on CPU { 3}  (t=21000 jiffies ...)")
  kernel/watchdog.c        "BUG: soft lockup - CPU#%d stuck for %us! [%s:%d]", "Watchdog detected hard LOCKUP on cpu %d"
  kernel/hung_task.c       "INFO: task %s:%d blocked for more than %ld seconds."
  lib/dump_stack.c         "CPU: %d PID: %d Comm: %.20s ..." (6.6+: "CPU: %d UID: %u PID: %d Comm: ...")
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path

from tdptrace.errors import BadInput

RCU_STALL = "rcu_stall"
SOFT_LOCKUP = "soft_lockup"
HARD_LOCKUP = "hard_lockup"
HUNG_TASK = "hung_task"

# Debian's amd64 kernels are built with CONFIG_HZ=250: RCU reports its stall length in jiffies.
DEFAULT_HZ = 250
# How many lines after a report header may still belong to it (stall info, registers, call trace).
_REPORT_TAIL = 120


@dataclass
class KernelReport:
    """One stall/lockup/hung-task report from the kernel log.

    uptime_ns: the printk stamp (ns since boot on the kernel's local clock) when present; wall_ns: the wall
    clock time (dmesg -T / iso / journal) when that is what the line carried. stuck_ns: how long the kernel
    says the CPU or task had been stuck when it complained (None when the report does not say).
    """

    kind: str
    line_no: int
    text: str
    uptime_ns: int | None = None
    wall_ns: int | None = None
    cpu: int | None = None
    pid: int | None = None
    comm: str | None = None
    stuck_ns: int | None = None
    rcu_flavour: str | None = None
    cpus: list[int] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


_LEVEL = r"(?:<\d+>)?"
_UPTIME = re.compile(r"^" + _LEVEL + r"\[\s*(\d+)\.(\d{1,9})\]\s?")
_CTIME = re.compile(r"^" + _LEVEL + r"\[([A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4})\]\s?")
_ISO = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:[,.](\d{1,9}))?([+-]\d\d:?\d\d|Z)?\s+")
_JOURNAL = re.compile(r"^\S+ kernel: ")  # after a stamp: "host kernel: "
_CALLER = re.compile(r"^\[\s*[CT]\d+\]\s?")

_RCU_SELF = re.compile(r"INFO: (\w+) self-detected stall on CPU(?:\s*\{\s*(\d+)\s*\})?")
_RCU_OTHER = re.compile(r"INFO: (\w+) detected stalls? on CPUs/tasks")
_RCU_CPU_INFO = re.compile(r"^\s*(\d+)-[.\w!]{4}: \(")
_RCU_JIFFIES = re.compile(r"\(t=(\d+) jiffies")
_RCU_DETECTED_BY = re.compile(r"\(detected by (\d+), t=(\d+) jiffies")
_SOFT = re.compile(r"BUG: soft lockup - CPU#(\d+) stuck for (\d+)s! \[(.*):(\d+)\]")
_HARD = re.compile(r"Watchdog detected hard LOCKUP on cpu (\d+)")
_HUNG = re.compile(r"INFO: task (.*):(\d+) blocked for more than (\d+) seconds\.")
_CPU_PID = re.compile(r"^CPU: (\d+) (?:UID: \d+ )?PID: (\d+) Comm: (\S+)")
_FRAME = re.compile(r"^\s*(\? )?([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+")
_RIP = re.compile(r"^RIP: [0-9a-f]{4}:()([A-Za-z_][\w.]*)\+0x")
_NEW_REPORT = (_RCU_SELF, _RCU_OTHER, _SOFT, _HARD, _HUNG)


@dataclass
class _Line:
    uptime_ns: int | None
    wall_ns: int | None
    msg: str


def _split_stamp(line: str, tz: tzinfo | None) -> _Line:
    """Strip the time stamp, log level, journal prefix and caller id from one log line."""
    uptime = wall = None
    s = line.rstrip("\n")
    m = _UPTIME.match(s)
    if m:
        uptime = int(m.group(1)) * 1_000_000_000 + int(m.group(2).ljust(9, "0"))
        s = s[m.end():]
    else:
        m = _CTIME.match(s)
        if m:
            dt = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            wall = _wall_ns(dt, tz)
            s = s[m.end():]
        else:
            m = _ISO.match(s)
            if m:
                dt = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
                frac = int((m.group(2) or "0").ljust(9, "0"))
                off = m.group(3)
                zone = tz
                if off:
                    zone = timezone.utc if off == "Z" else timezone(
                        (1 if off[0] == "+" else -1) * timedelta(hours=int(off[1:3]), minutes=int(off[-2:])))
                wall = _wall_ns(dt, zone) + frac
                s = s[m.end():]
    if uptime is not None or wall is not None:
        j = _JOURNAL.match(s)
        if j:
            s = s[j.end():]
            m = _UPTIME.match(s)  # journalctl -o short-monotonic keeps the stamp first; some keep both
            if m and uptime is None:
                uptime = int(m.group(1)) * 1_000_000_000 + int(m.group(2).ljust(9, "0"))
                s = s[m.end():]
    s = re.sub(r"^<\d+>", "", s)
    c = _CALLER.match(s)
    if c:
        s = s[c.end():]
    return _Line(uptime, wall, s)


def _wall_ns(dt: datetime, tz: tzinfo | None) -> int:
    """ns since the epoch of a naive wall-clock time read in `tz` (None = this machine's local time)."""
    aware = dt.replace(tzinfo=tz) if tz is not None else dt.astimezone()
    return int(aware.timestamp()) * 1_000_000_000


def parse_utc_offset(text: str) -> tzinfo:
    """'UTC', 'Z', '+01:00', '-0530' -> a fixed-offset tzinfo (for dmesg -T stamps written elsewhere)."""
    t = text.strip()
    if t.upper() in ("UTC", "Z", "GMT"):
        return timezone.utc
    m = re.fullmatch(r"([+-])(\d\d):?(\d\d)", t)
    if not m:
        raise BadInput(f"'{text}' is not a UTC offset", "give e.g. UTC, +01:00 or -0500")
    sign = 1 if m.group(1) == "+" else -1
    return timezone(sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3))))


def parse_dmesg(text: str, tz: tzinfo | None = None, hz: int = DEFAULT_HZ) -> list[KernelReport]:
    """Every RCU stall, soft/hard lockup and hung-task report in kernel log text, in log order.

    `tz` reads dmesg -T stamps (None = this machine's local time zone); `hz` turns RCU's jiffies into time.
    A report's following lines add the stuck CPU/PID/comm and the kernel functions of its backtrace.
    """
    if "\x00" in text[:4096]:
        raise BadInput("the kernel log is binary, not text", "give the output of dmesg (or dmesg -T) as text")
    lines = [_split_stamp(ln, tz) for ln in text.splitlines()]
    reports: list[KernelReport] = []
    for i, ln in enumerate(lines):
        r = _header(ln.msg, hz)
        if r is None:
            continue
        r.line_no, r.text, r.uptime_ns, r.wall_ns = i + 1, ln.msg.strip(), ln.uptime_ns, ln.wall_ns
        _read_tail(r, lines[i + 1:i + 1 + _REPORT_TAIL], hz)
        reports.append(r)
    return reports


def _header(msg: str, hz: int) -> KernelReport | None:
    m = _RCU_SELF.search(msg)
    if m:
        r = KernelReport(RCU_STALL, 0, "", rcu_flavour=m.group(1))
        if m.group(2) is not None:  # pre-5.x: the CPU in braces and (t=...) on the same line
            r.cpu = int(m.group(2))
            r.cpus = [r.cpu]
        j = _RCU_JIFFIES.search(msg)
        if j:
            r.stuck_ns = int(j.group(1)) * 1_000_000_000 // hz
        return r
    m = _RCU_OTHER.search(msg)
    if m:
        return KernelReport(RCU_STALL, 0, "", rcu_flavour=m.group(1))
    m = _SOFT.search(msg)
    if m:
        return KernelReport(SOFT_LOCKUP, 0, "", cpu=int(m.group(1)), stuck_ns=int(m.group(2)) * 1_000_000_000,
                            comm=m.group(3), pid=int(m.group(4)), cpus=[int(m.group(1))])
    m = _HARD.search(msg)
    if m:
        return KernelReport(HARD_LOCKUP, 0, "", cpu=int(m.group(1)), cpus=[int(m.group(1))])
    m = _HUNG.search(msg)
    if m:
        return KernelReport(HUNG_TASK, 0, "", comm=m.group(1), pid=int(m.group(2)),
                            stuck_ns=int(m.group(3)) * 1_000_000_000)
    return None


def _read_tail(r: KernelReport, tail: list[_Line], hz: int) -> None:
    """Fill CPU list, stall length, stuck task and backtrace symbols from the lines following a header."""
    for ln in tail:
        msg = re.sub(r"^rcu:", "", ln.msg).lstrip("\t ")
        if any(p.search(ln.msg) for p in _NEW_REPORT):
            break
        if r.kind == RCU_STALL:
            c = _RCU_CPU_INFO.match(msg)
            if c:
                r.cpus.append(int(c.group(1)))
                if r.cpu is None and len(r.cpus) == 1:
                    r.cpu = r.cpus[0]
            j = _RCU_DETECTED_BY.search(msg) or _RCU_JIFFIES.search(msg)
            if j and r.stuck_ns is None:
                r.stuck_ns = int(j.group(j.lastindex)) * 1_000_000_000 // hz
        m = _CPU_PID.match(msg)
        if m and r.pid is None:
            r.pid, r.comm = int(m.group(2)), m.group(3)
            if r.cpu is None:
                r.cpu = int(m.group(1))
        f = _RIP.match(msg) or _FRAME.match(msg)
        if f and len(r.symbols) < 64:
            r.symbols.append(("? " if f.group(1) else "") + f.group(2))


def read_kernel_log(source: str) -> str:
    """Kernel log text from a file, or stdin for '-'."""
    if source == "-":
        return sys.stdin.read()
    p = Path(source)
    if not p.is_file():
        raise BadInput(f"{p}: no such kernel log file", "save it with: dmesg > dmesg.txt (or pass - for stdin)")
    data = p.read_bytes()
    if b"\x00" in data[:4096]:
        raise BadInput(f"{p} is binary, not kernel log text", "give the output of dmesg as text")
    return data.decode("utf-8", errors="replace")
