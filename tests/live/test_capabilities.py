"""Missing capabilities for the live commands: `record` refuses (or degrades) with the specific line and exit
status for each - not root, bcc missing, kernel headers missing, tracefs unmounted, no KVM (/dev/kvm),
tdp_mmu off, kprobes absent. The host is a fake tree (tests/support/hostfake.py) swapped in for check_host, so the
real host is never broken; `top` and `serve` are checked as a real unprivileged process, and the degraded
cases once more on this host where it really lacks the TDP MMU and kprobes."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hostfake import env, make_host, remove, write

from tdptrace.cli import main
from tdptrace.live import host

TDPTRACE = [sys.executable, "-m", "tdptrace.cli"]


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    return make_host(tmp_path / "host")


def record_on(fake_root: Path, monkeypatch, capsys, *args: str, **env_kw) -> tuple[int, list[str]]:
    """`tdptrace record ARGS` in this process, with check_host() describing the fake tree."""
    real = host.check_host
    monkeypatch.setattr(host, "check_host", lambda e=None: real(env(fake_root, **env_kw)))
    capsys.readouterr()
    rc = main(["record", "-q", "-d", "1s", "-o", str(fake_root.parent / "out.tdp"), *args])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert not (fake_root.parent / "out.tdp").exists()  # a refusal leaves nothing behind
    return rc, err


def refused(rc: int, err: list[str], needle: str, hint: str) -> None:
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("tdptrace: error: "), err
    assert needle in err[0] and hint in err[0], err[0]


def test_not_root(fake, monkeypatch, capsys):
    refused(*record_on(fake, monkeypatch, capsys, euid=1000), "record needs root", "run it with sudo")


def test_tracefs_unmounted(fake, monkeypatch, capsys):
    remove(fake / "sys/kernel/tracing")
    refused(*record_on(fake, monkeypatch, capsys), "tracefs is not mounted", "mount -t tracefs nodev")


def test_tracefs_mounted_but_unreadable_counts_as_unmounted_for_record(fake, monkeypatch, capsys):
    remove(fake / "sys/kernel/tracing")
    write(fake / "proc/mounts", "tracefs /sys/kernel/tracing tracefs rw 0 0\n")
    refused(*record_on(fake, monkeypatch, capsys), "tracefs is not mounted", "mount -t tracefs")


def test_bcc_missing_with_backend_bcc(fake, monkeypatch, capsys):
    refused(*record_on(fake, monkeypatch, capsys, "--backend", "bcc", bcc=None),
            "--backend bcc: python module bcc not importable", "apt install python3-bpfcc")
    # and the line points at the other backend
    rc, err = record_on(fake, monkeypatch, capsys, "--backend", "bcc", bcc=None)
    assert "or use --backend ftrace" in err[0]


def test_pypi_bcc_with_backend_bcc(fake, monkeypatch, capsys):
    refused(*record_on(fake, monkeypatch, capsys, "--backend", "bcc", bcc=object()),
            "is not BCC", "pip uninstall bcc")


def test_headers_missing_with_backend_bcc(fake, monkeypatch, capsys):
    remove(fake / "lib/modules")
    refused(*record_on(fake, monkeypatch, capsys, "--backend", "bcc"),
            "--backend bcc: no include/linux/kconfig.h", "apt install linux-headers-")


def test_no_kvm_nothing_to_record(fake, monkeypatch, capsys):
    """No KVM module (so no /dev/kvm and no kvmmmu tracepoints): refused with the doctor's verdict and fix."""
    remove(fake / "sys/module/kvm")
    remove(fake / "sys/kernel/tracing/events/kvmmmu")
    remove(fake / "proc/kallsyms")
    write(fake / "proc/kallsyms", "ffffffff81001000 T schedule\n")
    refused(*record_on(fake, monkeypatch, capsys), "record cannot record here",
            "modprobe kvm_intel (Intel) or modprobe kvm_amd (AMD)")


def test_kprobes_absent_is_noted_in_the_plan(fake):
    """No kprobes: record degrades (tracepoints only) and says which figures are missing and why."""
    from tdptrace.live.attach import plan_probes

    shutil.rmtree(fake)
    make_host(fake, kprobes=False)
    remove(fake / "sys/kernel/btf")  # and no fentry either, as on this CI host
    report = host.check_host(env(fake))
    assert report.can_record and not report.figures_available["yields"]
    assert report.figure_notes["yields"] == "no kprobes and no fentry"
    plan = plan_probes(report)
    assert not plan.spans
    assert plan.unavailable() == ["zap spans, yield points and lock-hold gaps are unavailable (the kernel has no "
                                  "kprobes; fentry is refused): only tracepoints were recorded"]
    assert {m["reason"] for m in plan.missing if m["probe"].startswith("kprobe:")} == {"no kprobes on this kernel"}


def _live_host_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to record"
    if not Path("/sys/kernel/tracing/events/kvmmmu").is_dir():
        return "tracefs with kvmmmu events is not mounted"
    return None


