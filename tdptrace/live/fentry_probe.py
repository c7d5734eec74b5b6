"""Whether this kernel really runs fentry programs: load and attach a do-nothing one through the raw
bpf(2) syscall (no BCC, no compiler), because BTF and a version number are not enough to know."""
from __future__ import annotations

import ctypes
import errno
import os

# <uapi/linux/bpf.h>: bpf(2) commands and the values the fentry probe needs.
_NR_BPF = 321  # x86-64
BPF_PROG_LOAD = 5
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_FENTRY = 24


def probe_fentry(functions: tuple[str, ...]) -> tuple[bool, str]:
    """Load (and attach, then detach) a do-nothing fentry program on the first function with a vmlinux BTF
    id, through libbpf's BTF lookup and the raw bpf(2) syscall: the only sure way to know fentry works."""
    try:
        libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        return False, "libbpf.so.1 not found (apt install libbpf1) to probe fentry"
    libbpf.libbpf_find_vmlinux_btf_id.argtypes = [ctypes.c_char_p, ctypes.c_int]
    btf_id, func = -1, ""
    for func in functions:
        btf_id = libbpf.libbpf_find_vmlinux_btf_id(func.encode(), BPF_TRACE_FENTRY)
        if btf_id > 0:
            break
    if btf_id <= 0:
        return False, f"none of {', '.join(functions)} has a vmlinux BTF id"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    insns = (ctypes.c_uint64 * 2)(0xB7, 0x95)  # r0 = 0; exit
    lic = ctypes.create_string_buffer(b"GPL")
    attr = (ctypes.c_uint8 * 128)()
    u32 = (ctypes.c_uint32 * 32).from_buffer(attr)
    u64 = (ctypes.c_uint64 * 16).from_buffer(attr)
    u32[0], u32[1] = BPF_PROG_TYPE_TRACING, 2
    u64[1], u64[2] = ctypes.addressof(insns), ctypes.addressof(lic)
    u32[68 // 4] = BPF_TRACE_FENTRY      # expected_attach_type
    u32[108 // 4] = btf_id               # attach_btf_id
    fd = libc.syscall(_NR_BPF, BPF_PROG_LOAD, ctypes.byref(attr), 120)
    if fd < 0:
        err = ctypes.get_errno()
        return False, f"the kernel refuses fentry programs: load on {func} gave {errno.errorcode.get(err, err)}"
    try:
        open_attr = (ctypes.c_uint64 * 2)(0, fd)  # name = NULL, prog_fd
        link = libc.syscall(_NR_BPF, BPF_RAW_TRACEPOINT_OPEN, ctypes.byref(open_attr), 16)
        if link < 0:
            err = ctypes.get_errno()
            return False, f"fentry loads but attaching to {func} gave {errno.errorcode.get(err, err)}"
        os.close(link)
    finally:
        os.close(fd)
    return True, f"loaded and attached a test program on {func}"
