"""A VM's guest memory layout and what it does, as phases: which gfn ranges get mapped, then which zaps run.

Ranges, not pages: a 1 TiB VM fully touched is one range, a 'spread' VM is one range per 2 MiB region, so the
description stays small however large the VM is.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from tdptrace.errors import BadInput

PAGE = 4096
BACKING_LEVEL = {"4k": 1, "2m": 2, "1g": 3}
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'64G', '1T', '512M', '128MiB' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
    if not m:
        raise BadInput(f"cannot read size '{text}'", "write it like 128M, 64G or 1T (powers of 1024)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


@dataclass
class GuestLayout:
    """Guest memory: size, backing page size, paging levels of the TDP root, and which part the guest touched.

    populated: fraction of guest memory touched. pattern 'contiguous' touches the first part of memory;
    'spread' touches the first `populated` share of every 2 MiB region (every level-1 table in use, each
    partly filled). extra_pages: gfns touched before the data (e.g. the guest's own page tables and code).
    """

    size_bytes: int
    backing: str = "4k"
    paging: int = 4
    populated: float = 1.0
    pattern: str = "contiguous"
    first_data_gfn: int = 0
    extra_pages: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.backing not in BACKING_LEVEL:
            raise BadInput(f"unknown backing '{self.backing}'", "use 4k, 2m or 1g")
        if self.paging not in (4, 5):
            raise BadInput(f"paging must be 4 or 5 levels, not {self.paging}", "use --paging 4 or --paging 5")
        if not 0.0 <= self.populated <= 1.0:
            raise BadInput(f"populated fraction {self.populated} is outside 0..1", "give a fraction such as 0.5")
        if self.pattern not in ("contiguous", "spread"):
            raise BadInput(f"unknown pattern '{self.pattern}'", "use contiguous or spread")
        if self.size_bytes < PAGE or self.size_bytes % PAGE:
            raise BadInput(f"guest size {self.size_bytes} is not a positive multiple of 4 KiB",
                           "give a size like 128M or 64G")
        if self.size_bytes > (1 << 52) or (self.paging == 4 and self.size_bytes > (1 << 48)):
            raise BadInput(f"guest size {self.size_bytes >> 30} GiB does not fit {self.paging}-level paging",
                           "use --paging 5 or a smaller size")

    @property
    def pages(self) -> int:
        return self.size_bytes // PAGE

    @property
    def level(self) -> int:
        """Level of the leaf SPTEs backing guest memory."""
        return BACKING_LEVEL[self.backing]

    def touched(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) gfn ranges the guest touches, extra pages first."""
        extra = np.asarray(self.extra_pages, dtype=np.int64)
        lo = self.first_data_gfn
        span = self.pages - lo
        if self.pattern == "contiguous":
            s = np.array([lo], dtype=np.int64)
            e = np.array([lo + int(round(span * self.populated))], dtype=np.int64)
        else:
            region = 512
            first = -(-lo // region) * region
            s = np.arange(first, self.pages, region, dtype=np.int64)
            e = s + int(np.ceil(region * self.populated))
            e = np.minimum(e, self.pages)
        keep = e > s
        return np.concatenate([extra, s[keep]]), np.concatenate([extra + 1, e[keep]])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["extra_pages"] = list(self.extra_pages)
        return d


@dataclass
class Phase:
    """One step of the workload. op: touch (map [start, end) or the layout's touched ranges when start is
    None), unmap / madvise (mmu-notifier zap of [start, end)), delete_slot, teardown."""

    name: str
    op: str
    start: int | None = None
    end: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


OPS = ("touch", "unmap", "madvise", "delete_slot", "teardown")
SCENARIOS = ("teardown", "delete-slot", "unmap", "madvise")


@dataclass
class Workload:
    """A layout and the phases run on it."""

    layout: GuestLayout
    phases: list[Phase] = field(default_factory=list)
    name: str = "custom"

    def to_dict(self) -> dict:
        return {"name": self.name, "layout": self.layout.to_dict(), "phases": [p.to_dict() for p in self.phases]}


def scenario(layout: GuestLayout, name: str, start: int | None = None, end: int | None = None) -> Workload:
    """Populate the layout, then one zap scenario: teardown, delete-slot, unmap or madvise of [start, end)
    (default: the whole guest)."""
    if name not in SCENARIOS:
        raise BadInput(f"unknown scenario '{name}'", f"choose one of {', '.join(SCENARIOS)}")
    phases = [Phase("populate", "touch")]
    if name in ("unmap", "madvise"):
        s = 0 if start is None else start
        e = layout.pages if end is None else end
        if not 0 <= s < e:
            raise BadInput(f"empty or negative range {s:#x}-{e:#x}", "give START < END in gfns")
        phases.append(Phase(name, name, s, e))
    else:
        phases.append(Phase(name, name.replace("-", "_")))
    return Workload(layout, phases, name=name)


# The lab's guest (tdptrace/lab/kvmtouch.c, docs/lab.md "Reference traces"): identity-mapped page tables at gfns
# 1-3 and guest code at gfn 8 sit in the first 2 MiB; data pages start at 2 MiB. Seen in the reference traces:
# the first level-1 installs are gfns 1, 2, 3, 8, then 0x200 upwards.
KVMTOUCH_EXTRA_PAGES = (1, 2, 3, 8)
KVMTOUCH_FIRST_DATA_GFN = 0x200


def kvmtouch(mib: int, thp: bool, paging: int = 4) -> Workload:
    """The lab workload: touch every data page, madvise(MADV_DONTNEED) the upper half, touch it again,
    delete the memslot, close the VM."""
    layout = GuestLayout(mib << 20, backing="2m" if thp else "4k", paging=paging,
                         first_data_gfn=KVMTOUCH_FIRST_DATA_GFN, extra_pages=KVMTOUCH_EXTRA_PAGES)
    half = layout.pages // 2
    phases = [
        Phase("phase1-touch-all", "touch"),
        Phase("phase2-madvise-dontneed", "madvise", half, layout.pages),
        Phase("phase3-retouch-upper-half", "touch", half, layout.pages),
        Phase("phase4-delete-memslot", "delete_slot"),
        Phase("phase5-close-vm", "teardown"),
    ]
    return Workload(layout, phases, name=f"kvmtouch-{mib}m{'-thp' if thp else ''}")
