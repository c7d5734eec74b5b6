"""Raw BTF bytes for tests: a builder laid out the way pahole writes BTF, and the vmlinux + kvm BTF of a
fake host whose functions have given C signatures (split BTF for kvm, as /sys/kernel/btf/kvm is)."""
from __future__ import annotations

import struct

class Builder:
    """Raw BTF bytes from type records, the way pahole lays them out."""

    def __init__(self, base_strings: int = 0, first_id: int = 1) -> None:
        self.types: list[bytes] = []
        self.strings = b"" if base_strings else b"\0"
        self.base_strings = base_strings
        self.next_id = first_id

    def s(self, text: str) -> int:
        off = self.base_strings + len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes = b"", kflag: int = 0) -> int:
        off = self.s(name) if name else 0
        self.types.append(struct.pack("<III", off, (kflag << 31) | (kind << 24) | vlen, size_or_type) + extra)
        self.next_id += 1
        return self.next_id - 1

    def int_(self, name: str, size: int, signed: bool = False, boolean: bool = False) -> int:
        enc = (1 if signed else 0) | (4 if boolean else 0)
        return self.add(name, 1, 0, size, struct.pack("<I", (enc << 24) | (size * 8)))

    def func(self, name: str, ret: int, params: list[tuple[str, int]]) -> int:
        extra = b"".join(struct.pack("<II", self.s(n), t) for n, t in params)
        proto = self.add("", 13, len(params), ret, extra)
        return self.add(name, 12, 1, proto)

    def bytes(self) -> bytes:
        types = b"".join(self.types)
        return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strings)) + \
            types + self.strings




class TypedBuilder(Builder):
    """A Builder that spells parameter types as C ('struct kvm *', 'gfn_t', 'bool', 'int', 'rwlock_t *')."""

    def __init__(self, base: "TypedBuilder | None" = None) -> None:
        if base is None:
            super().__init__()
            self.ids: dict[str, int] = {}
        else:
            super().__init__(base_strings=len(base.strings), first_id=base.next_id)
            self.ids = dict(base.ids)

    def ctype(self, spelling: str) -> int:
        if spelling in self.ids:
            return self.ids[spelling]
        if spelling.endswith("*"):
            inner = spelling[:-1].strip()
            tid = self.add("", 2, 0, self.ctype(inner))
        elif spelling.startswith("struct "):
            tid = self.add(spelling[7:], 4, 0, 64)
        elif spelling == "bool":
            tid = self.add("bool", 8, 0, self.int_("_Bool", 1, boolean=True))
        elif spelling == "int":
            tid = self.int_("int", 4, signed=True)
        elif spelling in ("gfn_t", "u64"):
            tid = self.add(spelling, 8, 0, self.ctype("unsigned long long"))
        elif spelling == "unsigned long long":
            tid = self.int_(spelling, 8)
        else:  # rwlock_t, spinlock_t and other typedefs of structs
            tid = self.add(spelling, 8, 0, self.ctype(f"struct {spelling}"))
        self.ids[spelling] = tid
        return tid

    def function(self, name: str, params: list[tuple[str, str]], ret: str = "void") -> None:
        typed = [(n, self.ctype(t)) for n, t in params]
        self.func(name, 0 if ret == "void" else self.ctype(ret), typed)


def host_btf(vmlinux_funcs: dict[str, list[tuple[str, str]]],
             kvm_funcs: dict[str, list[tuple[str, str]]], returns: dict[str, str] | None = None) -> tuple[bytes, bytes]:
    """(vmlinux BTF, kvm module BTF split over it) describing the given functions (kvm's return void unless
    `returns` names their return type; vmlinux's return int)."""
    base = TypedBuilder()
    base.ctype("struct kvm *")
    for name, params in vmlinux_funcs.items():
        base.function(name, params, "int")
    split = TypedBuilder(base)
    for name, params in kvm_funcs.items():
        split.function(name, params, (returns or {}).get(name, "void"))
    return base.bytes(), split.bytes()


# Return types of the 6.1 functions that return something (the rest are void).
BTF_61_RETURNS = {"tdp_mmu_zap_leafs": "bool", "kvm_tdp_mmu_zap_leafs": "bool", "kvm_arch_init_vm": "int",
                  "kvm_arch_prepare_memory_region": "int"}
KVM = ("kvm", "struct kvm *")
ROOT = ("root", "struct kvm_mmu_page *")
# Debian 6.1.0-56's own BTF (kvm.ko .BTF) for the functions the fake 6.1 host has.
BTF_61_VMLINUX = {"__cond_resched_rwlock_read": [("lock", "rwlock_t *")],
                  "__cond_resched_rwlock_write": [("lock", "rwlock_t *")], "__cond_resched_lock": [("lock", "spinlock_t *")]}
BTF_61_KVM = {
    "tdp_mmu_zap_leafs": [KVM, ROOT, ("start", "gfn_t"), ("end", "gfn_t"), ("can_yield", "bool"), ("flush", "bool")],
    "__tdp_mmu_zap_root": [KVM, ROOT, ("shared", "bool"), ("zap_level", "int")],
    "kvm_tdp_mmu_zap_leafs": [KVM, ("start", "gfn_t"), ("end", "gfn_t"), ("flush", "bool")],
    "kvm_tdp_mmu_zap_invalidated_roots": [KVM],
    "kvm_tdp_mmu_zap_all": [KVM],
    "kvm_tdp_mmu_put_root": [KVM, ROOT, ("shared", "bool")],
    "kvm_arch_flush_shadow_memslot": [KVM, ("slot", "struct kvm_memory_slot *")],
    "kvm_mmu_zap_all_fast": [KVM],
    "kvm_arch_init_vm": [KVM, ("type", "u64")],
    "kvm_arch_prepare_memory_region": [KVM, ("old", "struct kvm_memory_slot *"), ("new", "struct kvm_memory_slot *"),
                                       ("change", "int")],
    "__handle_changed_spte": [KVM, ("as_id", "int"), ("gfn", "gfn_t"), ("old_spte", "u64"), ("new_spte", "u64"),
                              ("level", "int"), ("shared", "bool")],
}
