"""Stock Debian kernels for the lab: resolve, download (`apt-get download`) and unpack (`dpkg-deb -x`).

Nothing is installed on the host and its sources.list is left alone: bookworm's kernels come through the host's
own apt configuration, older suites through a private one under the cache. What is kept per kernel is only
what a boot needs: vmlinuz and the modules kvm_amd and 9p depend on, decompressed (busybox insmod cannot read
.ko.xz), listed in load order.
"""
from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tdptrace.errors import MissingCapability, TdpError
from tdptrace.kernel.release import parse_version
from tdptrace.lab.host import cache_dir, run

DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


@dataclass(frozen=True)
class KernelSource:
    """Where one lab kernel comes from: a Debian meta package in an apt suite (None = the host's own)."""

    name: str
    meta: str
    suite: str | None
    why: str


# The lab's kernels. 5.10 comes from bullseye's point release only (not bullseye-security), so that the
# build stays the one whose registers were checked (Debian 5.10.223, 5.10.0-32-amd64). bookworm carries
# both 6.1 (linux-image-amd64) and, through bookworm-security, 6.12 (linux-image-6.12-amd64).
KERNEL_SOURCES: dict[str, KernelSource] = {
    "5.10": KernelSource("5.10", "linux-image-amd64", "bullseye",
                         "TDP MMU before the 2021-22 rework: recursive zaps, nothing retained, spinlock"),
    "6.1": KernelSource("6.1", "linux-image-amd64", None, "root teardown in two passes (zap_level 3, 4)"),
    "6.12": KernelSource("6.12", "linux-image-6.12-amd64", None, "root teardown in four passes (1..4)"),
}

# Modules a lab boot needs, by module name; their dependencies are added from each module's .modinfo.
WANTED_MODULES: tuple[str, ...] = ("kvm_amd", "9p", "9pnet_virtio", "virtio_pci")


@dataclass
class Kernel:
    """One unpacked lab kernel in the cache."""

    name: str
    release: str
    package: str
    version: str
    dir: str
    modules: list[str] = field(default_factory=list)  # file names under dir/modules, in load order

    @property
    def vmlinuz(self) -> Path:
        return Path(self.dir) / "vmlinuz"

    @property
    def module_dir(self) -> Path:
        return Path(self.dir) / "modules"

    @property
    def kvm_ko(self) -> Path:
        return self.module_dir / "kvm.ko"

    @property
    def version_tuple(self) -> tuple[int, int]:
        return parse_version(self.release) or (0, 0)


def kernel_source(name: str) -> KernelSource:
    """The KernelSource called `name`; a clear error listing the known ones otherwise."""
    try:
        return KERNEL_SOURCES[name]
    except KeyError:
        raise TdpError(f"unknown lab kernel '{name}'", f"choose one of {', '.join(KERNEL_SOURCES)}") from None


