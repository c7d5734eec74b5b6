"""What this host lets tdptrace record: small checks returning dataclasses, shared by `doctor` and `record`.

Every path is read below `HostEnv.root` so tests can build a fake host tree; live probes (importing bcc,
loading a do-nothing fentry program) run only when `HostEnv.live` is set (by default: root is "/").
No typer or rich here.
"""
from __future__ import annotations

import gzip
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from tdptrace.kernel.btf import BtfError
from tdptrace.kernel.functions import PREFERRED_SPAN_FUNCTIONS, VMM_CALLS
from tdptrace.kernel.functions import YIELD_FUNCTIONS as _YIELDS
from tdptrace.kernel.mmu_lock import contention_yields
from tdptrace.kernel.release import parse_version, ringbuf_supported
from tdptrace.kernel.resolve import Resolution, Source, resolve, running_btf
from tdptrace.kernel.symbols import copies_of, listed_functions, text_symbols_named
from tdptrace.kernel.tracefs import KVMMMU_EVENTS, TRACEFS_MOUNT
from tdptrace.kernel.tracefs import find_tracefs as tracefs_under
from tdptrace.live.fentry_probe import probe_fentry

OK, MISSING, WARN, INFO = "ok", "missing", "warn", "info"

FIGURES: tuple[str, ...] = ("zap_levels", "yields", "retained")
FIGURE_TITLES: dict[str, str] = {
    "zap_levels": "SPTE zaps per level",
    "yields": "zap spans, yields and lock-hold gaps",
    "retained": "retained page tables",
}

# Zap functions whose presence in kallsyms shows a TDP MMU to record (any one is a span entry point).
ZAP_FUNCTIONS: tuple[str, ...] = tuple(f for f in PREFERRED_SPAN_FUNCTIONS if f not in ("kvm_tdp_mmu_zap_sp",
                                       "kvm_tdp_mmu_zap_possible_nx_huge_page"))
YIELD_FUNCTIONS: tuple[str, ...] = tuple(sorted(_YIELDS))
# 5.10 has no kvm_tdp_mmu_spte_changed tracepoint; a kprobe here gives the same fields.
SPTE_FALLBACK_FUNCTION = "__handle_changed_spte"
SPTE_FALLBACK_PARAMS = ("kvm", "as_id", "gfn", "old_spte", "new_spte", "level")


@dataclass
class Check:
    """One row of `tdptrace doctor`: status is ok, missing, warn or info; fix is the exact thing to do."""

    name: str
    status: str
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (OK, INFO)


@dataclass
class HostEnv:
    """Where and how to look: a root directory, the effective uid, the environment, and the bcc importer."""

    root: Path = Path("/")
    euid: Optional[int] = None
    environ: Optional[dict[str, str]] = None
    live: Optional[bool] = None  # import bcc and load a probe program; default: root == "/"
    import_bcc: Optional[Callable[[], Any]] = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.euid is None:
            self.euid = os.geteuid()
        if self.environ is None:
            self.environ = dict(os.environ)
        if self.live is None:
            self.live = self.root == Path("/")

    def path(self, rel: str) -> Path:
        """`rel` (an absolute host path or one relative to /) below this env's root."""
        return self.root / rel.lstrip("/")


