"""A lab scenario: which kernel, how much guest memory, 4K or 2M backing, CPU contention, extra guest work."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tdptrace.errors import BadInput

# kvmmmu events are about 65 bytes each in the ring buffer and a 4K-backed run writes roughly six per page
# (install, zap, page-table events, kprobes); all of them may land on one CPU. Margin x3.
_BYTES_PER_MIB = 256 * 6 * 65 * 3


@dataclass(frozen=True)
class Scenario:
    """Parameters of one lab run. The phases (populate, madvise half, touch again, delete memslot, close)
    are always run, `iters` times; see kvmtouch.c."""

    kernel: str = "6.1"
    mib: int = 128
    thp: bool = False
    hog: bool = False
    iters: int = 1
    base_mib: int = 0  # guest-physical base of the memory; 1024 - mib/2 makes it straddle a 1 GiB boundary
    hook: Path | None = None  # a script run in the guest alongside the workload (init.sh: /share/hook.sh)
    rootfs: Path | None = None  # a directory shared into the guest at /rootfs (e.g. a chroot with BCC)
    hook_settle_s: float = 0.0  # seconds to let the hook start before the workload
    chroot_cmd: str | None = None  # a command run inside the BCC rootfs alongside the workload (rootfs.py)
    contend_mib: int = 0  # phase 3b: MiB zapped while a second task zaps too (lock contention), 0 = no such phase
    record: str | None = None  # run `tdptrace record --backend RECORD` in the BCC rootfs for the whole run
    record_args: tuple[str, ...] = ()  # more `tdptrace record` options (tdptrace/lab/recorder.py)
    hook_ready: bool = False  # the hook creates share/out/hook_ready when the workload may start (hook_settle_s: at most)

    def __post_init__(self) -> None:
        from tdptrace.lab.kernels import spec_of

        spec_of(self.kernel)  # a clear error for an unknown kernel or a bad spec, before anything starts
        if self.mib < 8 or self.mib > 4096 or self.mib % 4:
            raise BadInput(f"--mib {self.mib}: guest memory must be a multiple of 4 MiB in [8, 4096]")
        if self.base_mib < 0 or self.base_mib % 2:
            raise BadInput(f"--base-mib {self.base_mib}: the guest-physical base must be an even number of MiB")
        if not 1 <= self.iters <= 1000:
            raise BadInput(f"--iters {self.iters} is out of range", "give 1 to 1000")
        if self.base_mib > 1 << 20:
            raise BadInput(f"--base-mib {self.base_mib} is beyond 1 TiB", "give a base below 1048576 MiB")
        if not 0 <= self.hook_settle_s <= 3600:  # also NaN and inf
            raise BadInput(f"--hook-settle {self.hook_settle_s} is out of range", "give seconds from 0 to 3600")
        if self.hook is not None and not Path(self.hook).is_file():
            raise BadInput(f"--hook {self.hook}: no such file", "give a shell script to run in the guest")
        if self.rootfs is not None and not Path(self.rootfs).is_dir():
            raise BadInput(f"--rootfs {self.rootfs}: no such directory", "build one with: tdptrace lab rootfs")
        if self.contend_mib < 0 or (self.contend_mib and self.contend_mib > self.mib // 2 - 2):
            raise BadInput(f"--contend {self.contend_mib}: the contended zap must fit in the lower half of the "
                           f"guest memory less its first 2 MiB", f"give at most {self.mib // 2 - 2} for --mib {self.mib}")
        if self.chroot_cmd and self.hook:
            raise BadInput("--chroot-cmd and --hook both want the guest's hook slot; give one")
        if self.record is not None:
            from tdptrace.lab.recorder import BACKENDS, parse_record_args

            if self.record not in BACKENDS:
                raise BadInput(f"--record {self.record!r} is unknown", f"use one of {', '.join(BACKENDS)}")
            if self.chroot_cmd or self.hook:
                raise BadInput("--record runs the recorder in the guest's hook slot; leave out --chroot-cmd and "
                               "--hook")
            parse_record_args(" ".join(self.record_args))
        elif self.record_args:
            raise BadInput("--record-args without --record", "add --record bcc or --record ftrace")

    @property
    def name(self) -> str:
        """A short name such as k6.1-512m-hog or k5.10-256m-thp."""
        from tdptrace.lab.kernels import label

        return (f"k{label(self.kernel)}-{self.mib}m" + (f"-at{self.base_mib}m" if self.base_mib else "")
                + ("-thp" if self.thp else "") + ("-hog" if self.hog else "")
                + (f"-contend{self.contend_mib}m" if self.contend_mib else ""))

    @property
    def buffer_kb(self) -> int:
        """tracefs buffer_size_kb per CPU: large enough that nothing is overwritten."""
        per_cpu = self.mib * self.iters * _BYTES_PER_MIB // 1024
        return max(32768, per_cpu if not self.thp else per_cpu // 16)

    @property
    def guest_mib(self) -> int:
        """L1 guest RAM: the L2 memory, both CPUs' trace buffers, the text dump (formatted into RAM before it
        is copied out; about one buffer's size) and room for the kernel."""
        return max(2048, self.mib + 3 * self.buffer_kb // 1024 + 768)

    @property
    def timeout_s(self) -> float:
        """How long a boot may take before it is killed (TCG is slow: about 0.1 s per MiB with the hog)."""
        return (120 + self.mib * self.iters * (0.5 if not self.thp else 0.1) + self.settle_s
                + self.contend_mib * self.iters * 10 + (self.record_finish_s if self.record else 0))

    @property
    def settle_s(self) -> float:
        """The hook's time to start: --hook-settle, or with --record the longest wait for it to attach."""
        if self.record and not self.hook_settle_s:
            from tdptrace.lab.recorder import START_S

            return START_S
        return self.hook_settle_s or 0.0

    @property
    def record_finish_s(self) -> float:
        from tdptrace.lab.recorder import FINISH_S

        return FINISH_S
