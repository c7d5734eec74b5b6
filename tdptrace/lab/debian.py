"""The Debian archive as the lab sees it: suites, kernel package specs, and which packages make up one kernel.

One private apt state under the cache lists every suite from bullseye to sid (security and backports
included), signed by the host's debian-archive-keyring; the host's own sources.list is never read or
changed. `apt-cache madison` says which versions each suite offers, `apt-cache show` what a package depends
on, and `apt-get download` fetches the .deb files; nothing is installed.

A kernel spec is `linux-image-RELEASE[=VERSION][@SUITE]`: a concrete image (`linux-image-6.1.0-57-amd64`) or
a meta package (`linux-image-amd64`, `linux-image-6.12-amd64`) whose dependency names the concrete one. Debian
packaged a kernel three ways: one `linux-image-REL` with /boot/vmlinuz-REL and /lib/modules/REL (to 6.15);
the same with modules under /usr/lib/modules (6.16 - 6.18); and from 6.19 a small `linux-image-REL` that
depends on `linux-binary-REL` (usr/lib/modules/REL/vmlinuz), `linux-modules-REL` and `linux-base-REL`
(config, modules.builtin). Some releases keep only their binary package in the archive: those are refused.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cmp_to_key
from pathlib import Path

from tdptrace.errors import BadInput, MissingCapability, TdpError
from tdptrace.lab.host import cache_dir, run

DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"

# Every suite a spec may name, oldest first; the security suites live in the debian-security archive.
SUITES: tuple[str, ...] = (
    "bullseye", "bullseye-security", "bullseye-updates",
    "bookworm", "bookworm-security", "bookworm-updates", "bookworm-backports",
    "trixie", "trixie-security", "trixie-updates", "trixie-backports",
    "sid",
)

_SPEC = re.compile(r"^linux-image-(?P<release>[a-z0-9][a-z0-9.+~-]*?)(?:=(?P<version>[0-9][A-Za-z0-9.+~:-]*))?"
                   r"(?:@(?P<suite>[a-z-]+))?$")
# A concrete (per-release) image: its name starts with a full version, e.g. 6.1.0-57-amd64 or 7.3.4+deb13-amd64;
# meta packages are a flavour (amd64) or a series (6.12-amd64).
_CONCRETE = re.compile(r"^\d+\.\d+\.\d+\S*-[a-z0-9]+$")


@dataclass(frozen=True)
class Spec:
    """A parsed kernel spec: the image package, and optionally its version and suite."""

    package: str
    version: str | None = None
    suite: str | None = None

    def __str__(self) -> str:
        return self.package + (f"={self.version}" if self.version else "") + (f"@{self.suite}" if self.suite else "")


def parse_spec(text: str) -> Spec:
    """Parse `linux-image-RELEASE[=VERSION][@SUITE]`; one clear line for anything else."""
    m = _SPEC.match(text.strip())
    if not m:
        raise BadInput(f"kernel spec '{text}' is not linux-image-RELEASE[=VERSION][@SUITE]",
                       "for instance linux-image-6.16.12+deb13-amd64@trixie-backports, or a lab name")
    suite = m.group("suite")
    if suite is not None and suite not in SUITES:
        raise BadInput(f"kernel spec '{text}': unknown suite '{suite}'", f"suites: {', '.join(SUITES)}")
    release = m.group("release")
    if release.endswith("-unsigned") or release.endswith("-dbg"):
        raise BadInput(f"kernel spec '{text}' names a {release.rsplit('-', 1)[1]} package",
                       "give the signed image package, linux-image-RELEASE")
    return Spec(f"linux-image-{release}", m.group("version"), suite)


# --- Debian version ordering (deb-version(7)), for choosing the newest of several candidates -------------

def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _cmp_part(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def version_compare(a: str, b: str) -> int:
    """Negative, zero or positive as Debian version `a` sorts before, equal to or after `b`."""
    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
        return int(epoch or 0), upstream, revision
    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return ea - eb
    return _cmp_part(ua, ub) or _cmp_part(ra, rb)


def newest(versions: list[str]) -> str:
    """The highest of Debian `versions`."""
    return max(versions, key=cmp_to_key(version_compare))


# --- the private apt state ---------------------------------------------------------------------------------

def sources_list() -> str:
    """The private sources.list: every suite of SUITES, main only, signed by the archive keyring."""
    lines = []
    for suite in SUITES:
        uri = SECURITY if suite.endswith("-security") else MIRROR
        lines.append(f"deb [signed-by={DEBIAN_KEYRING}] {uri} {suite} main")
    return "\n".join(lines) + "\n"


def apt_dir() -> Path:
    return cache_dir() / "apt" / "archive"


def apt_options() -> list[str]:
    """apt -o options for the private state (lists, status, cache, sources) under the lab cache."""
    d = apt_dir()
    for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "status").touch()
    sources = d / "sources.list"
    if not sources.exists() or sources.read_text() != sources_list():
        sources.write_text(sources_list())
    return [
        "-o", "APT::Sandbox::User=root", "-o", "APT::Architecture=amd64", "-o", "APT::Architectures=amd64",
        "-o", f"Dir::Etc::SourceList={sources}", "-o", f"Dir::Etc::SourceParts={d / 'sources.list.d'}",
        "-o", f"Dir::Etc::Preferences={d / 'preferences'}", "-o", f"Dir::Etc::PreferencesParts={d / 'preferences.d'}",
        "-o", f"Dir::State::Lists={d / 'lists'}", "-o", f"Dir::State::status={d / 'status'}",
        "-o", f"Dir::Cache={d / 'cache'}", "-o", "Acquire::Languages=none",
    ]


def update(*, force: bool = False) -> None:
    """Fetch the suites' package lists once (again with force=True)."""
    stamp = apt_dir() / "updated"
    if stamp.exists() and not force:
        return
    run(["apt-get", *apt_options(), "update", "-q"], what="apt-get update (the lab's Debian suites)",
        hint="the lab needs Debian's package archive (deb.debian.org)", timeout=1800)
    stamp.touch()


