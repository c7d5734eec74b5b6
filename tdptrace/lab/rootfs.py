"""A Debian bookworm chroot with BCC, the lab kernels' headers and tdptrace, shared into lab guests at /rootfs.

Optional (about 1 GB, a minute or two to build): the core lab runs use tracefs only. One rootfs serves every
lab kernel; the headers of each kernel are added the first time that kernel asks for them.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from tdptrace.errors import MissingCapability
from tdptrace.lab.host import cache_dir, run
from tdptrace.lab.kernels import Kernel

MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3-bpfcc", "bpfcc-tools", "kmod", "python3-venv", "python3-pip", "ca-certificates")
SOURCES = ("deb http://deb.debian.org/debian bookworm main\n"
           "deb http://deb.debian.org/debian bookworm-updates main\n"
           "deb http://deb.debian.org/debian-security bookworm-security main\n")
# What of the project goes into the chroot (installed with pip into /opt/tdptrace, bcc from Debian).
PROJECT_FILES = ("pyproject.toml", "setup.py", "README.md", "tdptrace", "probes")


@contextlib.contextmanager
def _mounted(root: Path) -> Iterator[None]:
    """/proc, /sys, /dev and resolv.conf inside `root` while apt and pip run there."""
    done: list[Path] = []
    try:
        for src in ("/proc", "/sys", "/dev"):
            dst = root / src.lstrip("/")
            dst.mkdir(exist_ok=True)
            subprocess.run(["mount", "--bind", src, str(dst)], check=True)
            done.append(dst)
        shutil.copy2("/etc/resolv.conf", root / "etc" / "resolv.conf")
        yield
    finally:
        for dst in reversed(done):
            subprocess.run(["umount", "-l", str(dst)], check=False)


def _chroot(root: Path, *cmd: str, what: str) -> str:
    return run(["chroot", str(root), "/usr/bin/env", "DEBIAN_FRONTEND=noninteractive",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin", *cmd], what=what, timeout=1800)


def _project_files(project: Path) -> Iterator[Path]:
    for name in PROJECT_FILES:
        p = project / name
        yield from (sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts
                           and ".egg-info" not in str(f)) if p.is_dir() else [p])


def _project_digest(project: Path) -> str:
    """A hash of the project files that go into the rootfs, so an unchanged tree is not reinstalled."""
    h = hashlib.sha256()
    for f in _project_files(project):
        if f.exists():
            h.update(str(f.relative_to(project)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _installed_digest(root: Path) -> str:
    f = root / "opt" / "tdptrace" / ".src-digest"
    return f.read_text() if f.exists() else ""


def _has_headers(root: Path, release: str) -> bool:
    """Whether the rootfs has /lib/modules/RELEASE/build, resolved inside the rootfs (the link is absolute)."""
    link = root / "lib" / "modules" / release / "build"
    if not link.is_symlink():
        return link.is_dir()
    target = Path(os.readlink(link))
    return (root / str(target).lstrip("/") if target.is_absolute() else link.parent / target).is_dir()


def _has_candidate(root: Path, package: str) -> bool:
    """Whether the rootfs's bookworm apt offers `package` (kernels of later suites have no headers there)."""
    out = _chroot(root, "apt-cache", "policy", package, what=f"apt-cache policy {package} (rootfs)")
    return "Candidate:" in out and "Candidate: (none)" not in out