@dataclass
class HostReport:
    """All checks, what they allow, and the exit status `doctor` returns (0 all figures, 1 some, 2 none)."""

    checks: list[Check]
    figures_available: dict[str, bool]
    figure_notes: dict[str, str]
    kernel_release: str
    tracefs: Optional[str]
    methods: dict[str, bool] = field(default_factory=dict)
    symbols: dict[str, list[str]] = field(default_factory=dict)
    arguments: Optional[Resolution] = None  # where each function's arguments come from (kernel.resolve)

    @property
    def can_record(self) -> bool:
        return any(self.figures_available.values())

    @property
    def missing_figures(self) -> list[str]:
        return [f for f in FIGURES if not self.figures_available[f]]

    @property
    def exit_code(self) -> int:
        if all(self.figures_available.values()):
            return 0
        return 1 if self.can_record else 2

    def check(self, name: str) -> Check:
        """The row called `name` (KeyError if absent)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def verdict(self) -> str:
        """One line: what `record` can give here."""
        if self.exit_code == 0:
            return "record can give all three figures: " + ", ".join(FIGURE_TITLES[f] for f in FIGURES)
        if self.exit_code == 2:
            return "record cannot record here: " + "; ".join(dict.fromkeys(self.figure_notes[f] for f in FIGURES))
        have = ", ".join(FIGURE_TITLES[f] for f in FIGURES if self.figures_available[f])
        return f"record can give only {have}; missing: " + "; ".join(
            f"{FIGURE_TITLES[f]} ({self.figure_notes[f]})" for f in self.missing_figures)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (`tdptrace doctor --json`)."""
        return {
            "exit_code": self.exit_code,
            "can_record": self.can_record,
            "figures_available": self.figures_available,
            "figure_notes": self.figure_notes,
            "verdict": self.verdict(),
            "kernel_release": self.kernel_release,
            "tracefs": self.tracefs,
            "methods": self.methods,
            "symbols": self.symbols,
            "arguments": self.arguments.to_meta() if self.arguments is not None else None,
            "checks": [asdict(c) | {"ok": c.ok} for c in self.checks],
        }


# ---- small readers -----------------------------------------------------------------------------------
# pathlib's is_dir()/is_file() raise on EACCES (tracefs is root-only): a check must never crash on it.

def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:
        return False


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except OSError:
        return False


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except OSError:
        return False


def _read(p: Path) -> Optional[str]:
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def kernel_release(env: HostEnv) -> str:
    """The running kernel's release, from proc/sys/kernel/osrelease (uname -r)."""
    text = _read(env.path("/proc/sys/kernel/osrelease"))
    return text.strip() if text else (os.uname().release if env.root == Path("/") else "unknown")


def find_tracefs(env: HostEnv) -> Optional[Path]:
    """The mounted tracefs directory (one that has events/) below the env's root, or None."""
    return tracefs_under(env.root)


def kernel_config(env: HostEnv) -> Optional[dict[str, str]]:
    """CONFIG_* values from /proc/config.gz (or /boot/config-RELEASE), None if neither is readable."""
    raw: Optional[str] = None
    try:
        raw = gzip.decompress(env.path("/proc/config.gz").read_bytes()).decode()
    except (OSError, EOFError, gzip.BadGzipFile):
        raw = _read(env.path(f"/boot/config-{kernel_release(env)}"))
    if raw is None:
        return None
    cfg = dict(re.findall(r"^(CONFIG_\w+)=(.*)$", raw, re.M))
    cfg.update({k: "n" for k in re.findall(r"^# (CONFIG_\w+) is not set$", raw, re.M)})
    return cfg


# ---- individual checks --------------------------------------------------------------------------------

def check_root(env: HostEnv) -> Check:
    if env.euid == 0:
        return Check("root", OK, "running as root")
    return Check("root", MISSING, f"running as uid {env.euid}; BPF and tracefs need root",
                 "run as root: sudo .venv/bin/tdptrace ...")


def _default_import_bcc() -> Any:
    import bcc  # noqa: F401  (python3-bpfcc)

    return bcc


def check_bcc(env: HostEnv) -> tuple[Check, Any]:
    """bcc importable (from the distribution's python3-bpfcc) and its version; returns the module too."""
    fix = ("apt install python3-bpfcc (never `pip install bcc`: that PyPI package is unrelated); "
           "the venv needs --system-site-packages: bash scripts/bootstrap.sh")
    if not env.live and env.import_bcc is None:
        return Check("bcc", INFO, "not probed (fake host tree)"), None
    try:
        mod = (env.import_bcc or _default_import_bcc)()
    except ImportError as exc:
        return Check("bcc", MISSING, f"python module bcc not importable ({exc})", fix), None
    except Exception as exc:  # libbcc.so missing or broken: bcc raises OSError/others at import
        return Check("bcc", MISSING, f"importing bcc failed: {type(exc).__name__}: {exc}", fix), None
    if not hasattr(mod, "BPF"):
        return Check("bcc", MISSING, f"the bcc module at {getattr(mod, '__file__', '?')} is not BCC "
                     "(the unrelated PyPI package?)", "pip uninstall bcc; " + fix), None
    version = getattr(mod, "__version__", "unknown")
    return Check("bcc", OK, f"bcc {version} ({Path(getattr(mod, '__file__', '?')).parent})"), mod