@dataclass(frozen=True)
class Offer:
    """One version of one package in one suite."""

    package: str
    version: str
    suite: str


def parse_madison(text: str) -> list[Offer]:
    """`apt-cache madison` lines: 'pkg | version | URI suite/main amd64 Packages'."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 3 or not parts[2].endswith("Packages"):
            continue
        where = parts[2].split()
        if len(where) < 2:
            continue
        out.append(Offer(parts[0], parts[1], where[1].split("/")[0]))
    return out


def offers(package: str) -> list[Offer]:
    """Every version of `package` the suites offer."""
    update()
    return parse_madison(run(["apt-cache", *apt_options(), "madison", package], what=f"apt-cache madison {package}"))


def control(package: str, version: str) -> dict[str, str]:
    """The control fields of one package version (from apt-cache show)."""
    text = run(["apt-cache", *apt_options(), "show", f"{package}={version}"], what=f"apt-cache show {package}={version}")
    return parse_stanza(text.split("\n\n")[0])


def parse_stanza(text: str) -> dict[str, str]:
    """One deb822 stanza (Packages, control) as a dict; continuation lines joined."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def exact_depends(depends: str) -> dict[str, str | None]:
    """Package names of a Depends field (first alternative of each), with the version of `(= V)` if given."""
    out: dict[str, str | None] = {}
    for item in depends.split(","):
        first = item.split("|")[0].strip()
        m = re.match(r"^([a-z0-9][a-z0-9.+-]*)(?:\s*\(\s*=\s*([^)\s]+)\s*\))?", first)
        if m:
            out[m.group(1)] = m.group(2)
    return out


@dataclass
class KernelPackages:
    """The packages that make up one kernel build, resolved from a spec."""

    spec: str
    release: str          # uname -r of the kernel
    version: str          # the Debian version of the image package
    suite: str
    image: str            # the concrete linux-image-REL package
    packages: dict[str, str] = field(default_factory=dict)  # package -> version: what to download and unpack
    packaging: str = ""   # "image" (one package) or "split" (linux-binary / linux-modules / linux-base)


def _pick(spec: Spec, package: str, found: list[Offer], version: str | None, suite: str | None) -> Offer:
    """The offer of `package` a spec asks for: its version and suite if given, else the newest."""
    cands = [o for o in found if o.package == package and (suite is None or o.suite == suite)
             and (version is None or o.version == version)]
    if not cands:
        where = f" in {suite}" if suite else " in any suite"
        what = f"{package}={version}" if version else package
        seen = sorted({f"{o.version} ({o.suite})" for o in found if o.package == package})
        raise MissingCapability(f"kernel {spec}: {what} is not in the Debian archive{where}",
                                ("it has: " + ", ".join(seen)) if seen else "see: tdptrace lab kernels --available")
    best = newest([o.version for o in cands])
    # Prefer the suite the spec names, else the first suite (oldest) offering that version.
    return next(o for o in cands if o.version == best)


