"""The guest's initramfs: static busybox, the lab's /init (init.sh), kvmtouch built static, and the modules.

Built once per kernel and per content (a hash of the init script, kvmtouch.c, module list and parameters)
and cached beside the kernel, so a second run boots straight away.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from tdptrace.errors import MissingCapability, TdpError
from tdptrace.lab.host import cache_dir, run
from tdptrace.lab.kernels import Kernel
from tdptrace.lab.probes import era_for

BUSYBOX = Path("/bin/busybox")


def lab_file(name: str) -> bytes:
    """A file shipped in tdptrace/lab (init.sh, kvmtouch.c)."""
    return resources.files("tdptrace.lab").joinpath(name).read_bytes()


def kvmtouch() -> Path:
    """The static kvmtouch binary, compiled with gcc on first use (cached by source hash)."""
    src = lab_file("kvmtouch.c")
    digest = hashlib.sha256(src).hexdigest()[:16]
    out = cache_dir() / "bin" / f"kvmtouch-{digest}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    c = out.with_suffix(".c")
    c.write_bytes(src)
    tmp = Path(f"{out}.{os.getpid()}.tmp")
    run(["gcc", "-O2", "-static", "-Wall", "-o", str(tmp), str(c)], what="gcc -static kvmtouch.c",
        hint="the lab needs gcc and libc6-dev (static libc)")
    tmp.rename(out)
    return out


def _busybox_applets() -> list[str]:
    out = run([str(BUSYBOX), "--list"], what="busybox --list", hint="apt-get install busybox-static")
    # `busybox --list` names busybox itself: linking it over the binary makes /init fail with error -40.
    return [a for a in out.split() if a and a != "busybox"]


def build(kernel: Kernel) -> Path:
    """The initramfs (newc cpio) for `kernel`, built on first use."""
    if not BUSYBOX.exists():
        raise MissingCapability("no static busybox at /bin/busybox", "apt-get install busybox-static")
    era = era_for(kernel.release)
    init = lab_file("init.sh")
    touch = kvmtouch()
    load = "".join(f"{m} {era.kvm_params if m == 'kvm.ko' else ''}".rstrip() + "\n" for m in kernel.modules)
    h = hashlib.sha256(init + touch.read_bytes() + load.encode() + BUSYBOX.read_bytes()).hexdigest()[:16]
    out = Path(kernel.dir) / f"initramfs-{h}.cpio"
    if out.exists():
        return out
    # A private staging directory and an atomic rename: two lab runs may build the same image at once.
    stage = Path(tempfile.mkdtemp(prefix=".initramfs-stage-", dir=kernel.dir))
    for d in ("bin", "sbin", "proc", "sys", "dev", "share", "tmp", "lib/modules", "sys/kernel/tracing"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, stage / "bin" / "busybox")
    for applet in _busybox_applets():
        link = stage / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (stage / "init").write_bytes(init)
    (stage / "init").chmod(0o755)
    shutil.copy2(touch, stage / "kvmtouch")
    for m in kernel.modules:
        shutil.copy2(kernel.module_dir / m, stage / "lib" / "modules" / m)
    (stage / "lib" / "modules" / "load.list").write_text(load)
    names = sorted(str(p.relative_to(stage)) for p in stage.rglob("*"))
    tmp = stage.with_suffix(".cpio")
    with open(tmp, "wb") as fh:
        p = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0"], cwd=stage,
                           input="\n".join(names).encode(), stdout=fh, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise TdpError(f"cpio failed building the initramfs: {p.stderr.decode().strip()[-200:]}",
                       "apt-get install cpio")
    tmp.rename(out)
    for old in Path(kernel.dir).glob("initramfs-*.cpio"):
        if old != out:
            old.unlink(missing_ok=True)
    shutil.rmtree(stage)
    return out