def check_headers(env: HostEnv) -> Check:
    """Kernel headers where BCC looks for them (its loader.cc): BCC_KERNEL_SOURCE, else
    /lib/modules/REL/source when both build and source are directories, else build; it needs
    include/linux/kconfig.h there or it prints "Unable to find kernel headers" and fails to compile."""
    rel = kernel_release(env)
    kdir = f"/lib/modules/{rel}"
    src_env = (env.environ or {}).get("BCC_KERNEL_SOURCE")
    if src_env:
        kpath, how = src_env, "BCC_KERNEL_SOURCE"
    elif _is_dir(env.path(f"{kdir}/build")) and _is_dir(env.path(f"{kdir}/source")):
        kpath, how = f"{kdir}/source", "BCC reads source when build exists too"
    else:
        kpath, how = f"{kdir}/build", "build"
    unable = ('without them BCC prints "Unable to find kernel headers" and cannot compile '
              "(tracefs recording still works)")
    base_fix = (f"apt install linux-headers-{rel}; if there is no such package (custom kernel): "
                "apt install linux-headers-amd64 and link /lib/modules/$(uname -r)/build to "
                "/usr/src/linux-headers-VER-amd64 and /lib/modules/$(uname -r)/source to "
                "/usr/src/linux-headers-VER-common, or export BCC_KERNEL_SOURCE=<a complete header tree>")
    if _is_file(env.path(kpath + "/include/linux/kconfig.h")):
        detail = f"{kpath} ({how})" if how != "build" else kpath
        target = _resolved(env, kpath)
        tree_rel = re.search(r"linux-headers-(\d+\.\d+[^/]*)", target or "")
        if tree_rel and not rel.startswith(re.sub(r"-(amd64|generic|common|cloud-amd64)$", "", tree_rel[1])):
            detail += f"; {tree_rel[1]} headers for a {rel} kernel (fine for tracepoints)"
        if how.startswith("source") and not _is_dir(env.path(f"{kdir}/build/include/generated")):
            return Check("kernel headers", MISSING, f"{kpath} found but {kdir}/build lacks include/generated",
                         base_fix)
        return Check("kernel headers", OK, detail)
    # Debian splits a header tree into -ARCH (generated files) and -common (the rest). A source link
    # to the -ARCH half is the usual mistake: name the -common tree it should point to.
    target = _resolved(env, kpath) or ""
    m = re.search(r"(linux-headers-[^/]+?)-(amd64|arm64|generic|cloud-amd64|rt-amd64)$", target)
    if m:
        common = f"/usr/src/{m[1]}-common"
        if _is_file(env.path(common + "/include/linux/kconfig.h")):
            return Check("kernel headers", MISSING,
                         f"{kpath} -> {target} has no include/linux/kconfig.h (that half is in {common}); "
                         + unable, f"ln -sfn {common} {kdir}/source")
    where = f"{kpath} -> {target}" if target and target != kpath else kpath
    return Check("kernel headers", MISSING, f"no include/linux/kconfig.h under {where}; " + unable, base_fix)


def _resolved(env: HostEnv, path: str) -> Optional[str]:
    """Where `path` leads on the host (symlinks followed inside the root), as a host path."""
    p = env.path(path)
    try:
        real = p.resolve(strict=False)
    except OSError:
        return None
    root = env.root.resolve()
    if root != Path("/"):
        try:
            return "/" + str(real.relative_to(root))
        except ValueError:
            # An absolute symlink inside a fake tree points at the real host: re-read it below the root.
            target = os.readlink(p) if p.is_symlink() else str(real)
            return target
    return str(real)


