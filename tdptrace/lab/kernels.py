"""Kernels for the lab: the matrix of named kernels, any Debian kernel image spec, and the unpacked cache.

A kernel is named either by a lab name (5.10, 6.1, 6.12, 6.17, 7.3: pinned Debian builds, see LAB_KERNELS) or
by a Debian spec, `linux-image-RELEASE[=VERSION][@SUITE]` (tdptrace.lab.debian). Nothing is installed on the
host: the packages are downloaded with `apt-get download` through the lab's private apt state and unpacked
with `dpkg-deb -x`; what is kept per kernel is only what a boot needs (vmlinuz, the config, and the modules
kvm_amd and 9p depend on, decompressed, in load order).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tdptrace.errors import BadInput
from tdptrace.kernel.release import parse_version
from tdptrace.lab import debian, unpack
from tdptrace.lab.host import cache_dir


@dataclass(frozen=True)
class LabKernel:
    """One kernel of the lab matrix: a pinned Debian build and why it is in the matrix."""

    name: str
    spec: str
    why: str


# The lab's matrix. Each is pinned to one build so that the facts docs/kernel.md gives for it (registers,
# symbols, passes) stay the ones checked against that build's disassembly.
LAB_KERNELS: dict[str, LabKernel] = {k.name: k for k in (
    LabKernel("5.10", "linux-image-5.10.0-32-amd64@bullseye",
              "TDP MMU before the 2021-22 rework: recursive zaps, nothing retained, spinlock"),
    LabKernel("6.1", "linux-image-6.1.0-57-amd64@bookworm-security",
              "root teardown in two passes (zap_level 3, 4); PREEMPT_DYNAMIC, booted voluntary"),
    LabKernel("6.12", "linux-image-6.12.117+deb12-amd64@bookworm-security",
              "root teardown in four passes (1..4); contention counts only under preempt=full"),
    LabKernel("6.17", "linux-image-6.17.13+deb13-amd64@trixie-backports",
              "four passes; PREEMPT_LAZY: zaps yield when another task waits for mmu_lock"),
    LabKernel("7.3", "linux-image-7.3.4+deb13-amd64@trixie-backports",
              "split packages (linux-binary/-modules/-base); frozen marker 0x80000000000001a0; lazy preemption"),
)}
# Kept for callers that name the old table.
KERNEL_SOURCES = LAB_KERNELS
WANTED_MODULES = unpack.WANTED_MODULES


def kernel_source(name: str) -> LabKernel:
    """The LabKernel called `name`; a clear error listing the known ones otherwise."""
    try:
        return LAB_KERNELS[name]
    except KeyError:
        raise BadInput(f"unknown lab kernel '{name}'",
                       f"choose one of {', '.join(LAB_KERNELS)}, or a Debian spec linux-image-RELEASE[=VERSION]"
                       "[@SUITE]") from None


def spec_of(name: str) -> debian.Spec:
    """The Debian spec a --kernel value names: a lab name's pinned build, or the spec itself. Raises one clear
    line for anything else (no network: a syntax check)."""
    if name in LAB_KERNELS:
        return debian.parse_spec(LAB_KERNELS[name].spec)
    if not name.startswith("linux-image-"):
        kernel_source(name)
    return debian.parse_spec(name)


def label(name: str) -> str:
    """A short name for file and scenario names: the lab name, or the spec's release (and suite)."""
    if name in LAB_KERNELS:
        return name
    s = spec_of(name)
    return s.package.removeprefix("linux-image-") + (f"@{s.suite}" if s.suite else "")


@dataclass
class Kernel:
    """One unpacked lab kernel in the cache."""

    name: str
    release: str
    package: str
    version: str
    dir: str
    modules: list[str] = field(default_factory=list)  # file names under dir/modules, in load order
    spec: str = ""
    suite: str = ""
    packaging: str = ""  # "image" (one linux-image package) or "split" (linux-binary/-modules/-base)
    packages: dict[str, str] = field(default_factory=dict)  # every package unpacked, with its version
    preemption: str = ""  # the build's preemption model, from its config (preempt_model)

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


def preempt_model(config: str) -> str:
    """The preemption model a kernel config selects: none, voluntary, full, lazy or rt, with '+dynamic' when
    the boot command line may change it (CONFIG_PREEMPT_DYNAMIC)."""
    opts = set(re.findall(r"^(CONFIG_PREEMPT\w*)=y", config, re.M))
    model = next((m for opt, m in (("CONFIG_PREEMPT_RT", "rt"), ("CONFIG_PREEMPT_LAZY", "lazy"),
                                   ("CONFIG_PREEMPT", "full"), ("CONFIG_PREEMPT_VOLUNTARY", "voluntary"),
                                   ("CONFIG_PREEMPT_NONE", "none")) if opt in opts), "unknown")
    return model + ("+dynamic" if "CONFIG_PREEMPT_DYNAMIC" in opts else "")


def _pointer(name: str) -> Path:
    root = cache_dir() / "kernels"
    root.mkdir(exist_ok=True)
    return root / (re.sub(r"[^A-Za-z0-9.+_@=-]", "_", name) + ".json")


def cached(name: str) -> Kernel | None:
    """The kernel `name` if the cache holds it complete (no network)."""
    pointer = _pointer(name)
    if not pointer.exists():
        return None
    k = Kernel(**json.loads(pointer.read_text()))
    if k.vmlinuz.exists() and all((k.module_dir / m).exists() for m in k.modules):
        return k
    return None


def fetch(name: str, *, refresh: bool = False) -> Kernel:
    """The kernel `name` (lab name or Debian spec) unpacked in the cache, downloaded on first use (or with
    refresh=True, which also asks the archive again which build a meta package means)."""
    spec = spec_of(name)
    if not refresh and (k := cached(name)) is not None:
        return k
    if refresh:
        debian.update(force=True)
    pk = debian.resolve(spec)
    debs = debian.download(pk)
    root = cache_dir() / "kernels"
    kdir = root / pk.release
    tmp = root / f".unpack-{pk.release}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        unpack.extract(list(debs.values()), tmp)
        layout = unpack.find_layout(tmp, pk.release)
        stage = root / f".stage-{pk.release}-{os.getpid()}"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        shutil.copy2(layout.vmlinuz, stage / "vmlinuz")
        preemption = ""
        if layout.config is not None:
            shutil.copy2(layout.config, stage / "config")
            preemption = preempt_model(layout.config.read_text(errors="replace"))
        modules = unpack.select_modules(layout, pk.release, stage / "modules")
        # Keep what earlier boots of this build left (symbol dumps, initramfs): only the files above change.
        kdir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(kdir / "modules", ignore_errors=True)
        for f in stage.iterdir():
            f.replace(kdir / f.name)
        shutil.rmtree(stage)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    k = Kernel(name=name, release=pk.release, package=pk.image, version=pk.version, dir=str(kdir), modules=modules,
               spec=str(spec), suite=pk.suite, packaging=pk.packaging, packages=dict(pk.packages),
               preemption=preemption)
    _pointer(name).write_text(json.dumps(asdict(k), indent=1))
    return k
