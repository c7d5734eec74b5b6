"""Render tracefs text the way `trace-cmd report` and `perf script` print the same events (for importer tests).

What differs, each taken from the tools' real output on this kind of host (tests/data/*.txt) and their sources:
- trace-cmd: 'cpus=N' header, no flags column, event names padded, the kvm plugin's page-table wording
  ("new sp gfn 1 4 q0 ..."; kvm_mmu_prepare_zap_page without its gfn), 'CPU:N [K EVENTS DROPPED]'.
- perf: 'comm tid [cpu] time: group:event:' (right-aligned event), '[FAILED TO PARSE] name=value' raw fields for
  the page-table events, 'PERF_RECORD_LOST lost N'.
- both: kprobe locations as raw addresses - entry '(%lx)' of the probed address, return '(%lx <- %lx)' of the
  probed FUNCTION then the return address (kernel/trace/trace_probe.c __set_print_fmt).
A made-up kallsyms lays the symbols seen in the trace out contiguously so 'sym+0xoff/0xsize' resolves back exactly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

LINE = re.compile(r"^\s*(?P<comm>.*)-(?P<tid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[(?P<cpu>\d+)\]\s+(?:\S{4,6}\s+)?"
                  r"(?P<ts>\d+\.\d+):\s+(?P<event>[^:\s]+):\s?(?P<body>.*)$")
LOC = re.compile(r"(?P<sym>[^\s()+]+)\+0x(?P<off>[0-9a-f]+)/0x(?P<size>[0-9a-f]+)(?: \[(?P<mod>[^\]]+)\])?")
ENTRY = re.compile(r"^\((?P<loc>[^()]*?)\)(?P<args>.*)$")
RETURN = re.compile(r"^\((?P<loc>[^()]*?) <- (?P<sym>[^\s()]+)\)(?P<args>.*)$")
SP = re.compile(r"^sp gen (?P<gen>\d+) gfn (?P<gfn>[0-9a-f]+) l(?P<level>\d+) (?P<b>\d)-byte q(?P<q>\d+)"
                r"(?P<direct> direct)? (?P<access>\S+)(?P<invalid> invalid)? (?P<nx>!?)nxe (?P<ad>!?)ad "
                r"root (?P<root>\d+) (?P<sync>\S+?)(?: (?P<created>new|existing))?$")
ACCESS = ["---", "--x", "w--", "w-x", "-u-", "-ux", "wu-", "wux"]
BASE = 0xFFFFFFFFC0A00000


@dataclass
class Symbols:
    """Symbols seen in kprobe bodies, laid out contiguously from BASE with their printed sizes."""

    size: dict[str, int] = field(default_factory=dict)
    module: dict[str, str] = field(default_factory=dict)
    addr: dict[str, int] = field(default_factory=dict)

    def see(self, sym: str, size: int | None, mod: str | None) -> None:
        if size is not None or sym not in self.size:
            self.size[sym] = size if size is not None else self.size.get(sym, 0x100)
        if mod:
            self.module[sym] = mod
        self.module.setdefault(sym, "")

    def layout(self) -> None:
        a = BASE
        for sym in sorted(self.size):
            self.addr[sym] = a
            a += self.size[sym]

    def kallsyms(self) -> str:
        rows = []
        for sym, a in sorted(self.addr.items(), key=lambda kv: kv[1]):
            mod = f"\t[{self.module[sym]}]" if self.module.get(sym) else ""
            rows.append(f"{a:016x} t {sym}{mod}")
        return "0000000000000000 A fixed_percpu_data\n" + "\n".join(rows) + "\n"


def _collect(lines: list[str]) -> Symbols:
    syms = Symbols()
    for ln in lines:
        m = LINE.match(ln)
        if not m or not m["body"].startswith("("):
            continue
        body = m["body"]
        r = RETURN.match(body)
        if r:
            lm = LOC.fullmatch(r["loc"])
            if lm:
                syms.see(lm["sym"], int(lm["size"], 16), lm["mod"])
            syms.see(r["sym"], None, None)
            continue
        e = ENTRY.match(body)
        if e:
            lm = LOC.fullmatch(e["loc"])
            if lm:
                syms.see(lm["sym"], int(lm["size"], 16), lm["mod"])
    syms.layout()
    return syms


def _raw_kprobe(body: str, syms: Symbols) -> str:
    r = RETURN.match(body)
    if r:
        lm = LOC.fullmatch(r["loc"])
        ret = syms.addr[lm["sym"]] + int(lm["off"], 16)
        return f"({syms.addr[r['sym']]:016x} <- {ret:016x}){r['args']}"
    e = ENTRY.match(body)
    lm = LOC.fullmatch(e["loc"])
    return f"({syms.addr[lm['sym']] + int(lm['off'], 16):016x}){e['args']}"


def _role(m: re.Match) -> int:
    """kvm_mmu_page_role word from the tracefs wording (level, 4-byte gpte, quadrant, direct, access, ...)."""
    return (int(m["level"]) | (m["b"] == "4") << 4 | int(m["q"]) << 5 | bool(m["direct"]) << 7
            | ACCESS.index(m["access"]) << 8 | bool(m["invalid"]) << 11 | (m["nx"] == "") << 12
            | (m["ad"] == "!") << 14)


def _plugin_sp(event: str, m: re.Match) -> str:
    """plugin_kvm.c: kvm_mmu_print_role, with 'new|existing sp gfn %llx ' in front for kvm_mmu_get_page."""
    role = (f"{m['level']} q{m['q']}{' direct' if m['direct'] else ''} {m['access']}"
            f"{' invalid' if m['invalid'] else ''} !pae {m['nx']}nxe wp root {m['root']} {m['sync']}")
    if event == "kvm_mmu_get_page":
        return f"{m['created'] or 'new'} sp gfn {m['gfn']} {role}"
    return role


def _raw_sp(event: str, m: re.Match) -> str:
    fields = (f"[FAILED TO PARSE] mmu_valid_gen={m['gen']} gfn={int(m['gfn'], 16)} role={_role(m)} "
              f"root_count={m['root']} unsync={int(m['sync'] == 'unsync')}")
    if event == "kvm_mmu_get_page":
        fields += f" created={int(m['created'] != 'existing')}"
    return fields


def render(text: str, tool: str, lost: dict[int, tuple[int, int]] | None = None) -> tuple[str, str]:
    """(text as `tool` ('trace-cmd' or 'perf') prints it, kallsyms naming its kprobe addresses).

    `lost` maps an event-line index to (cpu, count): a lost marker is printed before that event."""
    lines = text.splitlines()
    syms = _collect(lines)
    out = ["cpus=2"] if tool == "trace-cmd" else []
    n = 0
    for ln in lines:
        m = LINE.match(ln)
        if not m:
            continue
        if lost and n in lost:
            cpu, count = lost[n]
            out.append(f"CPU:{cpu} [{count} EVENTS DROPPED]" if tool == "trace-cmd" else
                       f"{'perf':>16} {0:>5} [{cpu:03d}] {m['ts']}: PERF_RECORD_LOST lost {count}")
        n += 1
        event, body = m["event"], m["body"]
        kprobe = body.startswith("(") and (RETURN.match(body) or ENTRY.match(body))
        sp = SP.match(body) if event in ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page") else None
        if kprobe:
            body = _raw_kprobe(body, syms)
        elif sp:
            body = _plugin_sp(event, sp) if tool == "trace-cmd" else _raw_sp(event, sp)
        if tool == "trace-cmd":
            out.append(f"{m['comm']:>16}-{m['tid']:<5} [{int(m['cpu']):03d}] {m['ts']:>12}: "
                       f"{event + ':':<21} {body}")
        else:
            group = "tdp" if kprobe else "kvmmmu"
            out.append(f"{m['comm']:>16} {m['tid']:>5} [{int(m['cpu']):03d}] {m['ts']:>12}: "
                       f"{group + ':' + event + ':':>30} {body}")
    return "\n".join(out) + "\n", syms.kallsyms()
