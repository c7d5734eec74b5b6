"""A small KVM guest driven through the phases that make KVM zap SPTEs (LAB.md "guest workload").

Pure Python on /dev/kvm (ctypes, fcntl, mmap): one VM, one vCPU in 64-bit long mode with identity-mapped
2 MiB guest page tables, guest code that writes one qword per 4 KiB page of a range and then leaves with
`out 0x10`. Phases: populate (touch the data region), madvise (MADV_DONTNEED of the upper half: mmu
notifier -> leaf zaps), touch (the upper half again), delete (memslot deleted: kvm_mmu_zap_all_fast),
close (VM destroyed: kvm_mmu_zap_all). No typer or rich here: `tdptrace record` can drive it in-process.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from tdptrace.errors import MissingCapability, TdpError

PHASES: tuple[str, ...] = ("populate", "madvise", "touch", "delete", "close")

KIB = 1024
MIB = 1024 * KIB
PAGE = 4 * KIB
HUGE = 2 * MIB
MAX_MIB = 64 * 1024  # the page-table area below CODE_GPA holds 253 page directories (253 GiB); 64 GiB is plenty


class KvmUnavailable(MissingCapability):
    """/dev/kvm is missing or cannot be opened by this user."""


class KvmApiMismatch(TdpError):
    """/dev/kvm speaks another API version or lacks a capability the exercise needs."""


class NotEnoughMemory(TdpError):
    """The guest memory cannot be allocated or would not fit in the host's available memory."""


class ExerciseFailed(TdpError):
    """The guest stopped somewhere other than its exit port (bad setup or an unsupported KVM)."""


# --------------------------------------------------------------------------------------------------------
# KVM ABI. Source: <linux/kvm.h> and <asm/kvm.h> (x86-64), KVM_API_VERSION 12. Keep in sync with those
# headers; tests/test_exercise.py checks every size, offset and ioctl number below against them.
# --------------------------------------------------------------------------------------------------------
KVM_API_VERSION = 12
KVMIO = 0xAE

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    """The kernel's _IOC(dir, KVMIO, nr, size) (asm-generic/ioctl.h: nr 8 bits, type 8, size 14, dir 2)."""
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("guest_phys_addr", ctypes.c_uint64),
                ("memory_size", ctypes.c_uint64), ("userspace_addr", ctypes.c_uint64)]


class kvm_regs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint32), ("selector", ctypes.c_uint16)] + [
        (n, ctypes.c_uint8) for n in ("type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable", "padding")]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint16), ("padding", ctypes.c_uint16 * 3)]


