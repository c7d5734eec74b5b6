"""The `trace-cmd report` text format: tracefs-like lines, named through kallsyms, lost markers counted.

  cpus=2
              kvmx-11704 [001]  1374.498146: kvm_mmu_get_page:     new sp gfn 1 4 q0 wux !pae nxe wp root 0 sync
  CPU:1 [37 EVENTS DROPPED]
With -l (latency format) the CPU and flags run together: "kvmx-11704   1...1.  1374.498146: ..."; a trace
recorded into a tracefs instance prefixes each event with "INSTANCE: ".
Lost markers come from trace-cmd's trace-read.c: 'CPU:%d [%lld EVENTS DROPPED]' and, when the count is
unknown, 'CPU:%d [EVENTS DROPPED]' (counted as 1: at least one event was lost there); a bare
'[N EVENTS DROPPED]' is counted on CPU -1 (unknown).
"""
from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from tdptrace.importers import libtraceevent, tracefs
from tdptrace.importers.kallsyms import Kallsyms
from tdptrace.importers.kprobe_events import KprobeEvent
from tdptrace.importers.tracefs import ParsedBlock

# Lines trace-cmd prints besides events: the header and per-file notes (treated like tracefs '#' comments).
_NOTE_RE = r"^\s*(?:cpus=\d+|version = \d+|CPU \d+ is empty)\s*$"
_DROPPED_RE = r"^\s*CPU:\s*(\d+)\s+\[(\d+) EVENTS DROPPED\]\s*$"
_DROPPED_UNKNOWN_RE = r"^\s*CPU:\s*(\d+)\s+\[EVENTS DROPPED\]\s*$"
# Without the CPU (older trace-cmd): counted on CPU -1, "unknown".
_DROPPED_NO_CPU_RE = r"^\s*\[(\d+) EVENTS DROPPED\]\s*$"
_NO_CPU = 65535
_LATENCY_RE = r"^(\s*\S.*-\d+)\s+(\d+)(\S{4,6})\s+(\d+\.\d+: )"
# trace-cmd prints no flags column; giving each line a neutral one lets the tracefs fast path split it (2.7x
# faster than its full regex, bench/import_formats_bench.py).
_NO_FLAGS_RE = r"^([^:]*\] +)(\d+\.\d+: )"
# A trace recorded into a tracefs instance (record/extract -B NAME) prefixes every event with "NAME: ".
_INSTANCE_RE = r"^[^\s:]+: +(\S.*-\d+ +\[\d+\] )"

_PROBE_RE = re.compile(r"^(?:[^\s:]+: +)?\s*\S.*-\d+\s+\[\d+\]\s+\d+\.\d+: [^\s:]+: {2,}\S", re.M)
_RAW_KPROBE_RE = re.compile(r"^\s*\S.*-\d+\s+\[\d+\]\s+\d+\.\d+: [^\s:]+:\s+\([0-9a-f]{8,16}(?: <- [0-9a-f]{8,16})?\)",
                            re.M)


def looks_like(head: str) -> bool:
    """True for trace-cmd report text: its 'cpus=N' header, drop markers, padded event names or raw kprobes."""
    first = next((ln for ln in head.splitlines() if ln.strip()), "")
    if re.match(r"^\s*(?:cpus=\d+|version = \d+)\s*$", first):
        return True
    if re.search(r"^\s*CPU:\s*\d+\s+\[(?:\d+ )?EVENTS DROPPED\]", head, re.M):
        return True
    return bool(_PROBE_RE.search(head) or _RAW_KPROBE_RE.search(head))


def _rewrite(lines: pa.Array, candidates: pa.Array, pattern: str, replacement: str) -> pa.Array:
    """Regex-replace only in the candidate lines (a cheap literal test picks them), leaving the rest as is."""
    candidates = pc.fill_null(candidates, False)
    if not pc.any(candidates).as_py():
        return lines
    new = pc.replace_substring_regex(lines.filter(candidates), pattern, replacement)
    return pc.replace_with_mask(lines, candidates, new)


def normalise_lines(lines: pa.Array) -> pa.Array:
    """Rewrite trace-cmd's own line kinds into their tracefs equivalents (vectorised)."""
    dropped = pc.match_substring(lines, "EVENTS DROPPED]")
    lines = _rewrite(lines, dropped, _DROPPED_RE, r"CPU:\1 [LOST \2 EVENTS]")
    lines = _rewrite(lines, dropped, _DROPPED_UNKNOWN_RE, r"CPU:\1 [LOST 1 EVENTS]")
    lines = _rewrite(lines, dropped, _DROPPED_NO_CPU_RE, rf"CPU:{_NO_CPU} [LOST \1 EVENTS]")
    note = pc.or_(pc.or_(pc.starts_with(lines, "cpus="), pc.starts_with(lines, "version = ")),
                  pc.starts_with(lines, "CPU "))
    lines = _rewrite(lines, note, _NOTE_RE, "# \\0")
    lines = _rewrite(lines, pc.invert(pc.starts_with(lines, " ")), _INSTANCE_RE, r"\1")
    lines = _rewrite(lines, pc.invert(pc.match_substring(lines, "] ")), _LATENCY_RE, r"\1 [\2] \3 \4")
    return pc.replace_substring_regex(lines, _NO_FLAGS_RE, r"\1.... \2")


def line_parser(kallsyms: Kallsyms | None, probes: dict[str, KprobeEvent] | None):
    """A LineParser for trace-cmd report text; kallsyms/probes name raw kprobe addresses."""

    def parse(lines: pa.Array, seq0: int) -> ParsedBlock:
        block = tracefs.parse_lines(normalise_lines(lines), seq0)
        block.lost = [(-1 if cpu == _NO_CPU else cpu, n, seq) for cpu, n, seq in block.lost]
        events = libtraceevent.strip_body(block.events)
        events = libtraceevent.translate_kvm_plugin(events)
        block.events = libtraceevent.name_kprobes(events, kallsyms, probes)
        return block

    return parse
