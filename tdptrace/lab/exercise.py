"""A small KVM guest driven through the phases that make KVM zap SPTEs (docs/lab.md "guest workload").

Pure Python on /dev/kvm (ctypes, fcntl, mmap): one VM, one vCPU in 64-bit long mode with identity-mapped
2 MiB guest page tables, guest code that writes one qword per 4 KiB page of a range and then leaves with
`out 0x10`. Phases: populate (touch the data region), madvise (MADV_DONTNEED of the upper half: mmu
notifier -> leaf zaps), touch (the upper half again), delete (memslot deleted: kvm_mmu_zap_all_fast),
close (VM destroyed: kvm_mmu_zap_all). No typer or rich here: `tdptrace record` can drive it in-process.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from tdptrace.errors import TdpError
from tdptrace.lab.guest import DATA_GPA, MAX_MIB, PAGE, Vm

PHASES: tuple[str, ...] = ("populate", "madvise", "touch", "delete", "close")



@dataclass(frozen=True)
class ExerciseConfig:
    """What to run: guest memory size, THP backing, how long to keep the VM before closing, which phases."""

    mib: int = 64
    hugepages: bool = False
    hold_s: float = 0.0
    phases: tuple[str, ...] = PHASES
    kvm_path: str = "/dev/kvm"

    def validate(self) -> None:
        """Raise TdpError for values the guest layout cannot take."""
        if self.mib < 4 or self.mib % 4 or self.mib > MAX_MIB:
            raise TdpError(f"--mib {self.mib} is not usable",
                           f"give a multiple of 4 between 4 and {MAX_MIB} (whole 2 MiB pages in each half)")
        bad = [p for p in self.phases if p not in PHASES]
        if bad:
            raise TdpError(f"unknown phase {', '.join(bad)}", f"choose from {', '.join(PHASES)}")
        if not 0 <= self.hold_s <= 86400:  # also NaN and inf
            raise TdpError(f"--hold {self.hold_s} is not usable", "give seconds between 0 and 86400")


@dataclass
class PhaseResult:
    """One phase: its wall time, guest pages written (populate/touch) or bytes released, and a short note."""

    name: str
    start_ns: int
    duration_ns: int
    pages: int = 0
    bytes: int = 0
    exits: int = 0
    note: str = ""


@dataclass
class ExerciseReport:
    """What the exercise did: layout, host backing, and one PhaseResult per phase run (in order)."""

    config: ExerciseConfig
    pid: int
    api_version: int
    guest_bytes: int
    data_gpa: int
    upper_gpa: int
    thp_mode: str
    host_addr: int = 0
    anon_huge_kib: Optional[int] = None  # AnonHugePages of the guest mapping after the guest ran
    phases: list[PhaseResult] = field(default_factory=list)
    total_ns: int = 0

    def phase(self, name: str) -> Optional[PhaseResult]:
        """The result of phase `name`, or None if it was not run."""
        return next((p for p in self.phases if p.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (`tdptrace exercise --json`)."""
        d = asdict(self)
        d["config"]["phases"] = list(self.config.phases)
        return d


def _thp_mode(path: Path = Path("/sys/kernel/mm/transparent_hugepage/enabled")) -> str:
    """The bracketed transparent hugepage mode (always/madvise/never), or "absent"."""
    try:
        text = path.read_text()
    except OSError:
        return "absent"
    return text[text.index("[") + 1:text.index("]")] if "[" in text else text.strip()


def _anon_huge_kib(addr: int) -> Optional[int]:
    """AnonHugePages (KiB) of the mapping that starts at `addr`, from /proc/self/smaps."""
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return None
    m = re.search(rf"^{addr:x}-[0-9a-f]+ .*?^AnonHugePages:\s+(\d+) kB", text, re.M | re.S)
    return int(m.group(1)) if m else None


def run_exercise(config: ExerciseConfig,
                 on_phase: Optional[Callable[[PhaseResult], None]] = None,
                 on_start: Optional[Callable[[ExerciseReport], None]] = None) -> ExerciseReport:
    """Create the VM, run the selected phases in their fixed order, close the VM; `on_start` sees the report
    once the VM exists (so errors come before any output), `on_phase` each phase's result.

    The VM is always closed at the end (the "close" phase is timed and reported only when selected);
    --hold waits just before closing.
    """
    config.validate()
    t0 = time.perf_counter_ns()
    vm = Vm(config.mib, config.hugepages, config.kvm_path)
    size = vm.size
    upper = size // 2
    report = ExerciseReport(config=config, pid=os.getpid(), api_version=0, guest_bytes=size, data_gpa=DATA_GPA,
                            upper_gpa=upper, thp_mode=_thp_mode())
    selected = set(config.phases)

    def timed(name: str, body: Callable[[PhaseResult], None]) -> None:
        res = PhaseResult(name=name, start_ns=time.perf_counter_ns() - t0, duration_ns=0)
        start = time.perf_counter_ns()
        body(res)
        res.duration_ns = time.perf_counter_ns() - start
        report.phases.append(res)
        if on_phase is not None:
            on_phase(res)

    def populate(res: PhaseResult) -> None:
        res.exits = vm.run_guest(DATA_GPA, size)
        res.pages = (size - DATA_GPA) // PAGE
        res.note = f"guest wrote GPA {DATA_GPA:#x}-{size:#x}"
        report.anon_huge_kib = _anon_huge_kib(vm.mem)

    def madvise(res: PhaseResult) -> None:
        vm.madvise_dontneed(upper, size - upper)
        res.bytes = size - upper
        res.note = f"MADV_DONTNEED GPA {upper:#x}-{size:#x}"

    def touch(res: PhaseResult) -> None:
        res.exits = vm.run_guest(upper, size)
        res.pages = (size - upper) // PAGE
        res.note = f"guest wrote GPA {upper:#x}-{size:#x}"

    def delete(res: PhaseResult) -> None:
        vm.set_slot(0)
        res.bytes = size
        res.note = "memslot 0 deleted"

    def close(res: PhaseResult) -> None:
        vm.close_vm()
        res.note = "VM closed"

    try:
        report.api_version = vm.open()
        vm.alloc()
        report.host_addr = vm.mem
        vm.create()
        if on_start is not None:
            on_start(report)
        for name, body in (("populate", populate), ("madvise", madvise), ("touch", touch), ("delete", delete)):
            if name in selected:
                timed(name, body)
        if config.hold_s:
            time.sleep(config.hold_s)
        if "close" in selected:
            timed("close", close)
    finally:
        vm.close()
    report.total_ns = time.perf_counter_ns() - t0
    return report
