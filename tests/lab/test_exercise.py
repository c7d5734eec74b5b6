"""tdptrace.lab.exercise: the KVM ABI it declares, the guest it builds, its errors, and (live) the kvmmmu
tracepoint counts it causes on the running kernel."""
from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tdptrace.errors import MissingCapability, TdpError
from tdptrace.lab import exercise as ex
from tdptrace.lab import guest, kvm_uapi

KVM_H = Path("/usr/include/linux/kvm.h")
TRACEFS = Path("/sys/kernel/tracing")
COUNTED = ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page", "kvm_mmu_zap_all_fast",
           "kvm_tdp_mmu_spte_changed")


# ---- ABI ------------------------------------------------------------------------------------------------

def test_struct_sizes_and_offsets_match_linux_kvm_h() -> None:
    # Sizes from <linux/kvm.h> / <asm/kvm.h> on x86-64 (KVM_API_VERSION 12).
    assert ctypes.sizeof(kvm_uapi.kvm_userspace_memory_region) == 32
    assert ctypes.sizeof(kvm_uapi.kvm_regs) == 144
    assert ctypes.sizeof(kvm_uapi.kvm_segment) == 24
    assert ctypes.sizeof(kvm_uapi.kvm_dtable) == 16
    assert ctypes.sizeof(kvm_uapi.kvm_sregs) == 312
    assert ctypes.sizeof(kvm_uapi.kvm_cpuid_entry2) == 40
    assert ctypes.sizeof(kvm_uapi.kvm_cpuid2) == 8
    assert kvm_uapi.kvm_run.exit_reason.offset == 8
    assert kvm_uapi.kvm_run.io.offset == 32
    assert kvm_uapi.kvm_run_io.port.offset == 2 and kvm_uapi.kvm_run_io.data_offset.offset == 8
    assert kvm_uapi.kvm_sregs.cr0.offset == 8 * 24 + 2 * 16
    assert kvm_uapi.kvm_regs.rip.offset == 16 * 8


def test_ioctl_numbers() -> None:
    # Values of the macros as the kernel headers expand them.
    assert kvm_uapi.KVM_GET_API_VERSION == 0xAE00
    assert kvm_uapi.KVM_CREATE_VM == 0xAE01
    assert kvm_uapi.KVM_CHECK_EXTENSION == 0xAE03
    assert kvm_uapi.KVM_GET_VCPU_MMAP_SIZE == 0xAE04
    assert kvm_uapi.KVM_GET_SUPPORTED_CPUID == 0xC008AE05
    assert kvm_uapi.KVM_CREATE_VCPU == 0xAE41
    assert kvm_uapi.KVM_SET_USER_MEMORY_REGION == 0x4020AE46
    assert kvm_uapi.KVM_RUN == 0xAE80
    assert kvm_uapi.KVM_GET_REGS == 0x8090AE81
    assert kvm_uapi.KVM_SET_REGS == 0x4090AE82
    assert kvm_uapi.KVM_GET_SREGS == 0x8138AE83
    assert kvm_uapi.KVM_SET_SREGS == 0x4138AE84
    assert kvm_uapi.KVM_SET_CPUID2 == 0x4008AE90


@pytest.mark.skipif(not KVM_H.exists(), reason=f"{KVM_H} not installed (linux-libc-dev)")
def test_ioctls_agree_with_installed_header() -> None:
    text = re.sub(r"\\\n\s*", " ", KVM_H.read_text())
    defs = {m[1]: (m[2], int(m[3], 16), (m[4] or "").strip())
            for m in re.finditer(r"#define\s+(KVM_\w+)\s+_IO(WR|W|R)?\s*\(\s*KVMIO\s*,\s*(0x[0-9a-fA-F]+)"
                                 r"\s*(?:,\s*([^)]+))?\)", text)}
    u = kvm_uapi
    dirs = {"": u._IOC_NONE, "W": u._IOC_WRITE, "R": u._IOC_READ, "WR": u._IOC_READ | u._IOC_WRITE}
    sizes = {"": 0, "struct kvm_userspace_memory_region": 32, "struct kvm_regs": 144, "struct kvm_sregs": 312,
             "struct kvm_cpuid2": 8}
    names = ("KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE",
             "KVM_GET_SUPPORTED_CPUID", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION", "KVM_RUN",
             "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_SET_CPUID2")
    for name in names:
        d, nr, arg = defs[name]
        assert getattr(kvm_uapi, name) == kvm_uapi._ioc(dirs[d or ""], nr, sizes[arg]), name
    assert f"#define KVM_API_VERSION {kvm_uapi.KVM_API_VERSION}" in text
    assert f"#define KVM_EXIT_IO               {kvm_uapi.KVM_EXIT_IO}" in text


