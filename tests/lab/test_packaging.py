"""Debian kernel specs, resolution and unpacking, in every packaging Debian has used (no network, no QEMU: the
archive is played by fixed apt-cache answers and the packages are built here with dpkg-deb)."""
from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tdptrace.errors import BadInput, MissingCapability
from tdptrace.lab import debian, kernels, unpack

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian hosts)")


def fake_module(depends: str = "") -> bytes:
    """A minimal ELF64 relocatable with a .modinfo section holding `depends=...`."""
    shstr = b"\0.shstrtab\0.modinfo\0"
    modinfo = b"license=GPL\0" + f"depends={depends}".encode() + b"\0vermagic=x\0"
    body = shstr + modinfo
    shoff = 64 + len(body)
    hdr = bytearray(64)
    hdr[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HHIQQQIHHHHHH", hdr, 16, 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 1)
    sections = bytes(64)
    sections += struct.pack("<IIQQQQIIQQ", 1, 3, 0, 0, 64, len(shstr), 0, 0, 1, 0)
    sections += struct.pack("<IIQQQQIIQQ", 11, 1, 0, 0, 64 + len(shstr), len(modinfo), 0, 0, 1, 0)
    return bytes(hdr) + body + sections


# name -> (path under kernel/, depends)
MODULES = {
    "kvm": ("arch/x86/kvm/kvm", "irqbypass"), "kvm-amd": ("arch/x86/kvm/kvm-amd", "kvm,ccp"),
    "irqbypass": ("virt/lib/irqbypass", ""), "ccp": ("drivers/crypto/ccp/ccp", ""),
    "9pnet": ("net/9p/9pnet", ""), "9p": ("fs/9p/9p", "9pnet,netfs"), "netfs": ("fs/netfs/netfs", ""),
    "9pnet_virtio": ("net/9p/9pnet_virtio", "9pnet"), "virtio_pci": ("drivers/virtio/virtio_pci", ""),
}


def _compress(data: bytes, suffix: str, path: Path) -> None:
    if suffix == ".ko.xz":
        data = lzma.compress(data, format=lzma.FORMAT_XZ)
    elif suffix == ".ko.gz":
        data = gzip.compress(data)
    elif suffix == ".ko.zst":
        path.with_name(path.name + ".raw").write_bytes(data)
        subprocess.run(["zstd", "-q", "--rm", "-o", str(path), str(path.with_name(path.name + ".raw"))], check=True)
        return
    path.write_bytes(data)


def build_deb(tmp: Path, package: str, files: dict[str, bytes]) -> Path:
    root = tmp / f"build-{package}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(f"Package: {package}\nVersion: 1.0-1\nArchitecture: amd64\n"
                                             "Maintainer: lab <lab@example.org>\nDescription: test\n")
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    deb = tmp / f"{package}_1.0-1_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


def packaged(tmp: Path, packaging: str, suffix: str, release: str) -> list[Path]:
    """The .debs of one kernel in one of Debian's packagings, modules compressed with `suffix`."""
    config = b"CONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_PREEMPT_DYNAMIC=y\n"
    if packaging == "lib":  # to 6.15: boot/ and lib/modules in linux-image-REL
        moddir, files = f"lib/modules/{release}", {f"boot/vmlinuz-{release}": b"KERNEL", f"boot/config-{release}": config}
    elif packaging == "usr":  # 6.16 - 6.18: boot/ and usr/lib/modules
        moddir, files = f"usr/lib/modules/{release}", {f"boot/vmlinuz-{release}": b"KERNEL",
                                                       f"boot/config-{release}": config}
    else:  # 6.19+: linux-binary (vmlinuz) / linux-modules / linux-base (config, modules.builtin)
        moddir, files = f"usr/lib/modules/{release}", {}
    mods = {}
    for name, (rel, deps) in MODULES.items():
        if name == "virtio_pci":
            continue  # built in: listed in modules.builtin
        path = tmp / "m" / f"{name}{suffix}"
        path.parent.mkdir(exist_ok=True)
        _compress(fake_module(deps), suffix, path)
        mods[f"{moddir}/kernel/{rel}{suffix}"] = path.read_bytes()
    builtin = {f"{moddir}/modules.builtin": b"kernel/drivers/virtio/virtio_pci.ko\n"}
    if packaging != "split":
        return [build_deb(tmp, f"linux-image-{release}", {**files, **mods, **builtin})]
    return [build_deb(tmp, f"linux-binary-{release}", {f"{moddir}/vmlinuz": b"KERNEL"}),
            build_deb(tmp, f"linux-modules-{release}", mods),
            build_deb(tmp, f"linux-base-{release}", {f"{moddir}/config": config, **builtin}),
            build_deb(tmp, f"linux-image-{release}", {})]


