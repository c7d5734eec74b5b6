"""The lab's failure paths name what is missing: unknown kernels, symbols, lost events, a guest that fails."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tdptrace.errors import MissingCapability, TdpError
from tdptrace.lab import kernels, probes, run
from tdptrace.lab.scenario import Scenario

pytestmark = pytest.mark.lab

KALLSYMS_61 = """\
ffffffffc0a00000 t tdp_mmu_zap_leafs\t[kvm]
ffffffffc0a01000 t __tdp_mmu_zap_root\t[kvm]
ffffffffc0a02000 T kvm_tdp_mmu_zap_leafs\t[kvm]
ffffffffc0a03000 T kvm_tdp_mmu_zap_invalidated_roots\t[kvm]
ffffffffc0a04000 T kvm_tdp_mmu_zap_all\t[kvm]
ffffffffc0a05000 T kvm_tdp_mmu_put_root\t[kvm]
ffffffff81000000 T __cond_resched_rwlock_read
ffffffff81000100 T __cond_resched_rwlock_write
"""
EVENTS_61 = "kvm_tdp_mmu_spte_changed kvm_mmu_get_page kvm_mmu_prepare_zap_page kvm_mmu_zap_all_fast enable filter"


def test_resolves_probes_from_kallsyms() -> None:
    res = probes.resolve("6.1.0-56-amd64", KALLSYMS_61, "", EVENTS_61)
    assert "p:tdp/__tdp_mmu_zap_root __tdp_mmu_zap_root root=%si:x64 shared=%dx:u8 zap_level=%cx:s32" in res.lines
    assert "r16:tdp/__tdp_mmu_zap_root_ret __tdp_mmu_zap_root" in res.lines  # void: no $retval
    assert "tdp_mmu_zap_root" in res.skipped  # inlined on 6.1: optional


def test_compiler_copy_is_probed_without_arguments() -> None:
    text = KALLSYMS_61.replace("t tdp_mmu_zap_leafs", "t tdp_mmu_zap_leafs.isra.0")
    res = probes.resolve("6.1.0-56-amd64", text, "", EVENTS_61)
    assert "p:tdp/tdp_mmu_zap_leafs tdp_mmu_zap_leafs.isra.0" in res.lines


def test_missing_symbols_are_named() -> None:
    text = KALLSYMS_61.replace("__tdp_mmu_zap_root", "something_else")
    with pytest.raises(MissingCapability, match="__tdp_mmu_zap_root"):
        probes.resolve("6.1.0-56-amd64", text, "", EVENTS_61)
    with pytest.raises(MissingCapability, match="kvmmmu/kvm_tdp_mmu_spte_changed"):
        probes.resolve("6.1.0-56-amd64", KALLSYMS_61, "", "kvm_mmu_get_page")


def test_unknown_kernel_and_era() -> None:
    with pytest.raises(TdpError) as exc:
        kernels.kernel_source("4.19")
    assert "5.10, 6.1, 6.12" in exc.value.line()
    with pytest.raises(MissingCapability, match="no probe table"):
        probes.era_for("5.15.0-100-generic")


def _stats(overrun: int = 0) -> str:
    return "".join(f"== cpu{c}\nentries: 2\noverrun: {overrun if c else 0}\ncommit overrun: 0\n"
                   f"dropped events: 0\n" for c in (0, 1))


def _trace(in_buf: int, written: int, lines: int) -> str:
    head = f"# tracer: nop\n#\n# entries-in-buffer/entries-written: {in_buf}/{written}   #P:2\n#\n"
    return head + "".join(f"  kvmtouch-1 [000] ....  1.{i:06d}: kvm_mmu_get_page: x\n" for i in range(lines))


def test_lost_events_fail_loudly(tmp_path: Path) -> None:
    (tmp_path / "stats_before.txt").write_text(_stats())
    (tmp_path / "stats_after.txt").write_text(_stats())
    trace = tmp_path / "trace.txt"
    trace.write_text(_trace(2, 2, 2))
    assert run.check_lost(tmp_path, trace) == 2
    trace.write_text(_trace(2, 5, 2))
    with pytest.raises(TdpError, match="entries-written 5"):
        run.check_lost(tmp_path, trace)
    trace.write_text(_trace(3, 3, 2))
    with pytest.raises(TdpError, match="2 event lines in the dump, 3 in the buffer"):
        run.check_lost(tmp_path, trace)
    trace.write_text(_trace(2, 2, 2))
    (tmp_path / "stats_after.txt").write_text(_stats(overrun=7))
    with pytest.raises(TdpError, match="cpu1 overrun=7"):
        run.check_lost(tmp_path, trace)


def test_bad_scenario() -> None:
    with pytest.raises(TdpError, match="multiple of 4"):
        Scenario(mib=6)


@pytest.mark.skipif(os.geteuid() != 0, reason="installs the lab's host packages (root)")
def test_failed_boot_keeps_the_console(tmp_path: Path) -> None:
    """A kernel that does not boot ends with a message naming the console log, which is kept."""
    from tdptrace.lab.host import ensure_host_packages

    ensure_host_packages()
    k = kernels.Kernel(name="broken", release="6.1.0-0-amd64", package="none", version="0", dir=str(tmp_path / "k"))
    k.module_dir.mkdir(parents=True)
    k.vmlinuz.write_bytes(b"not a kernel")
    with pytest.raises(TdpError, match="console log: .*console.log") as exc:
        run._boot(k, tmp_path / "out", {"MODE": "discover"}, mem_mib=256, timeout_s=60)
    assert "no status" in str(exc.value)
    assert (tmp_path / "out" / "console.log").exists()


def test_chroot_command_runs_beside_the_workload(tmp_path: Path) -> None:
    """--chroot-cmd: BCC and tdptrace import inside the guest, with the guest kernel's headers in place."""
    r = run.run(Scenario(kernel="6.1", mib=16, chroot_cmd="python3 -c 'import bcc'; tdptrace --version; "
                         "test -e /lib/modules/$(uname -r)/build/include && echo headers-ok",
                         hook_settle_s=5), tmp_path)
    log = (Path(r.out) / "share" / "out" / "hook.log").read_text()
    assert "tdptrace 0.1" in log and "headers-ok" in log and "chroot command exit 0" in log


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from tdptrace.cli import main

    assert main(["lab", "run", "--kernel", "4.19", "--mib", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tdptrace: error: unknown lab kernel '4.19'") and "\n" not in err
    assert main(["lab", "run", "--mib", "6"]) == 2
    assert "multiple of 4" in capsys.readouterr().err