# ---- guest image ----------------------------------------------------------------------------------------

def test_guest_code_loops_back_to_start_and_exits_on_port() -> None:
    code = guest.GUEST_CODE
    jb = code.index(b"\x72")
    disp = code[jb + 1] - 256 if code[jb + 1] > 127 else code[jb + 1]
    assert jb + 2 + disp == 0
    assert code[jb + 2:jb + 4] == bytes([0xE6, guest.EXIT_PORT])
    assert code[jb + 4] == 0xF4


def test_page_tables_identity_map_every_2mib_page() -> None:
    size = 2048 * guest.MIB  # two page directories
    area = (ctypes.c_uint8 * guest.HUGE)()
    base = ctypes.addressof(area)
    # The system area builder writes only below the first 2 MiB; give it 2 MiB of scratch.
    guest._build_system_area(base, size)

    def q(gpa: int) -> int:
        return ctypes.c_uint64.from_address(base + gpa).value

    def walk(va: int) -> int:
        pml4e = q(guest.PML4_GPA + ((va >> 39) & 511) * 8)
        pdpte = q((pml4e & ~0xFFF) + ((va >> 30) & 511) * 8)
        pde = q((pdpte & ~0xFFF) + ((va >> 21) & 511) * 8)
        assert pde & 0x83 == 0x83  # present, writable, 2 MiB page
        return (pde & ~0x1FFFFF & ((1 << 52) - 1)) | (va & 0x1FFFFF)

    for va in (0, guest.CODE_GPA, guest.DATA_GPA + 0x1234, 1 << 30, size - 8):
        assert walk(va) == va
    assert q(guest.PD_GPA + (size // guest.HUGE) * 8) == 0  # nothing mapped past the memory
    assert bytes(area[guest.CODE_GPA:guest.CODE_GPA + len(guest.GUEST_CODE)]) == guest.GUEST_CODE


@pytest.mark.parametrize("mib", [0, 2, 6, 10, guest.MAX_MIB + 4])
def test_config_rejects_unusable_sizes(mib: int) -> None:
    with pytest.raises(TdpError, match=f"--mib {mib} is not usable") as ei:
        ex.ExerciseConfig(mib=mib).validate()
    assert "multiple of 4" in ei.value.hint


def test_config_rejects_unknown_phase() -> None:
    with pytest.raises(TdpError, match="unknown phase zap"):
        ex.ExerciseConfig(phases=("populate", "zap")).validate()


# ---- errors ---------------------------------------------------------------------------------------------

def test_missing_dev_kvm_is_a_missing_capability(tmp_path: Path) -> None:
    with pytest.raises(MissingCapability) as ei:
        ex.run_exercise(ex.ExerciseConfig(mib=4, kvm_path=str(tmp_path / "kvm")))
    assert "does not exist" in ei.value.message and "modprobe kvm_intel" in ei.value.hint


def test_not_a_kvm_device_is_an_api_mismatch() -> None:
    with pytest.raises(kvm_uapi.KvmApiMismatch, match="KVM_GET_API_VERSION refused"):
        ex.run_exercise(ex.ExerciseConfig(mib=4, kvm_path="/dev/null"))


def test_permission_denied_is_one_line_on_stderr() -> None:
    """An unprivileged user gets the group hint, nothing on stdout and no traceback."""
    if not Path("/dev/kvm").exists():
        pytest.skip("no /dev/kvm on this host")
    if os.stat("/dev/kvm").st_mode & 0o006:
        pytest.skip("/dev/kvm is accessible to every user here")
    kw: dict = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
    if not kw and os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("this user may open /dev/kvm and cannot drop privileges (not root)")
    res = subprocess.run([sys.executable, "-m", "tdptrace.cli", "exercise", "--mib", "8"], cwd="/",
                         capture_output=True, text=True, timeout=60, **kw)
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr == ("tdptrace: error: no permission to open /dev/kvm; run as root or join the group "
                          "that owns it (usually kvm)\n")


def test_cli_error_is_one_line_and_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    from tdptrace.cli import main

    assert main(["exercise", "--mib", "6"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tdptrace: error: --mib 6") and "Traceback" not in err
    assert main(["exercise", "--phases", "populate,zap"]) == 2
    assert "unknown phase zap" in capsys.readouterr().err


def test_not_enough_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest, "_mem_available", lambda: 100 * guest.MIB)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm not usable here: the size check runs after opening it")
    with pytest.raises(kvm_uapi.NotEnoughMemory, match="only 100 MiB are available"):
        ex.run_exercise(ex.ExerciseConfig(mib=64))


# ---- live -----------------------------------------------------------------------------------------------

def _kvm_skip_reason() -> str | None:
    if not Path("/dev/kvm").exists():
        return "no /dev/kvm on this host"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm not accessible to this user"
    return None


needs_kvm = pytest.mark.skipif(_kvm_skip_reason() is not None, reason=str(_kvm_skip_reason()))


def _pvm_shadow_host() -> bool:
    """kvm_pvm with the shadow MMU: the host the exact counts below were measured on."""
    tdp = Path("/sys/module/kvm/parameters/tdp_mmu")
    return Path("/sys/module/kvm_pvm").exists() and tdp.exists() and tdp.read_text().strip() == "N"


@contextlib.contextmanager
def _tracefs_instance(events: tuple[str, ...]) -> Iterator[Path]:
    """A private tracefs instance with kvmmmu `events` enabled for this process only; removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("tracefs needs root")
    mounted_here = False
    if not (TRACEFS / "events").exists():
        if subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True).returncode:
            pytest.skip(f"tracefs is not mounted at {TRACEFS} and cannot be mounted")
        mounted_here = True
    missing = [e for e in events if not (TRACEFS / "events/kvmmmu" / e).exists()]
    if missing:
        pytest.skip(f"kernel has no kvmmmu tracepoints {missing}")
    inst = TRACEFS / "instances" / f"tdptrace-test-{os.getpid()}"
    inst.mkdir()
    try:
        (inst / "set_event_pid").write_text(str(os.getpid()))
        for e in events:
            (inst / "events/kvmmmu" / e / "enable").write_text("1")
        yield inst
    finally:
        for e in events:
            (inst / "events/kvmmmu" / e / "enable").write_text("0")
        inst.rmdir()
        if mounted_here:
            subprocess.run(["umount", str(TRACEFS)], check=False)


def _traced_run(cfg: ex.ExerciseConfig) -> tuple[ex.ExerciseReport, dict[str, collections.Counter[str]]]:
    """Run the exercise in this process and count kvmmmu events per phase (split by trace_marker lines)."""
    with _tracefs_instance(COUNTED) as inst:
        marker = inst / "trace_marker"
        marker.write_text("tdptrace-phase-start populate")
        order = list(cfg.phases)

        def mark(p: ex.PhaseResult) -> None:
            nxt = order.index(p.name) + 1
            if nxt < len(order):
                marker.write_text(f"tdptrace-phase-start {order[nxt]}")

        report = ex.run_exercise(cfg, on_phase=mark)
        text = (inst / "trace").read_text()
    per_phase: dict[str, collections.Counter[str]] = {p: collections.Counter() for p in cfg.phases}
    # Phase boundaries are the markers; events between them belong to the phase the marker names.
    for chunk in re.split(r"tracing_mark_write: tdptrace-phase-start ", text)[1:]:
        phase, _, body = chunk.partition("\n")
        per_phase[phase.strip()].update(re.findall(r" (kvm_(?:tdp_)?mmu_\w+): ", body))
    assert "LOST" not in text
    return report, per_phase


@needs_kvm
@pytest.mark.live
@pytest.mark.parametrize("mib,huge", [(16, False), (32, True)])
def test_live_tracepoint_counts_per_phase(mib: int, huge: bool) -> None:
    report, counts = _traced_run(ex.ExerciseConfig(mib=mib, hugepages=huge))
    assert [p.name for p in report.phases] == list(ex.PHASES)
    # On any KVM x86: deleting the memslot is exactly one fast zap, and nothing else does one.
    assert counts["delete"]["kvm_mmu_zap_all_fast"] == 1
    assert sum(c["kvm_mmu_zap_all_fast"] for c in counts.values()) == 1
    assert counts["populate"]["kvm_mmu_get_page"] >= 1
    if _pvm_shadow_host():
        # kvm_pvm, shadow MMU (the development machines): one level-4 root shadow page, nothing below it,
        # whatever the size; the fast zap tears that root down and VM destruction zaps the invalid root.
        # The shadow MMU never fires kvm_tdp_mmu_spte_changed.
        assert {p: dict(c) for p, c in counts.items()} == {
            "populate": {"kvm_mmu_get_page": 1},
            "madvise": {},
            "touch": {},
            "delete": {"kvm_mmu_zap_all_fast": 1, "kvm_mmu_prepare_zap_page": 1},
            "close": {"kvm_mmu_prepare_zap_page": 1},
        }


@needs_kvm
@pytest.mark.live
def test_live_report_and_hugepages() -> None:
    mib = 16
    r = ex.run_exercise(ex.ExerciseConfig(mib=mib, hugepages=True, phases=("populate", "delete")))
    assert [p.name for p in r.phases] == ["populate", "delete"]
    assert r.phase("populate").pages == (mib * guest.MIB - guest.DATA_GPA) // guest.PAGE
    assert r.phase("populate").exits >= 1
    assert r.host_addr % guest.HUGE == 0
    if r.thp_mode in ("always", "madvise"):
        assert r.anon_huge_kib == mib * 1024
    r = ex.run_exercise(ex.ExerciseConfig(mib=mib, phases=("populate",)))
    assert r.anon_huge_kib == 0  # MADV_NOHUGEPAGE: 4 KiB backing even with THP "always"


@needs_kvm
@pytest.mark.live
def test_live_cli_json() -> None:
    from typer.testing import CliRunner

    from tdptrace.cli import app

    res = CliRunner().invoke(app, ["exercise", "--mib", "8", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["config"]["mib"] == 8 and d["guest_bytes"] == 8 * guest.MIB and d["upper_gpa"] == 4 * guest.MIB
    assert {p["name"]: p["pages"] for p in d["phases"]} == {
        "populate": 1536, "madvise": 0, "touch": 1024, "delete": 0, "close": 0}
    assert d["phases"][1]["bytes"] == 4 * guest.MIB

    res = CliRunner().invoke(app, ["exercise", "--mib", "8", "--phases", "populate,delete"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert [ln.split()[0] for ln in lines[1:3]] == ["populate", "delete"]
    assert max(map(len, lines)) < 80


@needs_kvm
@pytest.mark.live
def test_live_hold_keeps_the_vm_open() -> None:
    """--hold: the VM (an anon_inode:kvm-vm descriptor) exists during the hold and is gone after."""
    proc = subprocess.Popen([sys.executable, "-m", "tdptrace.cli", "exercise", "--mib", "8", "--hold", "1.5",
                             "--phases", "populate", "--json"], stdout=subprocess.PIPE, text=True)
    seen = False
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None and not seen:
            with contextlib.suppress(OSError):
                fds = Path(f"/proc/{proc.pid}/fd")
                seen = any(os.readlink(fd) == "anon_inode:kvm-vm" for fd in fds.iterdir())
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert seen and proc.returncode == 0
    d = json.loads(out)
    assert d["total_ns"] >= 1.5e9 and [p["name"] for p in d["phases"]] == ["populate"]