def resolve(spec: Spec) -> KernelPackages:
    """The packages of the kernel `spec` names; refuses, naming the missing package, a kernel the archive
    holds only part of."""
    offer = _pick(spec, spec.package, offers(spec.package), spec.version, spec.suite)
    # Follow meta packages (linux-image-amd64 -> linux-image-7.3.4+deb13-amd64) to the concrete image.
    for _ in range(3):
        deps = exact_depends(control(offer.package, offer.version).get("Depends", ""))
        image = next((p for p in deps if p.startswith("linux-image-") and p != offer.package
                      and not p.endswith("-unsigned")), None)
        if image is None:
            break
        found = offers(image)
        same_suite = [o for o in found if o.suite == offer.suite]
        offer = _pick(spec, image, found, deps[image], offer.suite if same_suite else None)
    else:
        raise TdpError(f"kernel {spec}: meta packages nest too deeply")
    release = offer.package.removeprefix("linux-image-")
    if not _CONCRETE.match(release):
        raise MissingCapability(f"kernel {spec}: {offer.package} {offer.version} names no kernel release")
    k = KernelPackages(spec=str(spec), release=release, version=offer.version, suite=offer.suite, image=offer.package,
                       packages={offer.package: offer.version}, packaging="image")
    split = {p: v for p, v in deps.items() if p in (f"linux-binary-{release}", f"linux-modules-{release}",
                                                    f"linux-base-{release}")}
    if split:
        k.packaging = "split"
        for part in (f"linux-binary-{release}", f"linux-modules-{release}", f"linux-base-{release}"):
            if part not in split:
                raise MissingCapability(f"kernel {spec}: {offer.package} does not depend on {part}",
                                        "the lab needs its kernel binary, modules and base packages")
            found = offers(part)
            want = split[part] or offer.version
            if not any(o.package == part and o.version == want for o in found):
                raise MissingCapability(f"kernel {spec}: {part}={want} is not in the Debian archive "
                                        f"(the archive keeps only part of {release})",
                                        "choose another release: tdptrace lab kernels --available")
            k.packages[part] = want
    return k


def download(k: KernelPackages) -> dict[str, Path]:
    """The .deb of each package of `k`, downloaded into the cache's debs/ once."""
    debs = cache_dir() / "debs"
    debs.mkdir(exist_ok=True)
    out: dict[str, Path] = {}
    for pkg, ver in k.packages.items():
        deb = debs / f"{pkg}_{ver.replace(':', '%3a')}_amd64.deb"
        if not deb.exists():
            run(["apt-get", *apt_options(), "download", f"{pkg}={ver}"], cwd=debs, timeout=1800,
                what=f"apt-get download {pkg}={ver}", hint="the lab needs Debian's package archive (deb.debian.org)")
            if not deb.exists():
                raise MissingCapability(f"apt-get download {pkg}={ver} left no {deb.name} in {debs}")
        out[pkg] = deb
    return out


# --- what the suites offer (lab kernels --available) ----------------------------------------------------------

_LIST_SUITE = re.compile(r"_dists_([a-z-]+)_main_binary-amd64_Packages(?:\.(?:lz4|gz|xz|zst|bz2))?$")
APT_HELPER = "/usr/lib/apt/apt-helper"


def read_list(path: Path) -> str:
    """An apt list file as text, whatever compression the host's apt keeps its lists in (lz4, gz, ...)."""
    if path.name.endswith("_Packages"):
        return path.read_text(errors="replace")
    return run([APT_HELPER, "cat-file", str(path)], what=f"apt-helper cat-file {path.name}")


def available() -> list[dict[str, str]]:
    """Every concrete amd64 kernel image the suites list, with its suite, version and packaging, and whether
    the archive still holds its modules (read from the private apt lists, no further requests)."""
    update()
    rows: list[dict[str, str]] = []
    for path in sorted((apt_dir() / "lists").glob("*_Packages*")):
        m = _LIST_SUITE.search(path.name)
        if not m:
            continue
        suite = m.group(1)
        stanzas = [parse_stanza(s) for s in read_list(path).split("\n\n")
                   if s.startswith("Package: linux-")]
        names = {(s.get("Package"), s.get("Version")) for s in stanzas}
        for s in stanzas:
            pkg = s.get("Package", "")
            rel = pkg.removeprefix("linux-image-")
            if not pkg.startswith("linux-image-") or not _CONCRETE.match(rel) or rel.endswith(("-unsigned", "-dbg")):
                continue
            deps = exact_depends(s.get("Depends", ""))
            split = f"linux-modules-{rel}" in deps
            modules = (f"linux-modules-{rel}", deps[f"linux-modules-{rel}"] or s["Version"]) in names if split else True
            rows.append({"suite": suite, "package": pkg, "release": rel, "version": s.get("Version", ""),
                         "packaging": "split" if split else "image",
                         "bootable": "yes" if modules else "no (modules not in the archive)"})
    order = {s: i for i, s in enumerate(SUITES)}
    rows.sort(key=lambda r: (order.get(r["suite"], 99), cmp_to_key(version_compare)(r["version"])))
    return rows

