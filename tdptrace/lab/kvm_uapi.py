"""The KVM userspace API in ctypes (x86-64): ioctl numbers, the structures they take, and the errors an
ioctl can end in, for the exercise's small VM. Source: <linux/kvm.h>, <asm/kvm.h>, <asm-generic/ioctl.h>."""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from typing import Any

from tdptrace.errors import MissingCapability, TdpError


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
# headers; tests/lab/test_exercise.py checks every size, offset and ioctl number below against them.
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


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


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