@needs_dpkg
@pytest.mark.parametrize("packaging,suffix", [("lib", ".ko"), ("lib", ".ko.xz"), ("usr", ".ko.xz"),
                                              ("split", ".ko.xz"), ("split", ".ko.zst"), ("usr", ".ko.gz")])
def test_every_packaging_unpacks_to_a_bootable_set(tmp_path: Path, packaging: str, suffix: str) -> None:
    if suffix == ".ko.zst" and shutil.which("zstd") is None:
        pytest.skip("needs zstd")
    release = "7.3.4+deb13-amd64" if packaging == "split" else "6.1.0-57-amd64"
    debs = packaged(tmp_path, packaging, suffix, release)
    tree = tmp_path / "tree"
    unpack.extract(debs, tree)
    layout = unpack.find_layout(tree, release)
    assert layout.vmlinuz.read_bytes() == b"KERNEL" and layout.config is not None and layout.builtin is not None
    order = unpack.select_modules(layout, release, tmp_path / "out")
    # Dependencies before their users, every file a plain ELF module, the built-in one skipped.
    assert order == ["irqbypass.ko", "kvm.ko", "ccp.ko", "kvm-amd.ko", "9pnet.ko", "netfs.ko", "9p.ko",
                     "9pnet_virtio.ko"]
    assert all((tmp_path / "out" / m).read_bytes()[:4] == b"\x7fELF" for m in order)
    assert unpack.modinfo_depends((tmp_path / "out" / "kvm-amd.ko").read_bytes()) == ["kvm", "ccp"]


