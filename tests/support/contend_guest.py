"""A two-vCPU contention workload that measures its own waits, for the lab's waiter check (run inside a lab
guest on its /dev/kvm, where the TDP MMU is real).

vCPU 0 populates the guest; then vCPU 1 (its own thread) writes one page per KVM_RUN over the upper half, again
and again, while the main thread zaps the upper half with madvise(MADV_DONTNEED) (mmu notifier:
tdp_mmu_zap_leafs under mmu_lock for write, then the host's own unmapping, during which KVM retries faults).
The guest times its own write with RDTSC before and after it: how long the vCPU was kept out of the guest by
that write's fault, whatever the host thread did before entering the guest. Writes one JSON object: the vCPU
thread's tid, the guest TSC rate (KVM_GET_TSC_KHZ), every run as [start_ns, end_ns, gpa, guest_tsc_ticks]
(CLOCK_MONOTONIC around KVM_RUN), and the zaps as [start_ns, end_ns].

Usage: python3 contend_guest.py MIB ROUNDS OUT.json
"""
from __future__ import annotations

import ctypes
import json
import mmap
import sys
import threading
import time

from tdptrace.lab.guest import CODE_GPA, DATA_GPA, EXIT_PORT, PAGE, Vm, _long_mode_sregs
from tdptrace.lab.kvm_uapi import (
    KVM_CREATE_VCPU,
    KVM_EXIT_IO,
    KVM_GET_SREGS,
    KVM_GET_VCPU_MMAP_SIZE,
    KVM_RUN,
    KVM_SET_REGS,
    KVM_SET_SREGS,
    _ioctl,
    kvm_regs,
    kvm_run,
    kvm_sregs,
)

KVM_GET_TSC_KHZ = 0xAEA3  # _IO(KVMIO, 0xa3)
# rdi = page to write, rsi = where to store the TSC ticks the write took:
#   rdtsc; shl rdx,32; or rax,rdx; mov r8,rax; mov [rdi],rdi; rdtsc; shl rdx,32; or rax,rdx; sub rax,r8;
#   mov [rsi],rax; out 0x10,al; hlt; jmp hlt
TIMED_WRITE = bytes.fromhex("0f31 48c1e220 4809d0 4989c0 48893f 0f31 48c1e220 4809d0 4c29c0 488906 e610 f4 ebfd")
TIMED_GPA = CODE_GPA + 0x100
RESULT_GPA = CODE_GPA + 0x1000  # below 2 MiB: mapped once, never zapped (only the upper half is)


def second_vcpu(vm: Vm) -> Vm:
    """vCPU 1 of the same VM, in long mode, as a Vm sharing the VM's memory and descriptors."""
    v = Vm.__new__(Vm)
    v.__dict__.update(vm.__dict__)
    v.vcpu = _ioctl(vm.vm, KVM_CREATE_VCPU, 1, "KVM_CREATE_VCPU")
    size = _ioctl(vm.kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
    v.run = mmap.mmap(v.vcpu, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    v._set_cpuid()
    s = kvm_sregs()
    _ioctl(v.vcpu, KVM_GET_SREGS, s, "KVM_GET_SREGS")
    _long_mode_sregs(s)
    _ioctl(v.vcpu, KVM_SET_SREGS, s, "KVM_SET_SREGS")
    return v


def main(mib: int, rounds: int, out: str) -> None:
    vm = Vm(mib)
    vm.open()
    vm.alloc()
    vm.create()
    v1 = second_vcpu(vm)
    half = vm.size // 2
    vm.run_guest(DATA_GPA, vm.size)
    runs: list[list[int]] = []
    zaps: list[list[int]] = []
    stop = threading.Event()
    tid: list[int] = []

    def faulter() -> None:
        tid.append(threading.get_native_id())
        gpa = half
        while not stop.is_set():
            t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            ticks = timed_write(gpa)
            runs.append([t0, time.clock_gettime_ns(time.CLOCK_MONOTONIC), gpa, ticks])
            gpa = gpa + PAGE if gpa + PAGE < vm.size else half

    ctypes.memmove(vm.mem + TIMED_GPA, TIMED_WRITE, len(TIMED_WRITE))
    tsc_khz = _ioctl(v1.vcpu, KVM_GET_TSC_KHZ, 0, "KVM_GET_TSC_KHZ")
    result = ctypes.c_uint64.from_address(vm.mem + RESULT_GPA)
    head = kvm_run.from_buffer(v1.run)

    def timed_write(gpa: int) -> int:
        regs = kvm_regs(rip=TIMED_GPA, rflags=0x2, rdi=gpa, rsi=RESULT_GPA, rsp=DATA_GPA)
        _ioctl(v1.vcpu, KVM_SET_REGS, regs, "KVM_SET_REGS")
        while True:
            _ioctl(v1.vcpu, KVM_RUN, 0, "KVM_RUN")
            if head.exit_reason == KVM_EXIT_IO and head.io.port == EXIT_PORT:
                return int(result.value)

    th = threading.Thread(target=faulter)
    th.start()
    time.sleep(0.5)
    for _ in range(rounds):
        t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        vm.madvise_dontneed(half, half)
        zaps.append([t0, time.clock_gettime_ns(time.CLOCK_MONOTONIC)])
        time.sleep(0.3)
    stop.set()
    th.join()
    with open(out, "w") as f:
        json.dump({"tid": tid[0], "tsc_khz": tsc_khz, "runs": runs, "zaps": zaps}, f)
    vm.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