def _apt_options(suite: str | None) -> list[str]:
    """apt -o options: nothing for the host's config; a private state and sources.list for another suite."""
    opts = ["-o", "APT::Sandbox::User=root"]
    if suite is None:
        return opts
    d = cache_dir() / "apt" / suite
    (d / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (d / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (d / "sources.list.d").mkdir(exist_ok=True)
    (d / "preferences.d").mkdir(exist_ok=True)
    (d / "status").touch()
    sources = d / "sources.list"
    sources.write_text(f"deb [signed-by={DEBIAN_KEYRING}] http://deb.debian.org/debian {suite} main\n")
    return opts + [
        "-o", f"Dir::Etc::SourceList={sources}", "-o", f"Dir::Etc::SourceParts={d / 'sources.list.d'}",
        "-o", f"Dir::Etc::Preferences={d / 'preferences'}", "-o", f"Dir::Etc::PreferencesParts={d / 'preferences.d'}",
        "-o", f"Dir::State::Lists={d / 'lists'}", "-o", f"Dir::State::status={d / 'status'}",
        "-o", f"Dir::Cache={d / 'cache'}", "-o", "APT::Architecture=amd64",
    ]


def _apt_show(src: KernelSource, package: str) -> str:
    """`apt-cache show` of the candidate of `package` in src's suite, updating the lists once if needed."""
    opts = _apt_options(src.suite)
    for attempt in (0, 1):
        try:
            out = run(["apt-cache", *opts, "show", "--no-all-versions", package], what=f"apt-cache show {package}")
            if out.strip():
                return out
        except TdpError:
            if attempt:
                raise
        run(["apt-get", *opts, "update", "-q"], what=f"apt-get update ({src.suite or 'host sources'})",
            hint="the lab needs Debian's package mirror")
    raise MissingCapability(f"Debian package {package} not found ({src.suite or 'host apt sources'})")


def resolve(src: KernelSource) -> tuple[str, str]:
    """(package, version) of the kernel image the meta package points at today."""
    meta = _apt_show(src, src.meta)
    dep = re.search(r"^Depends:.*?\b(linux-image-[^\s,(]+)", meta, re.M)
    if not dep:
        raise TdpError(f"cannot tell which kernel {src.meta} ({src.suite or 'host'}) depends on")
    pkg = dep.group(1)
    info = _apt_show(src, pkg)
    ver = re.search(r"^Version:\s*(\S+)", info, re.M)
    if not ver:
        raise TdpError(f"no version for {pkg}")
    return pkg, ver.group(1)


def _modinfo_depends(data: bytes) -> list[str]:
    """Module names in the `depends=` entry of an ELF .ko's .modinfo section."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise TdpError("not a 64-bit ELF module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _typ, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name:end] == b".modinfo":
            for entry in data[off:off + size].split(b"\0"):
                if entry.startswith(b"depends="):
                    return [d for d in entry[8:].decode().split(",") if d]
            return []
    return []


def _read_module(path: Path) -> bytes:
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    if path.suffix != ".ko":
        raise MissingCapability(f"cannot read module {path.name}: only .ko and .ko.xz are handled")
    return path.read_bytes()


def _select_modules(tree: Path, release: str, dest: Path) -> list[str]:
    """Copy the WANTED_MODULES and their dependencies from an unpacked package; return them in load order."""
    moddir = tree / "lib" / "modules" / release
    builtin_file = moddir / "modules.builtin"
    builtin = {Path(line).name.split(".ko")[0].replace("-", "_")
               for line in (builtin_file.read_text().split() if builtin_file.exists() else [])}
    index = {p.name.split(".ko")[0].replace("-", "_"): p for p in moddir.rglob("*.ko*")}
    order: list[str] = []
    seen: set[str] = set()

    def visit(mod: str) -> None:
        if mod in seen or mod in builtin:
            return
        seen.add(mod)
        if mod not in index:
            raise MissingCapability(f"kernel {release} has no module {mod} (needed by the lab)",
                                    "its package may be incomplete; try another --kernel")
        data = _read_module(index[mod])
        for dep in _modinfo_depends(data):
            visit(dep.replace("-", "_"))
        name = index[mod].name.split(".ko")[0] + ".ko"
        (dest / name).write_bytes(data)
        order.append(name)

    dest.mkdir(parents=True, exist_ok=True)
    for mod in WANTED_MODULES:
        visit(mod)
    return order


def fetch(name: str, *, refresh: bool = False) -> Kernel:
    """The kernel `name` unpacked in the cache, downloading it on first use (or with refresh=True)."""
    src = kernel_source(name)
    root = cache_dir() / "kernels"
    root.mkdir(exist_ok=True)
    pointer = root / f"{name}.json"
    if pointer.exists() and not refresh:
        k = Kernel(**json.loads(pointer.read_text()))
        if k.vmlinuz.exists() and all((k.module_dir / m).exists() for m in k.modules):
            return k
    package, version = resolve(src)
    debs = cache_dir() / "debs"
    debs.mkdir(exist_ok=True)
    deb = debs / f"{package}_{version}_amd64.deb"
    if not deb.exists():
        run(["apt-get", *_apt_options(src.suite), "download", f"{package}={version}"], cwd=debs,
            what=f"apt-get download {package}={version}", hint="the lab needs Debian's package mirror")
        if not deb.exists():
            raise MissingCapability(f"apt-get download {package} left no .deb in {debs}")
    release = package.removeprefix("linux-image-").removesuffix("-unsigned")
    kdir = root / release
    tmp = root / f".unpack-{release}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(kdir, ignore_errors=True)
    run(["dpkg-deb", "-x", str(deb), str(tmp)], what=f"dpkg-deb -x {deb.name}")
    vmlinuz = tmp / "boot" / f"vmlinuz-{release}"
    if not vmlinuz.exists():
        raise MissingCapability(f"{deb.name} has no boot/vmlinuz-{release}")
    kdir.mkdir(parents=True)
    shutil.copy2(vmlinuz, kdir / "vmlinuz")
    config = tmp / "boot" / f"config-{release}"
    if config.exists():
        shutil.copy2(config, kdir / "config")
    modules = _select_modules(tmp, release, kdir / "modules")
    shutil.rmtree(tmp)
    k = Kernel(name=name, release=release, package=package, version=version, dir=str(kdir), modules=modules)
    pointer.write_text(json.dumps(asdict(k), indent=1))
    return k
