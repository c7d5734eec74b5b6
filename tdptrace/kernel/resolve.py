"""Where each probed function's arguments come from on one kernel build: its BTF, the era table, or nowhere.

The one resolver the BCC recorder, the ftrace backend, `doctor` and the lab use. Rules, in order:
- absent from the build's symbols (inlined, or another era's name): nothing to probe;
- only a compiler copy (.isra/.constprop/.part) exists: the copy's ABI is not the C prototype and BTF does
  not describe it, so no arguments are recorded from it (source "none");
- the build has BTF for the function's object (kvm's module BTF, or vmlinux when kvm is built in): the
  parameters BTF lists, by name, type and order (source "BTF"); a function that BTF leaves out although the
  object has BTF (pahole omits functions whose parameters the compiler changed) gets no arguments ("none");
- no BTF at all: the era table of kernel.signatures by (major, minor) (source "table").
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tdptrace.kernel import btf as btfmod
from tdptrace.kernel.btf import Btf, Param
from tdptrace.kernel.functions import YIELD_FUNCTIONS
from tdptrace.kernel.signatures import ARG_REGISTERS, ambiguity, table_params
from tdptrace.kernel.symbols import copies_of, is_compiler_copy

# Functions of the core kernel (vmlinux BTF); everything else probed lives in kvm.ko (or vmlinux if built in).
CORE_FUNCTIONS: frozenset[str] = frozenset(YIELD_FUNCTIONS)
# A function only KVM has: its presence in vmlinux BTF means KVM is built into the kernel.
_KVM_MARKER = "kvm_vcpu_ioctl"
# fentry/fexit programs see at most this many arguments (MAX_BPF_FUNC_ARGS on x86-64).
FENTRY_MAX_ARGS = 12


class Source(str, enum.Enum):
    """Where a function's arguments come from."""

    BTF = "BTF"
    TABLE = "table"
    NONE = "none"


@dataclass(frozen=True)
class Resolved:
    """One function on one build: the symbol to attach, and its parameters with where they came from."""

    name: str  # C name
    symbol: str | None  # what to attach: the plain name, else a compiler copy; None when absent
    source: Source
    params: tuple[Param, ...] | None  # None when source is NONE
    reason: str  # one line: why this source
    copies: tuple[str, ...] = ()  # every symbol of this name in the build (plain first)
    btf_object: str | None = None  # 'vmlinux' or 'kvm': whose BTF described it (source BTF only)
    returns: str | None = None  # C return type BTF gives ('void' for none); None when not from BTF

    @property
    def exists(self) -> bool:
        return self.symbol is not None

    @property
    def param_names(self) -> tuple[str, ...] | None:
        return None if self.params is None else tuple(p.name for p in self.params)

    def index(self, param: str) -> int | None:
        """Position of `param` among the parameters (0-based), None when unknown or not a parameter."""
        names = self.param_names
        return names.index(param) if names and param in names else None

    def register(self, param: str) -> str | None:
        """The x86-64 System V register holding `param` at entry (di, si, dx, cx, r8, r9); None when it is
        passed on the stack, follows an argument passed by value in memory, or is unknown."""
        i = self.index(param)
        if i is None or i >= len(ARG_REGISTERS):
            return None
        assert self.params is not None
        if not all(p.scalar for p in self.params[:i + 1]):
            return None
        return ARG_REGISTERS[i]

    def fentry_slot(self, param: str) -> int | None:
        """Index of `param` in an fentry program's argument array (BTF-described, scalar arguments only)."""
        i = self.index(param)
        if self.source != Source.BTF or i is None or i >= FENTRY_MAX_ARGS:
            return None
        assert self.params is not None
        return i if all(p.scalar for p in self.params[:i + 1]) else None

    def to_meta(self) -> dict[str, Any]:
        """JSON-ready form for a capture's meta and `doctor --json`."""
        return {"symbol": self.symbol, "source": self.source.value, "reason": self.reason, "btf": self.btf_object,
                "params": None if self.params is None else [[p.name, p.type] for p in self.params]}


@dataclass
class KernelBtf:
    """The BTF one kernel build offers: vmlinux's, and kvm's (module BTF split over vmlinux, or None)."""

    vmlinux: Btf | None
    kvm: Btf | None
    origin: str  # where it was read, for messages: '/sys/kernel/btf', 'kvm.ko .BTF over vmlinuz', ...
    symbols: set[str] | None = None  # function symbols known from the same files (a module's .symtab)

    @property
    def kvm_btf(self) -> Btf | None:
        """The BTF that describes KVM's functions: its module BTF, else vmlinux when KVM is built in."""
        if self.kvm is not None:
            return self.kvm
        if self.vmlinux is not None and self.vmlinux.function(_KVM_MARKER) is not None:
            return self.vmlinux
        return None

    def for_function(self, name: str) -> Btf | None:
        """The BTF that would describe `name` on this build (None: no BTF covers it)."""
        return self.vmlinux if name in CORE_FUNCTIONS else self.kvm_btf


