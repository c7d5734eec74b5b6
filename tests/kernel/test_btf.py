"""The BTF reader: exact parameters from hand-built BTF (base and split), clear errors on bad bytes, the
running kernel's /sys/kernel/btf/vmlinux, and real Debian kvm.ko builds against their known signatures."""
from __future__ import annotations

import lzma
import struct
from pathlib import Path

import pytest

from tdptrace.kernel import btf
from tdptrace.kernel.btf import BtfError
from btfgen import Builder


def base_btf() -> tuple[Builder, btf.Btf]:
    b = Builder()
    u64 = b.int_("unsigned long long", 8)
    b.add("u64", 8, 0, u64)
    b.int_("int", 4, signed=True)
    b.int_("_Bool", 1, boolean=True)
    kvm = b.add("kvm", 4, 0, 4096)
    b.add("", 2, 0, kvm)  # struct kvm *
    return b, btf.parse(b.bytes(), source="base")


def test_base_function_parameters_in_order_with_types():
    b = Builder()
    u64 = b.int_("unsigned long long", 8)
    gfn_t = b.add("gfn_t", 8, 0, u64)
    boolean = b.int_("_Bool", 1, boolean=True)
    bool_t = b.add("bool", 8, 0, boolean)
    int_t = b.int_("int", 4, signed=True)
    kvm_ptr = b.add("", 2, 0, b.add("kvm", 7, 0, 0))  # pointer to a forward-declared struct
    const_int = b.add("", 10, 0, int_t)
    b.func("kvm_tdp_mmu_zap_leafs", bool_t, [("kvm", kvm_ptr), ("start", gfn_t), ("end", gfn_t), ("flush", bool_t)])
    b.func("takes_const", 0, [("level", const_int)])
    parsed = btf.parse(b.bytes(), source="test")
    f = parsed.function("kvm_tdp_mmu_zap_leafs")
    assert f.param_names == ("kvm", "start", "end", "flush")
    assert [p.type for p in f.params] == ["struct kvm *", "gfn_t", "gfn_t", "bool"]
    assert [p.fetch_type for p in f.params] == ["x64", "u64", "u64", "u8"]
    assert f.returns == "bool"
    g = parsed.function("takes_const")
    assert g.returns == "void" and g.params[0].type == "const int" and g.params[0].fetch_type == "s32"
    assert parsed.function("absent") is None
    assert parsed.function_names() == {"kvm_tdp_mmu_zap_leafs", "takes_const"}


def test_split_btf_numbers_types_and_strings_after_its_base():
    base, parsed_base = base_btf()
    split = Builder(base_strings=len(base.strings), first_id=parsed_base.last_id + 1)
    # Types 1..6 are the base's: 2 = u64, 3 = int, 4 = _Bool, 6 = struct kvm *.
    root = split.add("", 2, 0, split.add("kvm_mmu_page", 4, 0, 128))
    split.func("__tdp_mmu_zap_root", 0, [("kvm", 6), ("root", root), ("shared", 4), ("zap_level", 3)])
    mod = btf.parse(split.bytes(), parsed_base, "kvm")
    assert mod.first_id == 7
    f = mod.function("__tdp_mmu_zap_root")
    assert [(p.name, p.type) for p in f.params] == [
        ("kvm", "struct kvm *"), ("root", "struct kvm_mmu_page *"), ("shared", "_Bool"), ("zap_level", "int")]
    with pytest.raises(BtfError, match="string offset .* out of range"):  # read without its base
        btf.parse(split.bytes(), None, "kvm")


def test_bad_bytes_are_refused_in_one_line():
    with pytest.raises(BtfError, match="is not BTF"):
        btf.parse(b"\0" * 64, source="x")
    b = Builder()
    b.int_("int", 4)
    raw = b.bytes()
    with pytest.raises(BtfError, match="run past the end"):
        btf.parse(raw[:-3], source="x")
    bad = bytearray(raw)
    struct.pack_into("<I", bad, 24 + 4, 31 << 24)  # kind 31 does not exist
    with pytest.raises(BtfError, match="unknown BTF kind 31"):
        btf.parse(bytes(bad), source="x")


def test_compressed_module_without_btf_base_is_refused(tmp_path):
    _, base = base_btf()
    ko = tmp_path / "kvm.ko.xz"
    ko.write_bytes(lzma.compress(b"not an elf"))
    with pytest.raises(BtfError, match="not a 64-bit little-endian ELF"):
        btf.read_module(ko, base)


@pytest.mark.skipif(not Path("/sys/kernel/btf/vmlinux").exists(), reason="this kernel exposes no BTF")
def test_running_kernel_btf():
    v = btf.read_sysfs("vmlinux")
    assert v.last_id > 10000
    f = v.function("vfs_read")
    assert [(p.name, p.type) for p in f.params] == [
        ("file", "struct file *"), ("buf", "char *"), ("count", "size_t"), ("pos", "loff_t *")]
    assert f.returns == "ssize_t"
    y = v.function("__cond_resched_rwlock_read")
    assert [(p.name, p.type, p.fetch_type) for p in y.params] == [("lock", "rwlock_t *", "x64")]


def test_one_name_with_two_prototypes_is_not_described():
    b = Builder()
    i = b.int_("int", 4, signed=True)
    b.func("helper", 0, [("a", i)])
    b.func("helper", 0, [("a", i), ("b", i)])
    b.func("same", 0, [("a", i)])
    b.func("same", 0, [("a", i)])  # identical copies (two CUs) are one description
    parsed = btf.parse(b.bytes(), source="t")
    assert parsed.function("helper") is None
    assert parsed.function("same").param_names == ("a",)