@pytest.mark.live
def test_this_host_degrades_with_notes(tmp_path):
    """On this host (kvm_pvm, tdp_mmu=N, no kprobes, as in CI): record works, and says on stderr and in the
    capture's notes what it cannot measure. Skips where the host has a TDP MMU and kprobes."""
    reason = _live_host_reason()
    if reason:
        pytest.skip(reason)
    tdp = Path("/sys/module/kvm/parameters/tdp_mmu")
    kprobes = Path("/sys/kernel/tracing/kprobe_events").exists()
    if tdp.exists() and tdp.read_text().strip() in ("Y", "1") and kprobes:
        pytest.skip("this host has the TDP MMU and kprobes: nothing to degrade")
    out = tmp_path / "d.tdp"
    p = subprocess.run(TDPTRACE + ["record", "-d", "1s", "--backend", "ftrace", "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    err = " ".join(p.stderr.split())  # rich wraps long notes at the terminal width
    if tdp.exists() and tdp.read_text().strip() not in ("Y", "1"):
        assert "note: N: KVM uses the shadow MMU" in err
    meta = json.loads((out / "meta.json").read_text())
    if not kprobes:
        assert "zap spans, yield points and lock-hold gaps are unavailable (the kernel has no kprobes" in err
        assert any("the kernel has no kprobes" in n for n in meta["notes"])
        assert meta["capabilities"]["spans"] is False


def _nobody() -> tuple[int, int] | None:
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


@pytest.mark.parametrize("args,needle", [
    (["record", "-q", "-d", "1s", "-o", "/tmp/tdptrace-never.tdp"], "record needs root"),
    (["top", "--once", "--json", "0.1"], "live statistics need root"),
    (["serve", "--listen", "127.0.0.1:19464"], "need root"),
])
def test_not_root_for_real(args, needle):
    """As a real unprivileged process (uid nobody): one line, exit 2, no traceback."""
    ids = _nobody()
    if os.geteuid() != 0 or ids is None:
        pytest.skip("needs root to switch to the user nobody" if ids else "no user nobody here")

    def drop() -> None:
        os.setgid(ids[1])
        os.setgroups([])
        os.setuid(ids[0])

    p = subprocess.run(TDPTRACE + args, capture_output=True, text=True, timeout=120, preexec_fn=drop,
                       cwd="/", env=os.environ | {"HOME": "/nonexistent"})
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert len(lines) == 1 and needle in lines[0], lines


# ---- the same, for real processes on this host: bcc hidden, kernel headers pointed away -----------------

def _live_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the live commands check for bcc and headers only once they may load BPF"
    if not Path("/sys/kernel/tracing/events/kvmmmu").is_dir():
        return "tracefs with kvmmmu events is not mounted"
    return None


@pytest.fixture
def no_bcc(tmp_path) -> dict[str, str]:
    """An environment in which `import bcc` fails, as on a host without python3-bpfcc."""
    shadow = tmp_path / "shadow" / "bcc"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'bcc'\")\n")
    return os.environ | {"PYTHONPATH": str(shadow.parent), "COLUMNS": "300"}


@pytest.fixture
def no_headers() -> dict[str, str]:
    """BCC pointed at a header tree that does not exist (what BCC does when none is installed)."""
    return os.environ | {"BCC_KERNEL_SOURCE": "/nonexistent-kernel-headers", "COLUMNS": "300"}


def _run(args: list[str], env_: dict[str, str]) -> tuple[int, list[str]]:
    p = subprocess.run(TDPTRACE + args, capture_output=True, text=True, timeout=180, env=env_, cwd="/")
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, [ln for ln in p.stderr.splitlines() if ln.strip()]


@pytest.mark.live
@pytest.mark.parametrize("args,needle", [
    (["record", "-q", "-d", "1s", "--backend", "bcc", "-o", "/tmp/tdptrace-never.tdp"],
     "--backend bcc: python module bcc not importable"),
    (["top", "--once", "--json", "0.5"], "the bcc Python module is not importable"),
    (["serve", "--listen", "127.0.0.1:19466", "--duration", "1"], "the bcc Python module is not importable"),
])
def test_bcc_missing_for_real(args, needle, no_bcc):
    if _live_reason():
        pytest.skip(_live_reason())
    rc, err = _run(args, no_bcc)
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert "python3-bpfcc" in err[0]


@pytest.mark.live
def test_bcc_missing_record_falls_back_to_ftrace(no_bcc, tmp_path):
    if _live_reason():
        pytest.skip(_live_reason())
    rc, err = _run(["record", "-q", "-d", "1s", "-o", str(tmp_path / "f.tdp")], no_bcc)
    assert rc == 0, err
    assert json.loads((tmp_path / "f.tdp" / "meta.json").read_text())["source"]["kind"] == "ftrace"


@pytest.mark.live
@pytest.mark.parametrize("args,needle", [
    (["record", "-q", "-d", "1s", "--backend", "bcc", "-o", "/tmp/tdptrace-never.tdp"],
     "--backend bcc: no include/linux/kconfig.h under /nonexistent-kernel-headers"),
    (["top", "--once", "--json", "0.5"],
     "kernel headers for BCC: no include/linux/kconfig.h under /nonexistent-kernel-headers"),
    (["serve", "--listen", "127.0.0.1:19467", "--duration", "1"], "kernel headers for BCC: no include/linux"),
])
def test_headers_missing_for_real(args, needle, no_headers):
    if _live_reason():
        pytest.skip(_live_reason())
    rc, err = _run(args, no_headers)
    assert rc == 2 and len(err) == 1 and needle in err[0], err
