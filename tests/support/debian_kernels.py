"""Stock Debian kernel packages for tests that check real builds: downloaded once with `apt-get download`
into the lab's cache (the same .deb files `lab run` uses), unpacked to vmlinuz + kvm.ko only."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def _cache() -> Path:
    from tdptrace.lab.host import cache_dir

    return cache_dir()


def kernel_files(package: str) -> tuple[Path, Path]:
    """(vmlinuz, kvm.ko*) of Debian package `package` (e.g. linux-image-6.1.0-56-amd64); the test is skipped,
    saying why, only when the archive cannot be reached."""
    out = _cache() / "btf" / package
    vmlinuz = sorted(out.glob("boot/vmlinuz*"))
    kos = sorted(out.glob("lib/modules/*/kernel/arch/x86/kvm/kvm.ko*"))
    if vmlinuz and kos:
        return vmlinuz[0], kos[0]
    debs = _cache() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    have = sorted(debs.glob(f"{package}_*.deb"))
    if not have:
        run = subprocess.run(["apt-get", "-o", "APT::Sandbox::User=root", "download", package], cwd=debs,
                             capture_output=True, text=True, timeout=600)
        have = sorted(debs.glob(f"{package}_*.deb"))
        if run.returncode != 0 or not have:
            pytest.skip(f"Debian archive unreachable for {package}: {run.stderr.strip()[-200:]}")
    out.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(f"dpkg-deb --fsys-tarfile '{have[-1]}' | tar -x -C '{out}' --wildcards "
                         "'./boot/vmlinuz*' '*/kernel/arch/x86/kvm/kvm.ko*'", shell=True, capture_output=True,
                         text=True, timeout=600)
    assert tar.returncode == 0, tar.stderr
    vmlinuz = sorted(out.glob("boot/vmlinuz*"))
    kos = sorted(out.glob("lib/modules/*/kernel/arch/x86/kvm/kvm.ko*"))
    assert vmlinuz and kos, f"{have[-1].name} holds no vmlinuz or kvm.ko"
    return vmlinuz[0], kos[0]