def check_btf(env: HostEnv) -> Check:
    if _is_file(env.path("/sys/kernel/btf/vmlinux")):
        return Check("BTF", OK, "/sys/kernel/btf/vmlinux")
    return Check("BTF", MISSING, "no /sys/kernel/btf/vmlinux: no fentry/fexit",
                 "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (kprobes do not need it)")


def tracefs_mounts(env: HostEnv) -> list[str]:
    """Mount points of tracefs listed in /proc/mounts."""
    return re.findall(r"^\S+ (\S+) tracefs ", _read(env.path("/proc/mounts")) or "", re.M)


def check_tracefs(env: HostEnv) -> tuple[Check, Optional[Path]]:
    d = find_tracefs(env)
    if d is not None:
        return Check("tracefs", OK, "/" + str(d.relative_to(env.root))), d
    mounted = tracefs_mounts(env)
    if mounted:
        return (Check("tracefs", MISSING, f"mounted at {mounted[0]} but not readable by uid {env.euid}",
                      "run as root: sudo .venv/bin/tdptrace ..."), None)
    return (Check("tracefs", MISSING, "tracefs is not mounted (no /sys/kernel/tracing/events)",
                  TRACEFS_MOUNT), None)


def check_kprobes(env: HostEnv, tracefs: Optional[Path], config: Optional[dict[str, str]],
                  tracefs_fix: str = TRACEFS_MOUNT) -> Check:
    cfg = "" if config is None else f"; CONFIG_KPROBES={config.get('CONFIG_KPROBES', 'n')}"
    fix = ("use a kernel built with CONFIG_KPROBES=y (this one cannot have kprobes), "
           "or the QEMU lab in docs/lab.md")
    if config is not None and config.get("CONFIG_KPROBES") != "y":
        return Check("kprobes", MISSING, f"kernel built without kprobes{cfg}", fix)
    if tracefs is None:
        return Check("kprobes", MISSING, "unknown without tracefs" + cfg, tracefs_fix)
    if _exists(tracefs / "kprobe_events"):
        return Check("kprobes", OK, "kprobe_events present" + cfg)
    return Check("kprobes", MISSING, "no kprobe_events in tracefs" + cfg, fix)


def check_fentry(env: HostEnv, release: str, btf: Check, bcc_mod: Any, symbols: dict[str, list[str]]) -> Check:
    """fentry/fexit: BTF and kernel >= 5.5 at least; when live, a real load-and-attach decides."""
    fix = ("optional where kprobes work; else a kernel that allows BPF tracing programs (BTF, "
           "DYNAMIC_FTRACE_WITH_DIRECT_CALLS), or the QEMU lab (docs/lab.md)")
    if not btf.ok:
        return Check("fentry", MISSING, "no BTF", fix)
    if (parse_version(release) or (0, 0)) < (5, 5):
        return Check("fentry", MISSING, f"kernel {release} < 5.5", fix)
    hint = ""
    if bcc_mod is not None:
        try:
            hint = f"; BCC support_kfunc()={bool(bcc_mod.BPF.support_kfunc())}"
        except Exception as exc:  # older bcc: no support_kfunc
            hint = f"; BCC support_kfunc unavailable ({type(exc).__name__})"
    if env.live and env.euid == 0:
        targets = tuple(n for names in symbols.values() for n in names) + YIELD_FUNCTIONS
        ok, detail = probe_fentry(targets)
        return Check("fentry", OK if ok else MISSING, detail + hint, "" if ok else fix)
    if env.live:
        return Check("fentry", WARN, "unverified: loading a test program needs root" + hint,
                     "run doctor as root")
    kallsyms = _read(env.path("/proc/kallsyms")) or ""
    if re.search(r" bpf_trampoline_link_prog$", kallsyms, re.M):
        return Check("fentry", OK, "BTF, kernel >= 5.5 and BPF trampolines (not load-tested)" + hint)
    return Check("fentry", MISSING, "no bpf_trampoline_link_prog in kallsyms" + hint, fix)


def check_ringbuf(release: str, bcc_mod: Any) -> Check:
    if not ringbuf_supported(release):
        return Check("ring buffer", WARN, f"kernel {release} < 5.8: perf buffers instead (more overhead)")
    if bcc_mod is not None and not hasattr(bcc_mod, "RingBuf"):
        return Check("ring buffer", WARN, "this bcc has no RingBuf: perf buffers instead",
                     "apt install python3-bpfcc from a newer release (0.16+)")
    return Check("ring buffer", OK, "BPF ring buffer (kernel >= 5.8)")


