"""One small long-mode guest on /dev/kvm: guest physical layout, identity-mapped 2 MiB page tables, the guest
code that writes one qword per 4 KiB page, and the VM/vCPU/memslot lifecycle the exercise drives."""
from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
from pathlib import Path
from typing import Optional

from tdptrace.errors import MissingCapability
from tdptrace.lab.kvm_uapi import (
    KVM_API_VERSION,
    KVM_CAP_EXT_CPUID,
    KVM_CAP_USER_MEMORY,
    KVM_CHECK_EXTENSION,
    KVM_CREATE_VCPU,
    KVM_CREATE_VM,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_NAMES,
    KVM_GET_API_VERSION,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_GET_SUPPORTED_CPUID,
    KVM_GET_VCPU_MMAP_SIZE,
    KVM_RUN,
    KVM_SET_CPUID2,
    KVM_SET_REGS,
    KVM_SET_SREGS,
    KVM_SET_USER_MEMORY_REGION,
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    MAP_NORESERVE,
    ExerciseFailed,
    KvmApiMismatch,
    KvmUnavailable,
    NotEnoughMemory,
    _ioctl,
    _libc,
    kvm_cpuid2,
    kvm_cpuid_entry2,
    kvm_regs,
    kvm_run,
    kvm_segment,
    kvm_sregs,
    kvm_userspace_memory_region,
)

KIB = 1024
MIB = 1024 * KIB
PAGE = 4 * KIB
HUGE = 2 * MIB
MAX_MIB = 64 * 1024  # the page-table area below CODE_GPA holds 253 page directories (253 GiB); 64 GiB is plenty

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



def _mem_available(meminfo: Path = Path("/proc/meminfo")) -> Optional[int]:
    """MemAvailable in bytes, or None if the kernel does not say."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * KIB
    except OSError:
        return None
    return None


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


class Vm:
    """File descriptors and mappings of one exercise VM (`mib` MiB of guest memory, THP-backed with
    `hugepages`); close() releases them in a safe order."""

    def __init__(self, mib: int, hugepages: bool = False, kvm_path: str = "/dev/kvm") -> None:
        self.mib, self.hugepages, self.kvm_path = mib, hugepages, kvm_path
        self.size = mib * MIB
        self.libc = _libc()
        self.kvm = self.vm = self.vcpu = -1
        self.run: Optional[mmap.mmap] = None
        self.mem = 0
        self.map_base = self.map_len = 0
        self.slot_present = False

    # -- setup ------------------------------------------------------------------------------------------
    def open(self) -> int:
        path = self.kvm_path
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
            raise NotEnoughMemory(f"--mib {self.mib} needs {self.mib} MiB but only "
                                  f"{avail // MIB} MiB are available", "use a smaller --mib")
        self.map_len = self.size + HUGE
        addr = self.libc.mmap(None, self.map_len, mmap.PROT_READ | mmap.PROT_WRITE,
                              mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise NotEnoughMemory(f"cannot map {self.mib} MiB of guest memory: "
                                  f"{os.strerror(ctypes.get_errno())}", "use a smaller --mib")
        self.map_base = addr
        # 2 MiB-align the guest memory so that THP (and so 2 MiB SPTEs) can back it.
        self.mem = (addr + HUGE - 1) & ~(HUGE - 1)
        advice = MADV_HUGEPAGE if self.hugepages else MADV_NOHUGEPAGE
        if self.libc.madvise(self.mem, self.size, advice) != 0:
            err = ctypes.get_errno()
            if self.hugepages:
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
