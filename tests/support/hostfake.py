"""A fake host tree (proc, sys, lib/modules, usr/src) for tdptrace.live.host tests: a 6.1 TDP MMU host on which
every figure can be recorded; tests break one thing at a time."""
from __future__ import annotations

import gzip
import os
import shutil
import types
from pathlib import Path
from typing import Any

from btfgen import BTF_61_KVM, BTF_61_RETURNS, BTF_61_VMLINUX, host_btf

from tdptrace.live.host import KVMMMU_EVENTS, HostEnv

RELEASE = "6.1.0-56-amd64"
HDR = "usr/src/linux-headers-6.1.0-56"

KALLSYMS_61 = """\
ffffffffc0a01000 t __pfx_tdp_mmu_zap_leafs\t[kvm]
ffffffffc0a01010 t tdp_mmu_zap_leafs\t[kvm]
ffffffffc0a02000 t __tdp_mmu_zap_root.isra.0\t[kvm]
ffffffffc0a03000 T kvm_tdp_mmu_zap_leafs\t[kvm]
ffffffffc0a04000 T kvm_tdp_mmu_zap_all\t[kvm]
ffffffffc0a05000 T kvm_tdp_mmu_zap_invalidated_roots\t[kvm]
ffffffffc0a06000 T kvm_tdp_mmu_put_root\t[kvm]
ffffffff81001000 T __cond_resched_rwlock_read
ffffffff81001100 T __cond_resched_rwlock_write
ffffffff81001200 T __cond_resched_lock
ffffffff81002000 T bpf_trampoline_link_prog
ffffffff81003000 t zap_gfn_range_hva_wrapper
"""

KALLSYMS_510 = """\
ffffffffc0a01000 t zap_gfn_range.constprop.0\t[kvm]
ffffffffc0a02000 T __kvm_tdp_mmu_zap_gfn_range\t[kvm]
ffffffffc0a03000 T kvm_tdp_mmu_zap_all\t[kvm]
ffffffffc0a04000 t __handle_changed_spte\t[kvm]
ffffffff81001200 T __cond_resched_lock
ffffffff81002000 T bpf_trampoline_link_prog
"""


def write(p: Path, text: str | bytes = "") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def link(root: Path, at: str, to: str) -> None:
    """A relative symlink root/at -> root/to, so it resolves inside the fake tree."""
    a = root / at
    a.parent.mkdir(parents=True, exist_ok=True)
    if a.is_symlink() or a.exists():
        a.unlink()
    a.symlink_to(os.path.relpath(root / to, a.parent))


def make_host(root: Path, release: str = RELEASE, kallsyms: str = KALLSYMS_61, kprobes: bool = True) -> Path:
    """Build the good host under `root` and return it."""
    write(root / "proc/sys/kernel/osrelease", release + "\n")
    write(root / "proc/config.gz", gzip.compress(
        ("CONFIG_KPROBES=y\n" if kprobes else "# CONFIG_KPROBES is not set\n").encode()
        + b"CONFIG_DEBUG_INFO_BTF=y\n"))
    write(root / "proc/kallsyms", kallsyms)
    vmlinux_btf, kvm_btf = host_btf(BTF_61_VMLINUX, BTF_61_KVM, BTF_61_RETURNS)
    write(root / "sys/kernel/btf/vmlinux", vmlinux_btf)
    write(root / "sys/kernel/btf/kvm", kvm_btf)
    tfs = root / "sys/kernel/tracing"
    for e in KVMMMU_EVENTS:
        (tfs / "events/kvmmmu" / e).mkdir(parents=True, exist_ok=True)
    if kprobes:
        write(tfs / "kprobe_events")
    names = [ln.split()[2] for ln in kallsyms.splitlines() if not ln.split()[2].startswith("__pfx_")]
    write(tfs / "available_filter_functions", "".join(f"{n} [kvm]\n" for n in names))
    write(root / "sys/module/kvm/parameters/tdp_mmu", "Y\n")
    write(root / "sys/module/kvm_intel/parameters/ept", "Y\n")
    write(root / f"{HDR}-common/include/linux/kconfig.h", "/* kconfig */\n")
    (root / f"{HDR}-amd64/include/generated").mkdir(parents=True, exist_ok=True)
    link(root, f"lib/modules/{release}/build", f"{HDR}-amd64")
    link(root, f"lib/modules/{release}/source", f"{HDR}-common")
    return root


def fake_bcc(version: str = "0.26.0", kfunc: bool = True, ringbuf: bool = True) -> Any:
    """A stand-in for the bcc module with the attributes host.py reads."""
    class BPF:
        @staticmethod
        def support_kfunc() -> bool:
            return kfunc

    mod = types.SimpleNamespace(BPF=BPF, __version__=version, __file__="/usr/lib/python3/dist-packages/bcc/x.py")
    if ringbuf:
        mod.RingBuf = object
    return mod


def env(root: Path, euid: int = 0, bcc: Any = "fake", environ: dict[str, str] | None = None) -> HostEnv:
    """HostEnv over the fake tree: never live; bcc is the fake module unless given (None: not importable)."""
    if bcc == "fake":
        bcc = fake_bcc()

    def import_bcc() -> Any:
        if bcc is None:
            raise ImportError("No module named 'bcc'")
        return bcc

    return HostEnv(root=root, euid=euid, environ=environ or {}, live=False, import_bcc=import_bcc)


def remove(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)