@needs_dpkg
def test_missing_pieces_are_named(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    unpack.extract([build_deb(tmp_path, "linux-modules-7.3.4+deb13-amd64",
                              {"usr/lib/modules/7.3.4+deb13-amd64/kernel/fs/9p/9p.ko": fake_module()})], tree)
    with pytest.raises(MissingCapability, match=r"no vmlinuz .*usr/lib/modules/7.3.4\+deb13-amd64/vmlinuz"):
        unpack.find_layout(tree, "7.3.4+deb13-amd64")
    (tree / "boot").mkdir()
    (tree / "boot" / "vmlinuz-7.3.4+deb13-amd64").write_bytes(b"K")
    layout = unpack.find_layout(tree, "7.3.4+deb13-amd64")
    with pytest.raises(MissingCapability, match="has no module kvm_amd"):
        unpack.select_modules(layout, "7.3.4+deb13-amd64", tmp_path / "out")
    bad = tmp_path / "x.ko.bz2"
    bad.write_bytes(b"")
    with pytest.raises(MissingCapability, match="cannot read module x.ko.bz2"):
        unpack.read_module(bad)


def test_specs() -> None:
    s = debian.parse_spec("linux-image-6.16.12+deb13-amd64=6.16.12-1~bpo13+1@trixie-backports")
    assert (s.package, s.version, s.suite) == ("linux-image-6.16.12+deb13-amd64", "6.16.12-1~bpo13+1", "trixie-backports")
    assert debian.parse_spec("linux-image-amd64") == debian.Spec("linux-image-amd64")
    assert str(debian.parse_spec("linux-image-amd64@bookworm-security")) == "linux-image-amd64@bookworm-security"
    for bad, why in (("linux-headers-amd64", "is not linux-image-RELEASE"), ("linux-image-amd64@jessie", "unknown suite"),
                     ("linux-image-6.1.0-57-amd64-unsigned", "unsigned package"), ("linux-image-amd64=@sid", "is not")):
        with pytest.raises(BadInput, match=why):
            debian.parse_spec(bad)
    assert kernels.spec_of("7.3") == debian.parse_spec("linux-image-7.3.4+deb13-amd64@trixie-backports")
    with pytest.raises(BadInput) as exc:
        kernels.spec_of("4.19")
    assert exc.value.line().startswith("unknown lab kernel '4.19'") and "linux-image-RELEASE" in exc.value.line()
    assert kernels.label("linux-image-6.16.12+deb13-amd64@trixie-backports") == "6.16.12+deb13-amd64@trixie-backports"


def test_debian_version_order() -> None:
    ordered = ["1.0~rc1", "1.0", "1.0-1", "1.0-1+b1", "1.0.1", "1:0.1"]
    for a, b in zip(ordered, ordered[1:]):
        assert debian.version_compare(a, b) < 0 < debian.version_compare(b, a), (a, b)
    assert debian.version_compare("7.3.4-1~bpo13+1", "7.3.4-1") < 0
    assert debian.newest(["6.1.176-1", "6.1.192-3", "6.1.58-1"]) == "6.1.192-3"


MADISON = {
    "linux-image-amd64": "linux-image-amd64 | 6.1.176-1 | http://deb.debian.org/debian bookworm/main amd64 Packages\n"
                         "linux-image-amd64 | 7.3.4-1~bpo13+1 | http://deb.debian.org/debian trixie-backports/main "
                         "amd64 Packages\n",
    "linux-image-6.1.0-50-amd64": "linux-image-6.1.0-50-amd64 | 6.1.176-1 | http://deb.debian.org/debian "
                                  "bookworm/main amd64 Packages\n",
    "linux-image-7.3.4+deb13-amd64": "linux-image-7.3.4+deb13-amd64 | 7.3.4-1~bpo13+1 | http://deb.debian.org/debian "
                                     "trixie-backports/main amd64 Packages\n",
    "linux-image-6.19.14+deb13-amd64": "linux-image-6.19.14+deb13-amd64 | 6.19.14-1~bpo13+1 | "
                                       "http://deb.debian.org/debian trixie-backports/main amd64 Packages\n",
}
for part in ("binary", "modules", "base"):
    MADISON[f"linux-{part}-7.3.4+deb13-amd64"] = (f"linux-{part}-7.3.4+deb13-amd64 | 7.3.4-1~bpo13+1 | "
                                                 "http://deb.debian.org/debian trixie-backports/main amd64 Packages\n")
for part in ("binary", "base"):  # 6.19.14's modules package is gone from the archive
    MADISON[f"linux-{part}-6.19.14+deb13-amd64"] = MADISON[f"linux-{part}-7.3.4+deb13-amd64"].replace(
        "7.3.4", "6.19.14")
DEPENDS = {
    ("linux-image-amd64", "6.1.176-1"): "linux-image-6.1.0-50-amd64 (= 6.1.176-1)",
    ("linux-image-amd64", "7.3.4-1~bpo13+1"): "linux-base-amd64 (= 7.3.4-1~bpo13+1), linux-image-7.3.4+deb13-amd64 "
                                              "(= 7.3.4-1~bpo13+1), linux-modules-amd64 (= 7.3.4-1~bpo13+1)",
    ("linux-image-6.1.0-50-amd64", "6.1.176-1"): "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | "
                                                 "linux-initramfs-tool",
    ("linux-image-7.3.4+deb13-amd64", "7.3.4-1~bpo13+1"): "dracut | initramfs-tools, linux-base-7.3.4+deb13-amd64 "
        "(= 7.3.4-1~bpo13+1), linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), linux-modules-7.3.4+deb13-amd64 "
        "(= 7.3.4-1~bpo13+1)",
    ("linux-image-6.19.14+deb13-amd64", "6.19.14-1~bpo13+1"): "kmod, linux-base-6.19.14+deb13-amd64 "
        "(= 6.19.14-1~bpo13+1), linux-binary-6.19.14+deb13-amd64 (= 6.19.14-1~bpo13+1), "
        "linux-modules-6.19.14+deb13-amd64 (= 6.19.14-1~bpo13+1)",
}


@pytest.fixture
def archive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian, "offers", lambda pkg: debian.parse_madison(MADISON.get(pkg, "")))
    monkeypatch.setattr(debian, "control", lambda pkg, ver: {"Package": pkg, "Version": ver,
                                                             "Depends": DEPENDS.get((pkg, ver), "")})


def test_meta_packages_resolve_to_the_concrete_build(archive: None) -> None:
    k = debian.resolve(debian.parse_spec("linux-image-amd64@bookworm"))
    assert (k.release, k.version, k.suite, k.packaging) == ("6.1.0-50-amd64", "6.1.176-1", "bookworm", "image")
    assert k.packages == {"linux-image-6.1.0-50-amd64": "6.1.176-1"}
    # Without a suite the newest build wins; from 6.19 the image is split over three packages.
    k = debian.resolve(debian.parse_spec("linux-image-amd64"))
    assert (k.release, k.suite, k.packaging) == ("7.3.4+deb13-amd64", "trixie-backports", "split")
    assert sorted(k.packages) == ["linux-base-7.3.4+deb13-amd64", "linux-binary-7.3.4+deb13-amd64",
                                  "linux-image-7.3.4+deb13-amd64", "linux-modules-7.3.4+deb13-amd64"]


