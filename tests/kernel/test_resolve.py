"""Argument resolution: BTF first, the era table only without BTF, nothing from compiler copies; checked on
the running kernel's BTF and on stock Debian kvm.ko builds against what their code is known to take."""
from __future__ import annotations

from pathlib import Path

import pytest
from debian_kernels import kernel_files

from tdptrace.kernel import resolve as R
from tdptrace.kernel.functions import PREFERRED_SPAN_FUNCTIONS, YIELD_FUNCTIONS
from tdptrace.kernel.resolve import Source

NAMES = list(PREFERRED_SPAN_FUNCTIONS) + sorted(YIELD_FUNCTIONS) + ["__handle_changed_spte", "kvm_mmu_zap_all_fast"]


def test_without_btf_the_table_speaks_except_where_a_backport_makes_the_version_ambiguous():
    syms = {"kvm_tdp_mmu_zap_leafs", "tdp_mmu_zap_leafs.isra.0", "__tdp_mmu_zap_root",
            "kvm_tdp_mmu_zap_invalidated_roots"}
    r61 = R.resolve(NAMES, "6.1.0-56-amd64", syms, None)
    assert r61["kvm_tdp_mmu_zap_leafs"].source == Source.NONE
    assert "stable backport" in r61["kvm_tdp_mmu_zap_leafs"].reason
    copy = r61["tdp_mmu_zap_leafs"]
    assert (copy.symbol, copy.source, copy.params) == ("tdp_mmu_zap_leafs.isra.0", Source.NONE, None)
    assert "compiler copy" in copy.reason
    root = r61["__tdp_mmu_zap_root"]
    assert root.source == Source.TABLE and root.param_names == ("kvm", "root", "shared", "zap_level")
    assert (root.register("shared"), root.register("zap_level")) == ("dx", "cx")
    assert not r61["tdp_mmu_zap_root"].exists
    r65 = R.resolve(["kvm_tdp_mmu_zap_leafs"], "6.5.0-1-amd64", syms, None)["kvm_tdp_mmu_zap_leafs"]
    assert r65.param_names == ("kvm", "as_id", "start", "end", "can_yield", "flush")
    assert r65.register("flush") == "r9"
    # kvm_tdp_mmu_zap_invalidated_roots takes `shared` from 6.14 on, not 6.18.
    assert R.resolve(["kvm_tdp_mmu_zap_invalidated_roots"], "6.13.1", syms, None).functions[
        "kvm_tdp_mmu_zap_invalidated_roots"].param_names == ("kvm",)
    assert R.resolve(["kvm_tdp_mmu_zap_invalidated_roots"], "6.14.2", syms, None).functions[
        "kvm_tdp_mmu_zap_invalidated_roots"].param_names == ("kvm", "shared")


def test_seventh_argument_has_no_register():
    r = R.resolve(["zap_gfn_range"], "5.15.0-1", {"zap_gfn_range"}, None)["zap_gfn_range"]
    assert r.index("shared") == 6 and r.register("shared") is None and r.register("flush") == "r9"


def test_meta_names_source_per_function():
    meta = R.resolve(NAMES, "6.1.0-56-amd64", {"__tdp_mmu_zap_root", "tdp_mmu_zap_leafs.isra.0"}, None).to_meta()
    assert meta["btf"] is None
    assert {k: v["source"] for k, v in meta["functions"].items()} == {
        "__tdp_mmu_zap_root": "table", "tdp_mmu_zap_leafs": "none"}
    assert meta["functions"]["__tdp_mmu_zap_root"]["params"][3] == ["zap_level", "int"]


@pytest.mark.skipif(not Path("/sys/kernel/btf/vmlinux").exists(), reason="this kernel exposes no BTF")
def test_running_kernel_yield_points_from_btf():
    kb = R.running_btf()
    r = R.resolve(sorted(YIELD_FUNCTIONS), "running", None, kb)
    for name in ("__cond_resched_rwlock_read", "__cond_resched_rwlock_write"):
        assert r[name].source == Source.BTF and r[name].param_names == ("lock",)
        assert r[name].register("lock") == "di" and r[name].fentry_slot("lock") == 0


# What each stock build's code takes (disassembly and source of that release), checked against its own BTF.
DEBIAN = {
    "linux-image-6.1.0-56-amd64": {
        "kvm_tdp_mmu_zap_leafs": ("kvm", "start", "end", "flush"),  # after the 6.1.y stable backport
        "tdp_mmu_zap_leafs": ("kvm", "root", "start", "end", "can_yield", "flush"),
        "__tdp_mmu_zap_root": ("kvm", "root", "shared", "zap_level"),
        "tdp_mmu_zap_root": None,  # inlined on Debian's 6.1
        "kvm_tdp_mmu_zap_invalidated_roots": ("kvm",),
        "kvm_tdp_mmu_zap_sp": ("kvm", "sp"),
        "kvm_tdp_mmu_zap_possible_nx_huge_page": None,
        "__handle_changed_spte": ("kvm", "as_id", "gfn", "old_spte", "new_spte", "level", "shared"),
        "__cond_resched_rwlock_write": ("lock",),
    },
    "linux-image-6.12.117+deb12-amd64": {
        "kvm_tdp_mmu_zap_leafs": ("kvm", "start", "end", "flush"),
        "tdp_mmu_zap_leafs": ("kvm", "root", "start", "end", "can_yield", "flush"),
        "__tdp_mmu_zap_root": ("kvm", "root", "shared", "zap_level"),
        "tdp_mmu_zap_root": ("kvm", "root", "shared"),  # a real symbol on 6.12
        "kvm_tdp_mmu_zap_invalidated_roots": ("kvm",),
        "kvm_tdp_mmu_put_root": ("kvm", "root"),
        "__handle_changed_spte": None,  # handle_changed_spte by then
        "__cond_resched_rwlock_read": ("lock",),
    },
}