class kvm_sregs(ctypes.Structure):
    _fields_ = ([(n, kvm_segment) for n in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")]
                + [("gdt", kvm_dtable), ("idt", kvm_dtable)]
                + [(n, ctypes.c_uint64) for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")]
                + [("interrupt_bitmap", ctypes.c_uint64 * 4)])  # (KVM_NR_INTERRUPTS + 63) / 64


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("function", "index", "flags", "eax", "ebx", "ecx", "edx")] + [
        ("padding", ctypes.c_uint32 * 3)]


class kvm_cpuid2(ctypes.Structure):
    """Header only; the entries follow it (flexible array member)."""
    _fields_ = [("nent", ctypes.c_uint32), ("padding", ctypes.c_uint32)]


class kvm_run_io(ctypes.Structure):
    """kvm_run.io (KVM_EXIT_IO); data lives at run + data_offset."""
    _fields_ = [("direction", ctypes.c_uint8), ("size", ctypes.c_uint8), ("port", ctypes.c_uint16),
                ("count", ctypes.c_uint32), ("data_offset", ctypes.c_uint64)]


class kvm_run(ctypes.Structure):
    """The fixed head of struct kvm_run and the io member of its exit union (offset 32 on x86)."""
    _fields_ = [("request_interrupt_window", ctypes.c_uint8), ("immediate_exit", ctypes.c_uint8),
                ("padding1", ctypes.c_uint8 * 6), ("exit_reason", ctypes.c_uint32),
                ("ready_for_interrupt_injection", ctypes.c_uint8), ("if_flag", ctypes.c_uint8),
                ("flags", ctypes.c_uint16), ("cr8", ctypes.c_uint64), ("apic_base", ctypes.c_uint64),
                ("io", kvm_run_io)]


KVM_GET_API_VERSION = _ioc(_IOC_NONE, 0x00, 0)
KVM_CREATE_VM = _ioc(_IOC_NONE, 0x01, 0)
KVM_CHECK_EXTENSION = _ioc(_IOC_NONE, 0x03, 0)
KVM_GET_VCPU_MMAP_SIZE = _ioc(_IOC_NONE, 0x04, 0)
KVM_GET_SUPPORTED_CPUID = _ioc(_IOC_READ | _IOC_WRITE, 0x05, ctypes.sizeof(kvm_cpuid2))
KVM_CREATE_VCPU = _ioc(_IOC_NONE, 0x41, 0)
KVM_SET_USER_MEMORY_REGION = _ioc(_IOC_WRITE, 0x46, ctypes.sizeof(kvm_userspace_memory_region))
KVM_RUN = _ioc(_IOC_NONE, 0x80, 0)
KVM_GET_REGS = _ioc(_IOC_READ, 0x81, ctypes.sizeof(kvm_regs))
KVM_SET_REGS = _ioc(_IOC_WRITE, 0x82, ctypes.sizeof(kvm_regs))
KVM_GET_SREGS = _ioc(_IOC_READ, 0x83, ctypes.sizeof(kvm_sregs))
KVM_SET_SREGS = _ioc(_IOC_WRITE, 0x84, ctypes.sizeof(kvm_sregs))
KVM_SET_CPUID2 = _ioc(_IOC_WRITE, 0x90, ctypes.sizeof(kvm_cpuid2))

KVM_CAP_USER_MEMORY = 3
KVM_CAP_EXT_CPUID = 7

# Exit reasons by value, for messages (keep in sync with KVM_EXIT_* in <linux/kvm.h>).
KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_INTR = 10
KVM_EXIT_NAMES: dict[int, str] = {
    0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 3: "HYPERCALL", 4: "DEBUG", 5: "HLT", 6: "MMIO",
    7: "IRQ_WINDOW_OPEN", 8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR", 17: "INTERNAL_ERROR",
}

# <uapi/asm-generic/mman-common.h>
MADV_DONTNEED = 4
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MAP_NORESERVE = 0x4000

# --------------------------------------------------------------------------------------------------------
# Guest physical layout. The first 2 MiB ("system area") holds the GDT, page tables and code; the data
# region the guest writes is [DATA_GPA, size). One memslot (slot 0) maps all of it at GPA 0.
# --------------------------------------------------------------------------------------------------------
GDT_GPA = 0x0000
PML4_GPA = 0x1000
PDPT_GPA = 0x2000
PD_GPA = 0x3000          # one page directory (512 x 2 MiB) per GiB, up to CODE_GPA
CODE_GPA = 0x100000
DATA_GPA = HUGE
EXIT_PORT = 0x10

# Guest code, 64-bit. rdi = first address, rsi = end (exclusive):
#   0: 48 89 3f              mov  [rdi], rdi        ; one qword per 4 KiB page
#   3: 48 81 c7 00 10 00 00  add  rdi, 0x1000
#  10: 48 39 f7              cmp  rdi, rsi
#  13: 72 f1                 jb   0
#  15: e6 10                 out  0x10, al          ; KVM_EXIT_IO, port EXIT_PORT
#  17: f4                    hlt
#  18: eb fd                 jmp  17
GUEST_CODE = bytes.fromhex("48893f 4881c700100000 4839f7 72f1 e610 f4 ebfd")

_PTE_P, _PTE_RW, _PTE_PS = 0x1, 0x2, 0x80
_CR0_PE, _CR0_MP, _CR0_ET, _CR0_NE, _CR0_WP, _CR0_PG = 1, 2, 0x10, 0x20, 0x10000, 0x80000000
_CR4_PAE = 0x20
_EFER_LME, _EFER_LMA = 0x100, 0x400


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


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def _mem_available(meminfo: Path = Path("/proc/meminfo")) -> Optional[int]:
    """MemAvailable in bytes, or None if the kernel does not say."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * KIB
    except OSError:
        return None
    return None


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


def _ioctl(fd: int, req: int, arg: Any = 0, what: str = "") -> int:
    """fcntl.ioctl with EINTR retried and KVM errors turned into TdpError."""
    while True:
        try:
            if isinstance(arg, int):
                return fcntl.ioctl(fd, req, arg)
            return fcntl.ioctl(fd, req, arg, True)
        except InterruptedError:
            continue
        except OSError as exc:
            name = what or hex(req)
            if exc.errno == errno.ENOMEM:
                raise NotEnoughMemory(f"{name}: out of memory", "use a smaller --mib") from None
            if exc.errno in (errno.ENOTTY, errno.EINVAL, errno.ENOSYS):
                raise KvmApiMismatch(f"{name} refused by /dev/kvm ({os.strerror(exc.errno)})",
                                     "this KVM does not support what the exercise needs") from None
            raise ExerciseFailed(f"{name} failed: {os.strerror(exc.errno or 0)}") from None


def _build_system_area(base: int, size: int) -> None:
    """Write GDT, identity-mapping page tables (2 MiB pages) and guest code into guest memory at `base`."""
    gdt = (ctypes.c_uint64 * 3)(0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF)  # null, code64 (0x08), data (0x10)
    ctypes.memmove(base + GDT_GPA, gdt, ctypes.sizeof(gdt))
    n_pd = -(-size // (512 * HUGE))
    pml4 = (ctypes.c_uint64 * 512)(PDPT_GPA | _PTE_P | _PTE_RW)
    pdpt = (ctypes.c_uint64 * 512)(*[(PD_GPA + i * PAGE) | _PTE_P | _PTE_RW for i in range(n_pd)])
    ctypes.memmove(base + PML4_GPA, pml4, PAGE)
    ctypes.memmove(base + PDPT_GPA, pdpt, PAGE)
    n_2m = size // HUGE
    pds = (ctypes.c_uint64 * (n_pd * 512))(*[(i * HUGE) | _PTE_P | _PTE_RW | _PTE_PS for i in range(n_2m)])
    ctypes.memmove(base + PD_GPA, pds, ctypes.sizeof(pds))
    ctypes.memmove(base + CODE_GPA, GUEST_CODE, len(GUEST_CODE))


def _long_mode_sregs(s: kvm_sregs) -> None:
    """Turn the vCPU's reset sregs into flat 64-bit long mode with paging on (CR3 = PML4_GPA)."""
    def seg(sg: kvm_segment, sel: int, typ: int, code: bool) -> None:
        sg.base, sg.limit, sg.selector, sg.type = 0, 0xFFFFFFFF, sel, typ
        sg.present, sg.dpl, sg.s, sg.g, sg.avl, sg.unusable = 1, 0, 1, 1, 0, 0
        sg.l, sg.db = (1, 0) if code else (0, 1)

    seg(s.cs, 0x08, 11, True)
    for sg in (s.ds, s.es, s.fs, s.gs, s.ss):
        seg(sg, 0x10, 3, False)
    s.gdt.base, s.gdt.limit = GDT_GPA, 3 * 8 - 1
    s.cr3 = PML4_GPA
    s.cr4 = _CR4_PAE
    s.cr0 = _CR0_PE | _CR0_MP | _CR0_ET | _CR0_NE | _CR0_WP | _CR0_PG
    s.efer = _EFER_LME | _EFER_LMA


class _Vm:
    """File descriptors and mappings of one exercise VM; close() releases them in a safe order."""

    def __init__(self, cfg: ExerciseConfig) -> None:
        self.cfg = cfg
        self.size = cfg.mib * MIB
        self.libc = _libc()
        self.kvm = self.vm = self.vcpu = -1
        self.run: Optional[mmap.mmap] = None
        self.mem = 0
        self.map_base = self.map_len = 0
        self.slot_present = False

    # -- setup ------------------------------------------------------------------------------------------
    def open(self) -> int:
        path = self.cfg.kvm_path
        try:
            self.kvm = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(f"{path} does not exist",
                                 "load KVM (modprobe kvm_intel or kvm_amd); inside a VM enable nested "
                                 "virtualization") from None
        except PermissionError:
            raise KvmUnavailable(f"no permission to open {path}",
                                 "run as root or join the group that owns it (usually kvm)") from None
        except OSError as exc:
            raise KvmUnavailable(f"cannot open {path}: {exc.strerror}", "check that KVM is loaded") from None
        version = _ioctl(self.kvm, KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        if version != KVM_API_VERSION:
            raise KvmApiMismatch(f"{path} has KVM API version {version}, expected {KVM_API_VERSION}",
                                 "this kernel's KVM is not the one <linux/kvm.h> describes")
        for cap, name in ((KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"), (KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID")):
            if _ioctl(self.kvm, KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION") <= 0:
                raise KvmApiMismatch(f"{path} lacks {name}", "the exercise needs it")
        return version

    def alloc(self) -> None:
        avail = _mem_available()
        if avail is not None and self.size > avail - 64 * MIB:
            raise NotEnoughMemory(f"--mib {self.cfg.mib} needs {self.cfg.mib} MiB but only "
                                  f"{avail // MIB} MiB are available", "use a smaller --mib")
        self.map_len = self.size + HUGE
        addr = self.libc.mmap(None, self.map_len, mmap.PROT_READ | mmap.PROT_WRITE,
                              mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise NotEnoughMemory(f"cannot map {self.cfg.mib} MiB of guest memory: "
                                  f"{os.strerror(ctypes.get_errno())}", "use a smaller --mib")
        self.map_base = addr
        # 2 MiB-align the guest memory so that THP (and so 2 MiB SPTEs) can back it.
        self.mem = (addr + HUGE - 1) & ~(HUGE - 1)
        advice = MADV_HUGEPAGE if self.cfg.hugepages else MADV_NOHUGEPAGE
        if self.libc.madvise(self.mem, self.size, advice) != 0:
            err = ctypes.get_errno()
            if self.cfg.hugepages:
                raise MissingCapability(f"madvise(MADV_HUGEPAGE) failed: {os.strerror(err)}",
                                        "the kernel needs CONFIG_TRANSPARENT_HUGEPAGE for --hugepages")
        _build_system_area(self.mem, self.size)

    def create(self) -> None:
        try:
            self.vm = _ioctl(self.kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM")
        except ExerciseFailed as exc:
            raise KvmUnavailable(exc.message, "is another hypervisor holding VMX/SVM, or KVM misconfigured?") \
                from None
        self.set_slot(self.size)
        self.vcpu = _ioctl(self.vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU")
        run_size = _ioctl(self.kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
        self.run = mmap.mmap(self.vcpu, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._set_cpuid()
        sregs = kvm_sregs()
        _ioctl(self.vcpu, KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        _long_mode_sregs(sregs)
        _ioctl(self.vcpu, KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    def _set_cpuid(self) -> None:
        """Give the vCPU the host-supported CPUID (long mode must be advertised for EFER.LME)."""
        n = 128
        while True:
            buf = (ctypes.c_uint8 * (ctypes.sizeof(kvm_cpuid2) + n * ctypes.sizeof(kvm_cpuid_entry2)))()
            kvm_cpuid2.from_buffer(buf).nent = n
            try:
                fcntl.ioctl(self.kvm, KVM_GET_SUPPORTED_CPUID, buf, True)
                break
            except OSError as exc:
                if exc.errno == errno.E2BIG and n < 4096:
                    n *= 2
                    continue
                raise KvmApiMismatch(f"KVM_GET_SUPPORTED_CPUID failed: {exc.strerror}",
                                     "this KVM does not support what the exercise needs") from None
        _ioctl(self.vcpu, KVM_SET_CPUID2, buf, "KVM_SET_CPUID2")

    def set_slot(self, size: int) -> None:
        """KVM_SET_USER_MEMORY_REGION for slot 0; size 0 deletes the slot."""
        region = kvm_userspace_memory_region(0, 0, 0, size, self.mem if size else 0)
        _ioctl(self.vm, KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")
        self.slot_present = size > 0

    # -- running ----------------------------------------------------------------------------------------
    def run_guest(self, start: int, end: int) -> int:
        """Let the guest write one qword per page of [start, end); returns the number of KVM_RUN calls."""
        regs = kvm_regs(rip=CODE_GPA, rflags=0x2, rdi=start, rsi=end, rsp=DATA_GPA)
        _ioctl(self.vcpu, KVM_SET_REGS, regs, "KVM_SET_REGS")
        assert self.run is not None
        head = kvm_run.from_buffer(self.run)
        try:
            for calls in range(1, 1_000_000):
                _ioctl(self.vcpu, KVM_RUN, 0, "KVM_RUN")
                reason = head.exit_reason
                if reason == KVM_EXIT_IO and head.io.port == EXIT_PORT:
                    return calls
                if reason != KVM_EXIT_INTR:
                    _ioctl(self.vcpu, KVM_GET_REGS, regs, "KVM_GET_REGS")
                    raise ExerciseFailed(
                        f"guest stopped with KVM_EXIT_{KVM_EXIT_NAMES.get(reason, reason)} at rip "
                        f"{regs.rip:#x}", "this KVM cannot run the long-mode test guest")
            raise ExerciseFailed("guest did not reach its exit port")
        finally:
            del head

    def madvise_dontneed(self, offset: int, length: int) -> None:
        if self.libc.madvise(self.mem + offset, length, MADV_DONTNEED) != 0:
            raise ExerciseFailed(f"madvise(MADV_DONTNEED) failed: {os.strerror(ctypes.get_errno())}")

    def close_vm(self) -> None:
        """Drop the kvm_run mapping, vCPU and VM descriptors: the last one destroys the VM."""
        if self.run is not None:
            self.run.close()
            self.run = None
        for name in ("vcpu", "vm"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def close(self) -> None:
        self.close_vm()
        if self.kvm >= 0:
            os.close(self.kvm)
            self.kvm = -1
        if self.map_base:
            self.libc.munmap(self.map_base, self.map_len)
            self.map_base = self.mem = 0


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
    vm = _Vm(config)
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
