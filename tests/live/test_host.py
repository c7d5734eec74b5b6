"""tdptrace.live.host: each missing capability gives its own row, fix and exit status (fake host trees), and the
live checks agree with the running host."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from hostfake import HDR, KALLSYMS_510, RELEASE, env, fake_bcc, link, make_host, remove, write

from tdptrace.live import host
from tdptrace.live.host import INFO, MISSING, OK, WARN, HostEnv, check_host


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    return make_host(tmp_path / "host")


def test_good_host_gives_all_three_figures(fake: Path) -> None:
    r = check_host(env(fake))
    bad = [(c.name, c.status, c.detail) for c in r.checks if not c.ok]
    assert bad == []
    assert r.figures_available == {"zap_levels": True, "yields": True, "retained": True}
    assert r.exit_code == 0 and r.can_record and r.missing_figures == []
    assert r.kernel_release == RELEASE and r.tracefs == "/sys/kernel/tracing"
    assert r.symbols["__tdp_mmu_zap_root"] == ["__tdp_mmu_zap_root.isra.0"]
    assert r.check("vendor module").detail == "kvm_intel, ept=Y"
    assert "all three figures" in r.verdict()
    assert r.check("fentry").status == OK and "support_kfunc()=True" in r.check("fentry").detail


def test_not_root_cannot_record(fake: Path) -> None:
    r = check_host(env(fake, euid=1000))
    row = r.check("root")
    assert row.status == MISSING and "uid 1000" in row.detail and row.fix.startswith("run as root: sudo")
    assert r.exit_code == 2 and not r.can_record
    assert r.figure_notes == {"zap_levels": "not root", "yields": "not root", "retained": "not root"}
    assert r.verdict().startswith("record cannot record here")


def test_bcc_missing_names_the_distribution_package(fake: Path) -> None:
    r = check_host(env(fake, bcc=None))
    row = r.check("bcc")
    assert row.status == MISSING and "not importable" in row.detail
    assert "apt install python3-bpfcc" in row.fix and "never `pip install bcc`" in row.fix
    # tracefs (ftrace backend) and kprobes still give everything.
    assert r.methods["bcc_tracepoints"] is False and r.methods["fentry"] is False
    assert r.exit_code == 0


def test_pypi_bcc_is_recognised(fake: Path) -> None:
    r = check_host(env(fake, bcc=object()))
    row = r.check("bcc")
    assert row.status == MISSING and "not BCC" in row.detail and row.fix.startswith("pip uninstall bcc;")


def test_no_kernel_headers_explains_bcc_message(fake: Path) -> None:
    remove(fake / "lib/modules")
    row = check_host(env(fake)).check("kernel headers")
    assert row.status == MISSING
    assert '"Unable to find kernel headers"' in row.detail
    assert f"no include/linux/kconfig.h under /lib/modules/{RELEASE}/build" in row.detail
    assert row.fix.startswith(f"apt install linux-headers-{RELEASE};") and "BCC_KERNEL_SOURCE" in row.fix
    assert "link /lib/modules/$(uname -r)/build" in row.fix


def test_source_link_to_the_arch_half_of_a_debian_tree(fake: Path) -> None:
    link(fake, f"lib/modules/{RELEASE}/source", f"{HDR}-amd64")
    r = check_host(env(fake))
    row = r.check("kernel headers")
    assert row.status == MISSING
    assert f"-> /{HDR}-amd64 has no include/linux/kconfig.h" in row.detail
    assert row.fix == f"ln -sfn /{HDR}-common /lib/modules/{RELEASE}/source"
    assert r.methods["bcc_tracepoints"] is False and r.exit_code == 0  # ftrace + kprobes remain


def test_bcc_kernel_source_is_where_bcc_looks(fake: Path) -> None:
    # It overrides /lib/modules even when those headers are fine.
    r = check_host(env(fake, environ={"BCC_KERNEL_SOURCE": "/opt/nowhere"}))
    row = r.check("kernel headers")
    assert row.status == MISSING and "no include/linux/kconfig.h under /opt/nowhere" in row.detail
    write(fake / "opt/tree/include/linux/kconfig.h")
    row = check_host(env(fake, environ={"BCC_KERNEL_SOURCE": "/opt/tree"})).check("kernel headers")
    assert row.status == OK and row.detail == "/opt/tree (BCC_KERNEL_SOURCE)"


def test_headers_for_another_kernel_are_noted(fake: Path) -> None:
    (fake / "proc/sys/kernel/osrelease").write_text("6.18.44-fc\n")
    link(fake, "lib/modules/6.18.44-fc/build", f"{HDR}-amd64")
    link(fake, "lib/modules/6.18.44-fc/source", f"{HDR}-common")
    row = check_host(env(fake)).check("kernel headers")
    assert row.status == OK and "6.1.0-56-common headers for a 6.18.44-fc kernel" in row.detail


def test_no_btf_means_no_fentry_but_kprobes_suffice(fake: Path) -> None:
    remove(fake / "sys/kernel/btf")
    r = check_host(env(fake))
    assert r.check("BTF").status == MISSING and "CONFIG_DEBUG_INFO_BTF=y" in r.check("BTF").fix
    assert r.check("fentry").status == MISSING and r.check("fentry").detail == "no BTF"
    assert r.exit_code == 0


def test_tracefs_not_mounted(fake: Path) -> None:
    remove(fake / "sys/kernel/tracing")
    r = check_host(env(fake))
    row = r.check("tracefs")
    assert row.status == MISSING and row.fix == "mount -t tracefs nodev /sys/kernel/tracing"
    assert r.check("kvmmmu tracepoints").status == MISSING
    # fentry (BCC, BTF) still gives spans and yields; the tracepoint figures are gone.
    assert r.figures_available == {"zap_levels": False, "yields": True, "retained": False}
    assert r.exit_code == 1 and r.figure_notes["zap_levels"] == "tracefs not mounted"


def test_tracefs_not_mounted_and_no_fentry_cannot_record(fake: Path) -> None:
    remove(fake / "sys/kernel/tracing")
    remove(fake / "sys/kernel/btf")
    assert check_host(env(fake)).exit_code == 2


def test_tracefs_under_debugfs_is_found(fake: Path) -> None:
    (fake / "sys/kernel/tracing").rename(fake / "sys/kernel/tracing.old")
    (fake / "sys/kernel/debug").mkdir(parents=True)
    (fake / "sys/kernel/tracing.old").rename(fake / "sys/kernel/debug/tracing")
    r = check_host(env(fake))
    assert r.tracefs == "/sys/kernel/debug/tracing" and r.exit_code == 0


def test_no_kprobes_and_no_fentry_is_this_kind_of_host(tmp_path: Path) -> None:
    fake = make_host(tmp_path / "h", kprobes=False)
    remove(fake / "sys/kernel/btf")
    r = check_host(env(fake))
    row = r.check("kprobes")
    assert row.status == MISSING and "CONFIG_KPROBES=n" in row.detail and "CONFIG_KPROBES=y" in row.fix
    assert r.figures_available == {"zap_levels": True, "yields": False, "retained": True}
    assert r.exit_code == 1
    assert r.verdict() == ("record can give only SPTE zaps per level, retained page tables; missing: zap spans, "
                           "yields and lock-hold gaps (no kprobes and no fentry)")


def test_no_kprobes_but_fentry(tmp_path: Path) -> None:
    r = check_host(env(make_host(tmp_path / "h", kprobes=False)))
    assert r.methods["kprobes"] is False and r.methods["fentry"] is True and r.exit_code == 0


def test_no_kprobe_events_without_config(fake: Path) -> None:
    remove(fake / "proc/config.gz")
    remove(fake / "sys/kernel/tracing/kprobe_events")
    row = check_host(env(fake)).check("kprobes")
    assert row.status == MISSING and row.detail == "no kprobe_events in tracefs"


def test_no_trampolines_no_fentry(fake: Path) -> None:
    ks = fake / "proc/kallsyms"
    ks.write_text(ks.read_text().replace("bpf_trampoline_link_prog", "bpf_something_else"))
    row = check_host(env(fake)).check("fentry")
    assert row.status == MISSING and "no bpf_trampoline_link_prog" in row.detail


def test_kvm_not_loaded_cannot_record(fake: Path) -> None:
    remove(fake / "sys/module/kvm")
    remove(fake / "sys/module/kvm_intel")
    remove(fake / "sys/kernel/tracing/events/kvmmmu")
    (fake / "proc/kallsyms").write_text("ffffffff81001100 T __cond_resched_rwlock_write\n")
    r = check_host(env(fake))
    assert r.check("kvm").status == MISSING and "modprobe kvm_intel" in r.check("kvm").fix
    assert r.check("kvmmmu tracepoints").status == MISSING
    assert r.check("zap functions").status == MISSING
    assert r.exit_code == 2
    assert r.figure_notes["yields"] == "no zap functions in kallsyms"


def test_vendor_module_missing(fake: Path) -> None:
    remove(fake / "sys/module/kvm_intel")
    row = check_host(env(fake)).check("vendor module")
    assert row.status == MISSING and "modprobe kvm_amd" in row.fix


def test_tdp_mmu_off_is_a_warning_with_the_reload(fake: Path) -> None:
    (fake / "sys/module/kvm/parameters/tdp_mmu").write_text("N\n")
    write(fake / "sys/module/kvm_pvm/parameters/pvm_debug", "N\n")
    r = check_host(env(fake))
    row = r.check("tdp_mmu")
    assert row.status == WARN and "shadow MMU" in row.detail and "kvm_pvm has no EPT/NPT" in row.detail
    assert "modprobe kvm tdp_mmu=Y" in row.fix
    assert r.check("vendor module").detail.startswith("kvm_intel, kvm_pvm")
    assert r.exit_code == 0  # the recorder can attach; the row says there will be nothing to see


def test_510_host_uses_kprobe_fallback_for_zaps(tmp_path: Path) -> None:
    fake = make_host(tmp_path / "h", release="5.10.0-32-amd64", kallsyms=KALLSYMS_510)
    remove(fake / "sys/kernel/tracing/events/kvmmmu/kvm_tdp_mmu_spte_changed")
    r = check_host(env(fake))
    assert r.check("kvmmmu tracepoints").status == WARN
    assert "__handle_changed_spte" in r.check("kvmmmu tracepoints").detail
    assert r.symbols["zap_gfn_range"] == ["zap_gfn_range.constprop.0"]
    assert r.exit_code == 0
    remove(fake / "sys/kernel/tracing/kprobe_events")
    (fake / "proc/config.gz").unlink()
    remove(fake / "sys/kernel/btf")
    r = check_host(env(fake))
    assert r.exit_code == 2  # no spte tracepoint, no kprobes, no fentry
    assert "no kvm_tdp_mmu_spte_changed" in r.figure_notes["zap_levels"]


def test_ring_buffer_needs_58(tmp_path: Path) -> None:
    fake = make_host(tmp_path / "h", release="5.4.0-1-amd64")
    assert check_host(env(fake)).check("ring buffer").status == WARN
    fake2 = make_host(tmp_path / "h2")
    r = check_host(env(fake2, bcc=fake_bcc(ringbuf=False)))
    assert r.check("ring buffer").status == WARN and "no RingBuf" in r.check("ring buffer").detail


def test_filter_functions_unreadable_or_incomplete(fake: Path) -> None:
    affs = fake / "sys/kernel/tracing/available_filter_functions"
    affs.write_text("tdp_mmu_zap_leafs [kvm]\n__cond_resched_rwlock_write\n")
    row = check_host(env(fake)).check("filter functions")
    assert row.status == WARN and row.detail.startswith("2/")
    absent = row.detail.split("not traceable: ")[1].split(", ")
    assert "kvm_tdp_mmu_zap_leafs" in absent and "__cond_resched_rwlock_read" in absent
    assert "tdp_mmu_zap_leafs" not in absent and "__cond_resched_rwlock_write" not in absent
    affs.unlink()
    affs.mkdir()  # reading fails, as EPERM does on locked-down kernels
    row = check_host(env(fake)).check("filter functions")
    assert row.status == WARN and "unreadable" in row.detail


def test_report_json_shape(fake: Path) -> None:
    d = check_host(env(fake, euid=1000)).to_dict()
    assert d["exit_code"] == 2 and d["can_record"] is False
    root = next(c for c in d["checks"] if c["name"] == "root")
    assert root["ok"] is False and root["status"] == MISSING and root["fix"]


# ---- live: the real host ------------------------------------------------------------------------------

@pytest.mark.live
def test_live_checks_agree_with_the_host() -> None:
    r = check_host()
    assert r.check("root").ok == (os.geteuid() == 0)
    assert r.kernel_release == os.uname().release
    assert r.check("kvm").ok == Path("/sys/module/kvm").is_dir()
    assert r.check("BTF").ok == Path("/sys/kernel/btf/vmlinux").exists()
    mounts = Path("/proc/mounts").read_text()
    assert r.check("tracefs").ok == bool(re.search(r" /sys/kernel(/debug)?/tracing tracefs ", mounts))
    if os.geteuid() != 0:
        pytest.skip("the symbol and fentry comparisons need root (kallsyms, bpf)")
    tdp = Path("/sys/module/kvm/parameters/tdp_mmu")
    if tdp.exists():
        assert (r.check("tdp_mmu").status == OK) == (tdp.read_text().strip() == "Y")
    # Zap functions: compare with grep over the same file.
    out = subprocess.run(["grep", "-E", r" [tT] (kvm_tdp_mmu_zap_leafs|tdp_mmu_zap_leafs)(\.|$|\s)",
                          "/proc/kallsyms"], capture_output=True, text=True).stdout
    grep_found = sorted({ln.split()[2] for ln in out.splitlines()})
    mine = sorted(r.symbols.get("kvm_tdp_mmu_zap_leafs", []) + r.symbols.get("tdp_mmu_zap_leafs", []))
    assert mine == grep_found
    if r.check("bcc").ok:
        assert re.match(r"bcc \d+\.\d+", r.check("bcc").detail)
    if Path("/sys/module/kvm_pvm").exists() and not Path("/sys/kernel/tracing/kprobe_events").exists():
        # The development machines: tracepoints only, no kprobes, fentry refused (docs/lab.md).
        assert r.check("kprobes").status == MISSING
        assert r.check("fentry").status == MISSING and "refuses fentry" in r.check("fentry").detail
        assert r.figures_available == {"zap_levels": True, "yields": False, "retained": True}
        assert r.exit_code == 1


@pytest.mark.live
def test_live_fentry_probe_matches_a_bcc_attach() -> None:
    """The raw load-and-attach probe agrees with what BCC itself manages (the ground truth for record)."""
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    r = check_host()
    if not (r.check("bcc").status == OK and r.check("kernel headers").ok and r.check("BTF").ok):
        pytest.skip("BCC cannot compile here (bcc, headers or BTF missing): no ground truth to compare with")
    bcc = pytest.importorskip("bcc")
    target = "__cond_resched_rwlock_write"
    ok, _ = host.probe_fentry((target,))
    try:
        b = bcc.BPF(text=f"KFUNC_PROBE({target}) {{ return 0; }}")
        b.cleanup()
        bcc_ok = True
    except Exception:
        bcc_ok = False
    assert ok == bcc_ok


def test_hostenv_defaults() -> None:
    e = HostEnv()
    assert e.live is True and e.euid == os.geteuid() and e.path("/proc/kallsyms") == Path("/proc/kallsyms")
    assert HostEnv(root=Path("/tmp")).live is False


def test_tracefs_mounted_but_unreadable_says_so(fake: Path) -> None:
    remove(fake / "sys/kernel/tracing")
    write(fake / "proc/mounts", "proc /proc proc rw 0 0\nnodev /sys/kernel/tracing tracefs rw,relatime 0 0\n")
    r = check_host(env(fake, euid=1000))
    row = r.check("tracefs")
    assert row.status == MISSING and row.detail == "mounted at /sys/kernel/tracing but not readable by uid 1000"
    assert row.fix.startswith("run as root")
    assert r.check("kvmmmu tracepoints").fix == row.fix  # dependent rows point at the same fix
    assert r.verdict() == "record cannot record here: not root"


def test_arguments_row_says_per_function_where_arguments_come_from(fake: Path) -> None:
    from tdptrace.kernel.resolve import Source

    r = check_host(env(fake))
    args = r.arguments
    assert args["tdp_mmu_zap_leafs"].source == Source.BTF
    assert args["kvm_tdp_mmu_zap_leafs"].param_names == ("kvm", "start", "end", "flush")
    assert args["__cond_resched_rwlock_read"].source == Source.BTF
    assert args["__cond_resched_rwlock_read"].btf_object == "vmlinux"
    copy = args["__tdp_mmu_zap_root"]
    assert copy.symbol == "__tdp_mmu_zap_root.isra.0" and copy.source == Source.NONE and copy.params is None
    row = r.check("arguments")
    assert row.status == INFO and "from BTF" in row.detail
    assert "__tdp_mmu_zap_root.isra.0: only the compiler copy" in row.detail
    d = r.to_dict()["arguments"]["functions"]
    assert d["tdp_mmu_zap_leafs"]["source"] == "BTF" and d["__tdp_mmu_zap_root"]["source"] == "none"


def test_without_btf_the_era_table_is_used_and_said(fake: Path) -> None:
    from tdptrace.kernel.resolve import Source

    (fake / "sys/kernel/btf/kvm").unlink()
    (fake / "sys/kernel/btf/vmlinux").unlink()
    r = check_host(env(fake))
    assert r.arguments["tdp_mmu_zap_leafs"].source == Source.TABLE
    # 6.1 is ambiguous for kvm_tdp_mmu_zap_leafs without BTF (a stable backport changed it): none.
    assert r.arguments["kvm_tdp_mmu_zap_leafs"].source == Source.NONE
    assert "era table for 6.1.0-56-amd64" in r.check("arguments").detail


def test_unreadable_btf_is_a_warning_not_a_crash(fake: Path) -> None:
    (fake / "sys/kernel/btf/kvm").write_bytes(b"garbage bytes that are not BTF at all")
    r = check_host(env(fake))
    row = r.check("arguments")
    assert row.status == WARN and "BTF unreadable" in row.detail and "is not BTF" in row.detail


def test_contention_row_reads_the_preemption_build(fake: Path) -> None:
    import gzip as gz

    (fake / "proc/config.gz").write_bytes(gz.compress(b"CONFIG_KPROBES=y\nCONFIG_PREEMPT_VOLUNTARY=y\n"
                                                     b"CONFIG_PREEMPT_DYNAMIC=y\nCONFIG_PREEMPTION=y\n"))
    row = check_host(env(fake)).check("contention yields")  # the fake host is 6.1
    assert row.status == INFO and row.detail.startswith("yes: before 6.11") and "PREEMPT_DYNAMIC" in row.detail