def check_kvm(env: HostEnv) -> list[Check]:
    """KVM loaded, its vendor module, and whether the TDP MMU is in use."""
    rows: list[Check] = []
    mod = env.path("/sys/module")
    if not _is_dir(mod / "kvm"):
        rows.append(Check("kvm", MISSING, "KVM is not loaded (no /sys/module/kvm)",
                          "modprobe kvm_intel (Intel) or modprobe kvm_amd (AMD)"))
        return rows
    rows.append(Check("kvm", OK, "/sys/module/kvm"))
    vendors = sorted(p.name for p in mod.glob("kvm_*") if _is_dir(p))
    extra = []
    for v, param in (("kvm_intel", "ept"), ("kvm_amd", "npt")):
        val = _read(mod / v / "parameters" / param)
        if val is not None:
            extra.append(f"{param}={val.strip()}")
    if vendors:
        rows.append(Check("vendor module", OK, ", ".join(vendors + extra)))
    else:
        rows.append(Check("vendor module", MISSING, "no kvm_intel/kvm_amd loaded: no VMs can run",
                          "modprobe kvm_intel (Intel) or modprobe kvm_amd (AMD)"))
    tdp = _read(mod / "kvm" / "parameters" / "tdp_mmu")
    if tdp is None:
        rows.append(Check("tdp_mmu", WARN, "kvm has no tdp_mmu parameter (kernel < 5.10 or not x86)"))
    elif tdp.strip() in ("Y", "1"):
        rows.append(Check("tdp_mmu", OK, "Y: KVM uses the TDP MMU"))
    else:
        hw = "kvm_pvm has no EPT/NPT; " if "kvm_pvm" in vendors else ""
        rows.append(Check("tdp_mmu", WARN, f"N: KVM uses the shadow MMU; {hw}no TDP MMU zaps will happen here",
                          "reload with the TDP MMU: modprobe -r kvm_intel kvm; modprobe kvm tdp_mmu=Y; "
                          "modprobe kvm_intel ept=Y (without EPT/NPT: the QEMU lab, docs/lab.md)"))
    return rows


def check_tracepoints(tracefs: Optional[Path],
                      tracefs_fix: str = TRACEFS_MOUNT) -> Check:
    if tracefs is None:
        return Check("kvmmmu tracepoints", MISSING, "unknown without tracefs", tracefs_fix)
    present = [e for e in KVMMMU_EVENTS if _is_dir(tracefs / "events" / "kvmmmu" / e)]
    missing = [e for e in KVMMMU_EVENTS if e not in present]
    if not present:
        return Check("kvmmmu tracepoints", MISSING, "no events/kvmmmu (KVM not loaded?)",
                     "modprobe kvm_intel or kvm_amd, then check again")
    if "kvm_tdp_mmu_spte_changed" not in present:
        return Check("kvmmmu tracepoints", WARN, "no kvm_tdp_mmu_spte_changed (kernel < 5.11): zaps come "
                     f"from a kprobe on {SPTE_FALLBACK_FUNCTION}; missing " + ", ".join(missing),
                     "kprobes must work (see the kprobes row)")
    return Check("kvmmmu tracepoints", OK, f"{len(present)}/{len(KVMMMU_EVENTS)}" +
                 (f"; missing {', '.join(missing)}" if missing else ""))


