"""Does a trace fit the kernel it is said to come from? Its evidence - tracepoints that fired, functions that
were probed, marker values written into SPTEs - each exists only in some releases; a claimed release outside
what the evidence allows is a contradiction, and without a claim the evidence narrows the era.

Facts by era (docs/kernel.md "Tracepoints", "Zap functions by era", "Levels and SPTE encoding"). Only sure
bounds are listed: a function that came back under the same name with another meaning (7.3's
`__handle_changed_spte`) or an end not pinned down is left open, so a real trace is never refused.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from tdptrace.errors import BadInput
from tdptrace.kernel import spte
from tdptrace.kernel.release import Version, parse_version
from tdptrace.kernel.symbols import base_symbol

_OPEN: Version = (99, 0)

# Tracepoint -> the releases [since, until) that have it.
EVENT_ERAS: dict[str, tuple[Version, Version]] = {
    "kvm_tdp_mmu_spte_changed": ((5, 11), _OPEN),
    "kvm_mmu_split_huge_page": ((5, 17), _OPEN),
    "contention_begin": ((5, 19), _OPEN),
    "contention_end": ((5, 19), _OPEN),
}

# Probed function (C name) -> the releases [since, until) whose TDP MMU has it.
FUNCTION_ERAS: dict[str, tuple[Version, Version]] = {
    "zap_gfn_range": ((5, 10), (5, 18)),
    "__kvm_tdp_mmu_zap_gfn_range": ((5, 10), (5, 18)),
    "kvm_tdp_mmu_zap_hva_range": ((5, 10), (5, 13)),
    "kvm_tdp_mmu_free_root": ((5, 10), (5, 13)),
    "kvm_tdp_mmu_put_root": ((5, 13), _OPEN),
    "kvm_tdp_mmu_unmap_gfn_range": ((5, 13), _OPEN),
    "kvm_tdp_mmu_zap_invalidated_roots": ((5, 13), _OPEN),
    "kvm_tdp_mmu_zap_leafs": ((5, 18), _OPEN),
    "tdp_mmu_zap_leafs": ((5, 18), _OPEN),
    "__tdp_mmu_zap_root": ((5, 18), _OPEN),
    "tdp_mmu_zap_root": ((5, 18), _OPEN),
    "kvm_tdp_mmu_zap_sp": ((5, 18), (6, 18)),
    "kvm_tdp_mmu_zap_possible_nx_huge_page": ((6, 18), _OPEN),
    "__cond_resched_rwlock_read": ((5, 12), _OPEN),
    "__cond_resched_rwlock_write": ((5, 12), _OPEN),
}

# Values only one era writes into an SPTE (new value of a change) -> [since, until), and what they are.
MARKER_ERAS: dict[int, tuple[Version, Version, str]] = {
    int(spte.LEGACY_REMOVED_SPTE): ((5, 11), (5, 13), "the removed marker 1<<59"),
    spte.REMOVED_SPTE_5_13: ((5, 13), (6, 10), "the removed marker 0x5a0"),
    spte.FROZEN_SPTE_6_10: ((6, 10), (7, 3), "the frozen marker 0x80000000000005a0"),
    spte.FROZEN_SPTE_7_3: ((7, 1), _OPEN, "the frozen marker 0x80000000000001a0"),
    spte.SHADOW_NONPRESENT_VALUE: ((6, 10), _OPEN, "the non-present value 1<<63"),
}
_MARKERS = np.array(sorted(MARKER_ERAS), dtype=np.uint64)


@dataclass
class Evidence:
    """What a trace shows about its kernel, gathered block by block."""

    events: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    markers: set[int] = field(default_factory=set)

    def add(self, events: Iterable[str] = (), functions: Iterable[str] = (),
            new_sptes: np.ndarray | None = None) -> None:
        """Fold one block in: event names, probed functions (compiler copies named by their C name), the new
        values of its SPTE changes."""
        self.events.update(e for e in events if e in EVENT_ERAS)
        self.functions.update(f for f in map(base_symbol, functions) if f in FUNCTION_ERAS)
        if new_sptes is not None and len(new_sptes):
            vals = np.asarray(new_sptes, dtype=np.uint64)
            # five markers: one comparison pass each, where isin would sort every block's values
            self.markers.update(int(m) for m in _MARKERS if int(m) not in self.markers and (vals == m).any())

    def facts(self) -> list[tuple[str, Version, Version]]:
        """(what the trace shows, since, until) for each piece of evidence."""
        out = [(f"{e} events", *EVENT_ERAS[e]) for e in sorted(self.events)]
        # the most era-specific functions first (latest to appear, then first to go)
        funcs = sorted(self.functions, key=lambda f: (tuple(-x for x in FUNCTION_ERAS[f][0]), FUNCTION_ERAS[f][1], f))
        out += [(f"probes on {f}", *FUNCTION_ERAS[f]) for f in funcs]
        out += [(f"{MARKER_ERAS[m][2]} in SPTEs", MARKER_ERAS[m][0], MARKER_ERAS[m][1]) for m in sorted(self.markers)]
        return out

    def era(self) -> tuple[Version, Version] | None:
        """The releases [since, until) every piece of evidence allows; None without evidence."""
        facts = self.facts()
        if not facts:
            return None
        return max(f[1] for f in facts), min(f[2] for f in facts)


class KernelContradiction(BadInput):
    """The trace holds what the claimed kernel release cannot produce."""


def _span(since: Version, until: Version) -> str:
    lo = f"{since[0]}.{since[1]}"
    if until == _OPEN:
        return f"{lo} or later"
    last = (until[0], until[1] - 1) if until[1] > 0 else None
    hi = f"{last[0]}.{last[1]}" if last else f"before {until[0]}.{until[1]}"
    return lo if hi == lo else f"{lo} to {hi}"


def contradictions(release: str, evidence: Evidence) -> list[str]:
    """What the trace holds that kernel `release` does not have, each said in a phrase."""
    version = parse_version(release)
    if version is None:
        return []
    return [f"{what} ({_span(since, until)})" for what, since, until in evidence.facts()
            if not since <= version < until]


def check(release: str, evidence: Evidence) -> None:
    """Raise KernelContradiction (one line, exit 2) when the trace contradicts kernel `release`."""
    found = contradictions(release, evidence)
    if found:
        why = " and ".join(found[:3]) + (f" (and {len(found) - 3} more)" if len(found) > 3 else "")
        era = evidence.era()
        fits = _span(*era) if era and era[0] < era[1] else "no single release"
        raise KernelContradiction(f"--kernel {release} contradicts the trace: it holds {why}, which {release} "
                                  "does not have", f"the trace fits {fits}; give that release, or leave --kernel out")


def guess(evidence: Evidence) -> str | None:
    """A sentence on the era the evidence allows (for a trace imported without --kernel); None without any."""
    era = evidence.era()
    if era is None:
        return None
    if era[0] >= era[1]:
        return "the trace's evidence fits no single kernel release: " + "; ".join(
            f"{w} ({_span(s, u)})" for w, s, u in evidence.facts())
    basis = ", ".join(w for w, _, _ in evidence.facts())
    return f"kernel release not given; the trace's evidence ({basis}) says {_span(*era)}"