def _link_generic_headers(root: Path, release: str) -> None:
    """Headers for a kernel bookworm has no package for (6.17, 7.3, sid): bookworm's own linux-headers-amd64
    tree linked as /lib/modules/RELEASE/build and /source, exactly what scripts/bootstrap.sh does on a host
    without headers. The recorder's programs read arguments from registers and tracepoints from their tracefs
    formats, never a kernel structure's layout, so any consistent x86 header tree compiles them right."""
    _chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", "linux-headers-amd64",
            what="apt-get install linux-headers-amd64 (rootfs)")
    src = root / "usr" / "src"
    trees = sorted((d for d in src.glob("linux-headers-*-amd64") if (src / (d.name[:-len("-amd64")] + "-common")).is_dir()),
                   key=lambda d: [int(x) if x.isdigit() else x for x in d.name.replace("-", ".").split(".")])
    if not trees:
        raise MissingCapability("linux-headers-amd64 left no header tree under /usr/src in the rootfs")
    build_tree = trees[-1]
    common = src / (build_tree.name[:-len("-amd64")] + "-common")
    mod = root / "lib" / "modules" / release
    mod.mkdir(parents=True, exist_ok=True)
    for name, target in (("build", build_tree), ("source", common)):
        link = mod / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/" + str(target.relative_to(root)))


def build(kernel: Kernel, project: Path | None = None, headers: bool = True) -> Path:
    """The rootfs with `kernel`'s headers (BCC compiles against them; headers=False: the ftrace backend needs
    none, and bookworm's apt has none for kernels of other suites) and tdptrace from `project`, a source
    tree, when given."""
    root = cache_dir() / "rootfs" / "bookworm"
    stamp = root / ".tdptrace-rootfs"
    if not stamp.exists():
        if shutil.which("debootstrap") is None:
            run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap"],
                what="apt-get install debootstrap", hint="the BCC rootfs needs debootstrap")
        shutil.rmtree(root, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "bookworm", str(root), MIRROR],
            what="debootstrap bookworm", timeout=1800, hint="the BCC rootfs needs Debian's package mirror")
        (root / "etc" / "apt" / "sources.list").write_text(SOURCES)
        stamp.touch()
    package = f"linux-headers-{kernel.release}"
    with _mounted(root):
        if headers and not _has_headers(root, kernel.release):
            _chroot(root, "apt-get", "update", "-q", what="apt-get update (rootfs)")
            if _has_candidate(root, package):
                _chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", package,
                        what=f"apt-get install {package} (rootfs)")
            else:
                _link_generic_headers(root, kernel.release)
            if not _has_headers(root, kernel.release):
                raise MissingCapability(f"{package} installed no /lib/modules/{kernel.release}/build in the rootfs")
        if project is not None and _project_digest(project) != _installed_digest(root):
            src = root / "opt" / "tdptrace-src"
            shutil.rmtree(src, ignore_errors=True)
            src.mkdir(parents=True)
            for name in PROJECT_FILES:
                p = project / name
                if p.is_dir():
                    shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                elif p.exists():
                    shutil.copy2(p, src / name)
            # Wheels are fetched by the host's own pip (its index and certificates), installed offline inside.
            wheels = root / "opt" / "wheelhouse"
            for old in wheels.glob("tdptrace-*.whl"):  # an earlier build's (maybe of another wheel tag)
                old.unlink()
            run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), str(src)],
                what="pip wheel tdptrace (for the rootfs)", timeout=1800)
            if not (root / "opt" / "tdptrace" / "bin" / "python").exists():
                _chroot(root, "python3", "-m", "venv", "--system-site-packages", "/opt/tdptrace",
                        what="python3 -m venv (rootfs)")
            # The dependencies once (pip skips those installed); tdptrace itself replaced every time.
            pip = ("/opt/tdptrace/bin/pip", "install", "-q", "--no-index", "--find-links", "/opt/wheelhouse", "--no-deps")
            deps = [f"/opt/wheelhouse/{w.name}" for w in wheels.glob("*.whl") if not w.name.startswith("tdptrace-")]
            if deps:
                _chroot(root, *pip, *deps, what="pip install tdptrace's dependencies (rootfs)")
            _chroot(root, *pip, "--force-reinstall", *[f"/opt/wheelhouse/{w.name}" for w in wheels.glob("tdptrace-*.whl")],
                    what="pip install tdptrace (rootfs)")
            (root / "opt" / "tdptrace" / ".src-digest").write_text(_project_digest(project))
    return root
