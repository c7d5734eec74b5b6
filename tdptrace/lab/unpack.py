"""Unpacking a Debian kernel's packages: where vmlinuz, the modules and the config are in each packaging, and
the modules a lab boot needs, decompressed (busybox insmod reads plain .ko only) and in load order.

Layouts found in Debian's packages: boot/vmlinuz-REL with lib/modules/REL (to 6.15); boot/vmlinuz-REL with
usr/lib/modules/REL (6.16 - 6.18); usr/lib/modules/REL/vmlinuz with the config and modules.builtin beside it
(6.19+, split over linux-binary / linux-modules / linux-base). Modules are .ko, .ko.xz or .ko.zst (.ko.gz read
too), whatever the layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tdptrace.errors import MissingCapability
from tdptrace.kernel import btf
from tdptrace.lab.host import run

# Modules a lab boot needs, by module name; their dependencies are added from each module's .modinfo.
WANTED_MODULES: tuple[str, ...] = ("kvm_amd", "9p", "9pnet_virtio", "virtio_pci")
MODULE_SUFFIXES: tuple[str, ...] = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


@dataclass(frozen=True)
class Layout:
    """Where one kernel's files are in an unpacked tree."""

    vmlinuz: Path
    module_dir: Path
    config: Path | None
    builtin: Path | None


def extract(debs: list[Path], dest: Path) -> None:
    """dpkg-deb -x every package into one tree (the split packages fill the same usr/lib/modules/REL)."""
    dest.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        run(["dpkg-deb", "-x", str(deb), str(dest)], what=f"dpkg-deb -x {deb.name}")


def _first(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def find_layout(tree: Path, release: str) -> Layout:
    """The Layout of kernel `release` in an unpacked tree; names what is missing otherwise."""
    dirs = [tree / "usr" / "lib" / "modules" / release, tree / "lib" / "modules" / release]
    vmlinuz = _first([tree / "boot" / f"vmlinuz-{release}", *(d / "vmlinuz" for d in dirs)])
    if vmlinuz is None:
        raise MissingCapability(f"kernel {release}: no vmlinuz in its packages "
                                f"(looked for boot/vmlinuz-{release} and usr/lib/modules/{release}/vmlinuz)")
    module_dir = _first([d / "kernel" for d in dirs])
    if module_dir is None:
        raise MissingCapability(f"kernel {release}: no modules in its packages "
                                f"(neither lib/modules/{release}/kernel nor usr/lib/modules/{release}/kernel)")
    config = _first([tree / "boot" / f"config-{release}", *(d / "config" for d in dirs)])
    builtin = _first([d / "modules.builtin" for d in dirs])
    return Layout(vmlinuz=vmlinuz, module_dir=module_dir.parent, config=config, builtin=builtin)


def module_name(path: Path | str) -> str:
    """The module name of a module file: kvm-amd.ko.xz -> kvm_amd."""
    return Path(path).name.split(".ko")[0].replace("-", "_")


def read_module(path: Path) -> bytes:
    """The plain ELF bytes of a module file, whatever its compression (tdptrace.kernel.btf's reader)."""
    if not path.name.endswith(MODULE_SUFFIXES):
        raise MissingCapability(f"cannot read module {path.name}: not {', '.join(MODULE_SUFFIXES)}")
    return btf.decompress(path.read_bytes(), path.name)


def modinfo_depends(data: bytes, source: str = "module") -> list[str]:
    """Module names in the `depends=` entry of an ELF .ko's .modinfo section."""
    for entry in btf.elf_sections(data, source).get(".modinfo", b"").split(b"\0"):
        if entry.startswith(b"depends="):
            return [d for d in entry[8:].decode().split(",") if d]
    return []


def select_modules(layout: Layout, release: str, dest: Path, wanted: tuple[str, ...] = WANTED_MODULES) -> list[str]:
    """Copy the `wanted` modules and their dependencies, decompressed, into `dest`; return them in load order.
    Modules the kernel has built in (modules.builtin) are skipped."""
    builtin = {module_name(line) for line in (layout.builtin.read_text().split() if layout.builtin else [])}
    index = {module_name(p): p for p in layout.module_dir.rglob("*.ko*") if p.name.endswith(MODULE_SUFFIXES)}
    order: list[str] = []
    seen: set[str] = set()

    def visit(mod: str) -> None:
        if mod in seen or mod in builtin:
            return
        seen.add(mod)
        if mod not in index:
            raise MissingCapability(f"kernel {release} has no module {mod} (needed by the lab)",
                                    "its package may be incomplete; try another --kernel")
        data = read_module(index[mod])
        for dep in modinfo_depends(data, index[mod].name):
            visit(dep.replace("-", "_"))
        name = index[mod].name.split(".ko")[0] + ".ko"
        (dest / name).write_bytes(data)
        order.append(name)

    dest.mkdir(parents=True, exist_ok=True)
    for mod in wanted:
        visit(mod)
    return order