def test_kernels_the_archive_holds_only_in_part_are_refused(archive: None) -> None:
    with pytest.raises(MissingCapability) as exc:
        debian.resolve(debian.parse_spec("linux-image-6.19.14+deb13-amd64"))
    assert exc.value.line().startswith("kernel linux-image-6.19.14+deb13-amd64: linux-modules-6.19.14+deb13-amd64="
                                       "6.19.14-1~bpo13+1 is not in the Debian archive")
    with pytest.raises(MissingCapability, match=r"linux-image-amd64=6.1.0 is not in the Debian archive in any suite"):
        debian.resolve(debian.parse_spec("linux-image-amd64=6.1.0"))
    with pytest.raises(MissingCapability, match="not in the Debian archive in sid"):
        debian.resolve(debian.parse_spec("linux-image-7.3.4+deb13-amd64@sid"))


def test_available_reads_the_suites_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TDPTRACE_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(debian, "update", lambda force=False: None)
    lists = debian.apt_dir() / "lists"
    lists.mkdir(parents=True)
    stanza = "Package: {p}\nVersion: {v}\nDepends: {d}\n"
    tb = [stanza.format(p="linux-image-amd64", v="7.3.4-1~bpo13+1", d="linux-image-7.3.4+deb13-amd64")]
    for r in ("6.17.13+deb13-amd64", "7.3.4+deb13-amd64", "6.19.14+deb13-amd64"):
        v = f"{r.split('+')[0]}-1~bpo13+1"
        tb.append(stanza.format(p=f"linux-image-{r}", v=v, d=DEPENDS.get((f"linux-image-{r}", v), "kmod")))
    tb += [stanza.format(p="linux-modules-7.3.4+deb13-amd64", v="7.3.4-1~bpo13+1", d="kmod")]
    (lists / "deb.debian.org_debian_dists_trixie-backports_main_binary-amd64_Packages").write_text("\n".join(tb))
    (lists / "deb.debian.org_debian_dists_bullseye_main_binary-amd64_Packages").write_text(
        stanza.format(p="linux-image-5.10.0-32-amd64", v="5.10.223-1", d="kmod") + "\n"
        + stanza.format(p="linux-image-5.10.0-32-amd64-unsigned", v="5.10.223-1", d="kmod"))
    rows = debian.available()
    assert [(r["suite"], r["release"], r["packaging"], r["bootable"]) for r in rows] == [
        ("bullseye", "5.10.0-32-amd64", "image", "yes"),
        ("trixie-backports", "6.17.13+deb13-amd64", "image", "yes"),
        ("trixie-backports", "6.19.14+deb13-amd64", "split", "no (modules not in the archive)"),
        ("trixie-backports", "7.3.4+deb13-amd64", "split", "yes")]


@needs_dpkg
@pytest.mark.parametrize("packaging", ["lib", "split"])
def test_fetch_unpacks_into_the_cache_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, archive: None,
                                           packaging: str) -> None:
    monkeypatch.setenv("TDPTRACE_LAB_CACHE", str(tmp_path / "cache"))
    release = "7.3.4+deb13-amd64" if packaging == "split" else "6.1.0-50-amd64"
    debs = {d.name.split("_")[0]: d for d in packaged(tmp_path, packaging, ".ko.xz", release)}
    calls = []
    monkeypatch.setattr(debian, "download", lambda k: calls.append(k) or {p: debs[p] for p in k.packages})
    spec = "linux-image-amd64@trixie-backports" if packaging == "split" else "linux-image-amd64@bookworm"
    k = kernels.fetch(spec)
    assert (k.release, k.packaging, k.preemption) == (release, "image" if packaging == "lib" else "split",
                                                      "voluntary+dynamic")
    assert k.vmlinuz.read_bytes() == b"KERNEL" and (Path(k.dir) / "config").exists() and "kvm-amd.ko" in k.modules
    assert kernels.fetch(spec) == k and len(calls) == 1  # the second time from the cache, no archive


def test_preemption_model_from_config() -> None:
    assert kernels.preempt_model("CONFIG_PREEMPT_VOLUNTARY=y\n") == "voluntary"
    assert kernels.preempt_model("CONFIG_PREEMPT_BUILD=y\nCONFIG_PREEMPT_LAZY=y\nCONFIG_PREEMPTION=y\n"
                                 "CONFIG_PREEMPT_DYNAMIC=y\n") == "lazy+dynamic"
    assert kernels.preempt_model("# CONFIG_PREEMPT is not set\nCONFIG_PREEMPT_NONE=y\n") == "none"
