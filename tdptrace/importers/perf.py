"""The `perf script` text format: '<comm> [<pid>/]<tid> [<cpu>] <sec>.<frac>: [<period>] <group:event>: <body>'.

              kvmx 12170 [000]  1396.849114:         kvmmmu:kvm_mmu_get_page: [FAILED TO PARSE] mmu_valid_gen=0 ...
              kvmx 12170 [000]  1396.967700: PERF_RECORD_LOST lost 1045
Lost records print only with --show-lost-events (tdptrace passes it when it reports a perf.data itself).
PERF_RECORD_LOST_SAMPLES repeats the same losses in recent perf versions, so only PERF_RECORD_LOST counts.
"""
from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from tdptrace.importers import libtraceevent, tracefs
from tdptrace.importers.kallsyms import Kallsyms
from tdptrace.importers.kprobe_events import KprobeEvent
from tdptrace.importers.tracefs import ParsedBlock

HEADER_RE = (r"^\s*(?P<comm>.*?)\s+(?:(?P<tgid>-?\d+)/)?(?P<tid>-?\d+)\s+\[(?P<cpu>\d+)\]\s+"
             r"(?P<sec>\d+)\.(?P<frac>\d+):\s+(?:\d+\s+)?(?P<event>[^\s:]+(?::[^\s:]+)?):\s?(?P<body>.*)$")
_LOST_RE = r"^.*\[\s*(\d+)\]\s+\d+\.\d+:\s+PERF_RECORD_LOST lost (\d+)\s*$"
_NOTE_RE = r"^.*\d+\.\d+:\s+PERF_RECORD_LOST_SAMPLES\b.*$"

_PROBE_RE = re.compile(r"^\s*\S.*?\s+(?:-?\d+/)?-?\d+\s+\[\d+\]\s+\d+\.\d+:\s+(?:\d+\s+)?[^\s:]+(?::[^\s:]+)?:", re.M)


def looks_like(head: str) -> bool:
    """True when a line has perf script's header ('comm tid [cpu] time: event:', no dash before the tid)."""
    lines = [ln for ln in head.splitlines()[:60] if ln.strip() and not ln.lstrip().startswith("#")]
    return any(_PROBE_RE.match(ln) and not re.match(r"^\s*\S.*-\d+\s+(?:\(\s*[-\d]+\)\s+)?\[\d+\]", ln)
               for ln in lines[:20])


def normalise_lines(lines: pa.Array) -> pa.Array:
    """Lost records -> tracefs lost markers; LOST_SAMPLES records -> comments (vectorised; the regex runs only
    on lines a literal test picked)."""
    lost = pc.fill_null(pc.match_substring(lines, "PERF_RECORD_LOST"), False)
    if not pc.any(lost).as_py():
        return lines
    picked = pc.replace_substring_regex(lines.filter(lost), _LOST_RE, r"CPU:\1 [LOST \2 EVENTS]")
    picked = pc.replace_substring_regex(picked, _NOTE_RE, "# \\0")
    return pc.replace_with_mask(lines, lost, picked)


def line_parser(kallsyms: Kallsyms | None, probes: dict[str, KprobeEvent] | None):
    """A LineParser for perf script text; kallsyms/probes name raw kprobe addresses."""

    def parse(lines: pa.Array, seq0: int) -> ParsedBlock:
        block = tracefs.parse_lines(normalise_lines(lines), seq0, header_re=HEADER_RE)
        events = libtraceevent.strip_body(block.events)
        events = libtraceevent.translate_kvm_plugin(events)
        block.events = libtraceevent.name_kprobes(events, kallsyms, probes)
        return block

    return parse
