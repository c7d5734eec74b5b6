"""Hand-made tracefs text for tests: one function per line kind, so each docs/metrics.md rule gets a tiny trace."""
from __future__ import annotations

from dataclasses import dataclass, field

HEADER = """# tracer: nop
#
# entries-in-buffer/entries-written: {n}/{n}   #P:2
#
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
"""


@dataclass
class Trace:
    """Accumulates tracefs lines with increasing microsecond timestamps."""

    lines: list[str] = field(default_factory=list)
    t_us: int = 1_000_000

    def _line(self, event: str, body: str, tid: int = 100, cpu: int = 0, comm: str = "qemu", dt: int = 1) -> None:
        self.t_us += dt
        s, us = divmod(self.t_us, 1_000_000)
        self.lines.append(f"{comm:>16}-{tid:<7} [{cpu:03d}] ...1. {s:5d}.{us:06d}: {event}: {body}")

    def spte(self, gfn: int, level: int, old: int, new: int, **kw) -> "Trace":
        self._line("kvm_tdp_mmu_spte_changed", f"as id 0 gfn {gfn:x} level {level} old_spte {old:x} new_spte {new:x}",
                   **kw)
        return self

    def enter(self, fn: str, args: str = "", **kw) -> "Trace":
        self._line("p_" + fn.strip("_"), f"({fn}+0x0/0x1e0 [kvm]) {args}".rstrip(), **kw)
        return self

    def ret(self, fn: str, caller: str = "kvm_caller", args: str = "", **kw) -> "Trace":
        self._line("r_" + fn.strip("_"), f"({caller}+0x74/0x90 [kvm] <- {fn}) {args}".rstrip(), **kw)
        return self

    def yield_(self, write: bool = True, ret: int | None = 1, away: int = 5, **kw) -> "Trace":
        fn = "__cond_resched_rwlock_write" if write else "__cond_resched_rwlock_read"
        self._line("cr", f"({fn}+0x0/0x50)", **kw)
        if ret is not None:
            kw = {k: v for k, v in kw.items() if k != "dt"}
            self._line("cr_ret", f"(tdp_mmu_zap_leafs+0x196/0x1e0 [kvm] <- {fn}) ret={ret}", dt=away, **kw)
        return self

    def get_page(self, gfn: int, level: int, created: bool = True, **kw) -> "Trace":
        self._line("kvm_mmu_get_page", f"sp gen 0 gfn {gfn:x} l{level} 8-byte q0 direct wux nxe ad root 0 sync "
                   f"{'new' if created else 'existing'}", **kw)
        return self

    def prepare_zap(self, gfn: int, level: int, **kw) -> "Trace":
        self._line("kvm_mmu_prepare_zap_page", f"sp gen 0 gfn {gfn:x} l{level} 8-byte q0 direct wux nxe ad root 0 sync",
                   **kw)
        return self

    def raw(self, line: str) -> "Trace":
        self.lines.append(line)
        return self

    def text(self, header: bool = True) -> str:
        n = sum(1 for ln in self.lines if not ln.startswith("CPU:"))
        return (HEADER.format(n=n) if header else "") + "\n".join(self.lines) + "\n"


# SPTE values, 5.13+ encoding: present = bit 11; non-leaf points to a table; leaf at level > 1 has bit 7.
P = 1 << 11
REMOVED = 0x5A0
FROZEN_610 = 0x80000000000005A0
NONPRESENT_610 = 1 << 63


def nonleaf(pfn: int) -> int:
    return (pfn << 12) | P | 0x7


def leaf4k(pfn: int) -> int:
    return (pfn << 12) | P | 0xE07


def leaf2m(pfn: int) -> int:
    return (pfn << 12) | P | 0x80 | 0xE07
