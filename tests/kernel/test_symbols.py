"""kernel.symbols: compiler copies, kallsyms and available_filter_functions lookups."""
from __future__ import annotations

from tdptrace.kernel.symbols import base_symbol, copies_of, is_compiler_copy, listed_functions, text_symbols

KALLSYMS = ("ffff t __pfx_tdp_mmu_zap_leafs\t[kvm]\n"
            "ffff t tdp_mmu_zap_leafs.isra.0\t[kvm]\n"
            "ffff t tdp_mmu_zap_leafs.cold\t[kvm]\n"
            "ffff t zap_gfn_range.constprop.0.isra.0\n"
            "ffff t zap_gfn_range_hva_wrapper\n"
            "ffff T __cond_resched_lock\n"
            "ffff d __cond_resched_rwlock_read\n")


def test_copies_skip_prefixes_cold_parts_data_and_longer_names() -> None:
    found = copies_of(("tdp_mmu_zap_leafs", "zap_gfn_range", "__cond_resched_lock", "__cond_resched_rwlock_read"),
                      text_symbols(KALLSYMS))
    assert found == {"tdp_mmu_zap_leafs": ["tdp_mmu_zap_leafs.isra.0"],
                     "zap_gfn_range": ["zap_gfn_range.constprop.0.isra.0"],
                     "__cond_resched_lock": ["__cond_resched_lock"],
                     "__cond_resched_rwlock_read": []}


def test_plain_name_comes_before_its_copies() -> None:
    found = copies_of(["f"], {"f.isra.0", "f", "f.part.1"})
    assert found == {"f": ["f", "f.isra.0", "f.part.1"]}


def test_base_symbol_strips_every_suffix_kind() -> None:
    assert base_symbol("zap_gfn_range.isra.0") == "zap_gfn_range"
    assert base_symbol("zap_gfn_range.constprop.0.isra.0") == "zap_gfn_range"
    assert base_symbol("kvm_tdp_mmu_zap_leafs.llvm.1234567") == "kvm_tdp_mmu_zap_leafs"
    assert base_symbol("tdp_mmu_zap_leafs.cold") == "tdp_mmu_zap_leafs"
    assert base_symbol("__tdp_mmu_zap_root") == "__tdp_mmu_zap_root"
    assert is_compiler_copy("f.part.0") and not is_compiler_copy("f")


def test_listed_functions_reads_module_tags() -> None:
    assert listed_functions("tdp_mmu_zap_leafs [kvm]\n__cond_resched_rwlock_read\n\n") == {
        "tdp_mmu_zap_leafs", "__cond_resched_rwlock_read"}