def running_btf(root: Path = btfmod.SYSFS_BTF) -> KernelBtf | None:
    """The running kernel's BTF (/sys/kernel/btf/vmlinux and /sys/kernel/btf/kvm); None without any."""
    vmlinux = btfmod.read_sysfs("vmlinux", root=root)
    if vmlinux is None:
        return None
    kvm = btfmod.read_sysfs("kvm", base=vmlinux, root=root)
    return KernelBtf(vmlinux, kvm, str(root))


def package_btf(base: Path, kvm_ko: Path) -> KernelBtf:
    """BTF of a kernel package on disk: `base` is its vmlinuz, a vmlinux ELF or a raw vmlinux BTF file;
    `kvm_ko` its kvm module (.ko, .ko.xz, .ko.zst). The module's own symbol table comes along."""
    try:
        vmlinux = btfmod.read_base(base)
    except btfmod.NoBtf:  # a kernel without BTF: only the module's symbols, arguments from the era table
        module = btfmod.read_module(kvm_ko, None, with_btf=False)
        return KernelBtf(None, None, f"{base.name} (no BTF)", module.symbols)
    module = btfmod.read_module(kvm_ko, vmlinux)
    # The module's symbol table says what KVM really has; core functions exist where vmlinux BTF lists them.
    symbols = module.symbols | (vmlinux.function_names() & CORE_FUNCTIONS)
    origin = f"{kvm_ko.name} .BTF over {base.name}" if module.btf else f"{base.name} (no BTF in {kvm_ko.name})"
    return KernelBtf(vmlinux, module.btf, origin, symbols)


def resolve_function(name: str, release: str, symbols: Iterable[str] | None,
                     kernel_btf: KernelBtf | None) -> Resolved:
    """Resolve one function (C name). `symbols`: the build's text symbols (kallsyms or a module's symtab;
    None to take kernel_btf.symbols, or to trust BTF alone when neither is known)."""
    if symbols is None and kernel_btf is not None:
        symbols = kernel_btf.symbols
    btf = kernel_btf.for_function(name) if kernel_btf is not None else None
    func = btf.function(name) if btf is not None else None
    if symbols is not None:
        copies = tuple(copies_of([name], symbols)[name])
    else:
        copies = (name,) if func is not None else ()
    if not copies:
        return Resolved(name, None, Source.NONE, None, "not in this build (inlined, or not in this era)")
    symbol = copies[0]
    if is_compiler_copy(symbol):
        return Resolved(name, symbol, Source.NONE, None,
                        f"only the compiler copy {symbol} exists; its ABI is not the C prototype and BTF does not "
                        "describe it: no arguments recorded", copies)
    if btf is not None:
        if func is None:
            return Resolved(name, symbol, Source.NONE, None,
                            f"{btf.source} does not describe {name} (pahole leaves out a function whose parameters "
                            "the compiler changed, and BTF cannot tell two static functions of one name apart): no "
                            "arguments recorded", copies)
        obj = "vmlinux" if btf is kernel_btf.vmlinux else "kvm"
        return Resolved(name, symbol, Source.BTF, func.params, f"parameters from {btf.source}", copies, obj,
                        func.returns)
    params = table_params(name, release)
    if params is None:
        why = ambiguity(name, release)
        return Resolved(name, symbol, Source.NONE, None,
                        f"no BTF, and the era table cannot tell: {why}" if why else
                        f"no BTF, and the era table has no signature of {name} for {release}", copies)
    why = "no BTF on this kernel" if kernel_btf is None else "no BTF describes kvm on this kernel"
    return Resolved(name, symbol, Source.TABLE, params, f"{why}: parameters from the era table for {release}",
                    copies)


@dataclass
class Resolution:
    """Every function of interest on one build."""

    release: str
    btf_origin: str | None
    functions: dict[str, Resolved] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Resolved:
        return self.functions[name]

    def present(self) -> list[Resolved]:
        return [r for r in self.functions.values() if r.exists]

    def to_meta(self) -> dict[str, Any]:
        """{'btf': origin, 'functions': {name: Resolved.to_meta()}} for present functions."""
        return {"btf": self.btf_origin,
                "functions": {r.name: r.to_meta() for r in self.functions.values() if r.exists}}


def resolve(names: Iterable[str], release: str, symbols: Iterable[str] | None,
            kernel_btf: KernelBtf | None) -> Resolution:
    """Resolve each of `names` on one build (see resolve_function)."""
    syms = None if symbols is None else set(symbols)
    out = Resolution(release, kernel_btf.origin if kernel_btf else None)
    for name in names:
        out.functions[name] = resolve_function(name, release, syms, kernel_btf)
    return out