def check_symbols(env: HostEnv, tracefs: Optional[Path],
                  tracefs_fix: str = TRACEFS_MOUNT) -> tuple[list[Check], dict[str, list[str]]]:
    """Zap and yield functions in /proc/kallsyms (with clone suffixes), and whether ftrace lists them."""
    names = ZAP_FUNCTIONS + YIELD_FUNCTIONS + (SPTE_FALLBACK_FUNCTION,) + VMM_CALLS
    kallsyms = _read(env.path("/proc/kallsyms"))
    if kallsyms is None:
        return [Check("zap functions", MISSING, "/proc/kallsyms unreadable", "run as root")], {}
    found = copies_of(names, text_symbols_named(kallsyms, names))
    zaps = [s for n in ZAP_FUNCTIONS for s in found[n]]
    yields = [s for n in YIELD_FUNCTIONS for s in found[n]]
    rows = [
        Check("zap functions", OK if zaps else MISSING,
              ", ".join(zaps) if zaps else "none of the known TDP MMU zap functions in kallsyms",
              "" if zaps else "load KVM (modprobe kvm_intel/kvm_amd); a kernel < 5.10 has no TDP MMU"),
        Check("yield functions", OK if yields else MISSING, ", ".join(yields) if yields else
              "no __cond_resched_rwlock_read/write or __cond_resched_lock",
              "" if yields else "kernel < 5.10 is not supported"),
    ]
    affs = _read_errno(tracefs / "available_filter_functions") if tracefs is not None else (None, "no tracefs")
    if affs[0] is None:
        rows.append(Check("filter functions", WARN, f"available_filter_functions unreadable ({affs[1]}): "
                          "traceability of the functions above is unknown",
                          "" if tracefs else tracefs_fix))
    else:
        listed = listed_functions(affs[0])
        wanted = zaps + yields
        absent = [s for s in wanted if s not in listed]
        rows.append(Check("filter functions", OK if not absent else WARN,
                          f"{len(wanted) - len(absent)}/{len(wanted)} listed" +
                          (f"; not traceable: {', '.join(absent)}" if absent else ""),
                          "" if not absent else "unlisted functions are notrace or inlined: spans use the others"))
    return rows, found


def _read_errno(p: Path) -> tuple[Optional[str], str]:
    try:
        return p.read_text(), ""
    except OSError as exc:
        return None, os.strerror(exc.errno) if exc.errno else str(exc)


def check_arguments(env: HostEnv, release: str, found: dict[str, list[str]]) -> tuple[Check, Resolution]:
    """Where each function's arguments come from on this kernel (BTF, the era table, or none), through the one
    resolver the recorder and the lab use."""
    btf_note = ""
    try:
        kernel_btf = running_btf(env.path("/sys/kernel/btf"))
    except BtfError as exc:
        kernel_btf, btf_note = None, f"BTF unreadable ({exc.message}); "
    symbols = {s for syms in found.values() for s in syms}
    res = resolve(list(found), release, symbols, kernel_btf)
    by_source: dict[Source, list[str]] = {s: [] for s in Source}
    for r in res.present():
        by_source[r.source].append(r.symbol or r.name)
    if not res.present():
        return Check("arguments", INFO, btf_note + "no probed function in this kernel to resolve"), res
    parts = []
    if by_source[Source.BTF]:
        parts.append(f"from BTF ({kernel_btf.origin if kernel_btf else ''}): {', '.join(by_source[Source.BTF])}")
    if by_source[Source.TABLE]:
        parts.append(f"from the era table for {release} (no BTF for kvm): {', '.join(by_source[Source.TABLE])}")
    if by_source[Source.NONE]:
        parts.append("none (" + "; ".join(f"{r.symbol}: {r.reason}" for r in res.present()
                                          if r.source == Source.NONE) + ")")
    # Functions without arguments are a fact of the build (nothing to fix): their spans are recorded without
    # gfn range, zap level or lock mode.
    status = WARN if btf_note else INFO if by_source[Source.NONE] else OK
    return Check("arguments", status, btf_note + "; ".join(parts)), res


def check_contention(release: str, config: Optional[dict[str, str]]) -> Check:
    """Whether a vCPU waiting for mmu_lock makes this kernel's zaps yield (its preemption build), so the
    yields a recording shows can be read right."""
    from tdptrace.live.host_limits import preempt_model

    cfg = config or {}
    dynamic = cfg.get("CONFIG_PREEMPT_DYNAMIC") == "y" if config is not None else None
    _, why = contention_yields(release, preempt_model(cfg) if config is not None else None, dynamic)
    return Check("contention yields", INFO, why)