@pytest.mark.parametrize("package", sorted(DEBIAN))
def test_debian_kvm_ko_signatures_from_its_btf(package):
    vmlinuz, ko = kernel_files(package)
    kb = R.package_btf(vmlinuz, ko)
    res = R.resolve(NAMES, package.removeprefix("linux-image-"), None, kb)
    for name, params in DEBIAN[package].items():
        r = res[name]
        if params is None:
            assert not r.exists, name
            continue
        assert (r.source, r.param_names) == (Source.BTF, params), name
    root = res["__tdp_mmu_zap_root"]
    assert [root.register(p) for p in ("root", "shared", "zap_level")] == ["si", "dx", "cx"]
    assert [p.fetch_type for p in root.params] == ["x64", "x64", "u8", "s32"]
    leafs = res["tdp_mmu_zap_leafs"]
    assert [leafs.register(p) for p in ("start", "end", "can_yield", "flush")] == ["dx", "cx", "r8", "r9"]


def test_every_table_parameter_has_a_type():
    from tdptrace.kernel.signatures import PARAM_TYPES, SIGNATURES

    names = {p for sigs in SIGNATURES.values() for s in sigs for p in s.params}
    assert names <= set(PARAM_TYPES), names - set(PARAM_TYPES)


def test_lab_probes_take_arguments_from_the_guest_package_btf():
    from tdptrace.lab import probes

    vmlinuz, ko = kernel_files("linux-image-6.1.0-56-amd64")
    kb = R.package_btf(vmlinuz, ko)
    kallsyms = "".join(f"ffffffffc0000000 t {s}\t[kvm]\n" for s in sorted(kb.symbols))
    events = "kvm_tdp_mmu_spte_changed kvm_mmu_get_page kvm_mmu_prepare_zap_page kvm_mmu_zap_all_fast"
    res = probes.resolve("6.1.0-56-amd64", kallsyms, "", events, kb)
    assert "p:tdp/kvm_tdp_mmu_zap_leafs kvm_tdp_mmu_zap_leafs start=%si:x64 end=%dx:x64 flush=%cx:u8" in res.lines
    assert "p:tdp/__tdp_mmu_zap_root __tdp_mmu_zap_root root=%si:x64 shared=%dx:u8 zap_level=%cx:s32" in res.lines
    assert res.arguments["kvm_tdp_mmu_zap_leafs"]["source"] == "BTF"
    # Without BTF the 6.1 table cannot tell which kvm_tdp_mmu_zap_leafs this is: no arguments, said so.
    bare = probes.resolve("6.1.0-56-amd64", kallsyms, "", events, None)
    assert "p:tdp/kvm_tdp_mmu_zap_leafs kvm_tdp_mmu_zap_leafs" in bare.lines
    assert "stable backport" in bare.skipped["kvm_tdp_mmu_zap_leafs args"]
    assert bare.arguments["__tdp_mmu_zap_root"]["source"] == "table"


def _lab_kernel(name: str):
    """A matrix kernel from the lab's cache (downloaded on first use); skipped only when the archive is unreachable."""
    from tdptrace.errors import MissingCapability
    from tdptrace.lab import kernels

    try:
        return kernels.fetch(name)
    except MissingCapability as exc:
        pytest.skip(f"Debian archive unreachable for lab kernel {name}: {exc.line()}")


def test_510_kvm_ko_has_no_btf_so_the_table_speaks_with_its_flush_backport():
    k = _lab_kernel("5.10")
    kb = R.package_btf(k.vmlinuz, k.kvm_ko)
    assert kb.kvm is None and kb.vmlinux is not None  # module BTF came with 5.11
    res = R.resolve(NAMES + ["zap_gfn_range"], k.release, None, kb)
    z = res["zap_gfn_range"]
    assert z.source == Source.TABLE and [z.register(p) for p in ("root", "start", "end", "can_yield", "flush")] == [
        "si", "dx", "cx", "r8", "r9"]
    h = res["__handle_changed_spte"]
    assert h.source == Source.TABLE and h.param_names == ("kvm", "as_id", "gfn", "old_spte", "new_spte", "level")
    assert res["__cond_resched_lock"].source == Source.BTF  # the core kernel's yield point: vmlinux BTF
    assert not res["__cond_resched_rwlock_read"].exists


def test_617_and_73_signatures_from_their_btf():
    for name in ("6.17", "7.3"):
        k = _lab_kernel(name)
        res = R.resolve(NAMES, k.release, None, R.package_btf(k.vmlinuz, k.kvm_ko))
        inv = res["kvm_tdp_mmu_zap_invalidated_roots"]
        assert (inv.source, inv.param_names, inv.register("shared")) == (Source.BTF, ("kvm", "shared"), "si"), name
        root = res["__tdp_mmu_zap_root"]
        assert [root.register(p) for p in ("shared", "zap_level")] == ["dx", "cx"], name
        leafs = res["tdp_mmu_zap_leafs"]
        assert [leafs.register(p) for p in ("start", "end", "can_yield", "flush")] == ["dx", "cx", "r8", "r9"], name
        assert res["tdp_mmu_zap_root"].param_names == ("kvm", "root", "shared"), name
    assert res["kvm_tdp_mmu_zap_possible_nx_huge_page"].exists and not res["kvm_tdp_mmu_zap_sp"].exists
    # 7.3's __handle_changed_spte is another function: its second parameter is the page, not as_id.
    h = res["__handle_changed_spte"]
    assert h.param_names == ("kvm", "sp", "gfn", "old_spte", "new_spte", "level", "shared")