# ---- the whole host -----------------------------------------------------------------------------------

def check_host(env: Optional[HostEnv] = None) -> HostReport:
    """Run every check and decide which of the three figures `record` can give here."""
    env = env or HostEnv()
    release = kernel_release(env)
    config = kernel_config(env)
    root = check_root(env)
    bcc_row, bcc_mod = check_bcc(env)
    headers = check_headers(env)
    btf = check_btf(env)
    tfs_row, tracefs = check_tracefs(env)
    kprobes = check_kprobes(env, tracefs, config, tfs_row.fix)
    kvm_rows = check_kvm(env)
    tps = check_tracepoints(tracefs, tfs_row.fix)
    sym_rows, symbols = check_symbols(env, tracefs, tfs_row.fix)
    args_row, arguments = check_arguments(env, release, symbols)
    contention_row = check_contention(release, config)
    zap_syms = {n: symbols.get(n, []) for n in ZAP_FUNCTIONS if symbols.get(n)}
    fentry = check_fentry(env, release, btf, bcc_mod, zap_syms)
    ring = check_ringbuf(release, bcc_mod)
    checks = [root, bcc_row, headers, btf, tfs_row, kprobes, fentry, ring, *kvm_rows, tps, *sym_rows, args_row, contention_row]

    is_root = root.ok
    bcc_ok = is_root and bcc_row.status == OK and headers.ok
    ftrace_ok = is_root and tracefs is not None
    methods = {
        "bcc_tracepoints": bcc_ok and tracefs is not None,
        "ftrace": ftrace_ok,
        "kprobes": is_root and kprobes.ok and (ftrace_ok or bcc_ok),
        "fentry": bcc_ok and fentry.status == OK,
    }
    have_spte_tp = tracefs is not None and _is_dir(tracefs / "events/kvmmmu/kvm_tdp_mmu_spte_changed")
    # __handle_changed_spte is 5.10's SPTE source only where it has that meaning: no tracepoint, and arguments
    # (kvm, as_id, gfn, old_spte, new_spte, level) in that order (7.3 has a new function of the same name).
    fallback = arguments.functions.get(SPTE_FALLBACK_FUNCTION)
    have_fallback = (methods["kprobes"] and not have_spte_tp and fallback is not None and fallback.exists
                     and (fallback.param_names or ())[:6] == SPTE_FALLBACK_PARAMS)
    attach_tp = methods["bcc_tracepoints"] or methods["ftrace"]
    zap_ok = (attach_tp and have_spte_tp) or have_fallback
    zap_syms_ok = any(symbols.get(n) for n in ZAP_FUNCTIONS)
    yield_syms_ok = any(symbols.get(n) for n in YIELD_FUNCTIONS)
    yields_ok = (methods["kprobes"] or methods["fentry"]) and zap_syms_ok and yield_syms_ok

    def why_not_zaps() -> str:
        if not is_root:
            return "not root"
        if tracefs is None:
            return "tracefs not mounted"
        if not have_spte_tp:
            return f"no kvm_tdp_mmu_spte_changed tracepoint and no kprobe on {SPTE_FALLBACK_FUNCTION}"
        return "no way to attach to tracepoints"

    def why_not_yields() -> str:
        if not is_root:
            return "not root"
        if not (methods["kprobes"] or methods["fentry"]):
            return "no kprobes and no fentry"
        if not zap_syms_ok:
            return "no zap functions in kallsyms"
        return "no __cond_resched_rwlock_* in kallsyms"

    avail = {"zap_levels": zap_ok, "yields": yields_ok, "retained": zap_ok}
    notes = {
        "zap_levels": "ok" if zap_ok else why_not_zaps(),
        "yields": "ok" if yields_ok else why_not_yields(),
        "retained": "ok" if zap_ok else why_not_zaps(),
    }
    tracefs_rel = None if tracefs is None else "/" + str(tracefs.relative_to(env.root))
    return HostReport(checks=checks, figures_available=avail, figure_notes=notes, kernel_release=release,
                      tracefs=tracefs_rel, methods=methods,
                      symbols={k: v for k, v in symbols.items() if v}, arguments=arguments)
