"""`tdptrace doctor`: exit status 0/1/2, the table and --json, over fake host trees and the real host."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hostfake import make_host, remove
from typer.testing import CliRunner

from tdptrace.cli import app, main
from tdptrace.live import host


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake trees describe a root session whatever uid runs the tests."""
    monkeypatch.setattr(host.os, "geteuid", lambda: 0)


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["doctor", *args], env={"COLUMNS": "80"})
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


def test_good_host_exits_0(tmp_path: Path, as_root: None) -> None:
    rc, out = _run("--root", str(make_host(tmp_path / "h")))
    assert rc == 0
    assert "record can give all three figures" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    for name in ("root", "bcc", "kernel headers", "BTF", "tracefs", "kprobes", "fentry", "kvm", "tdp_mmu",
                 "kvmmmu tracepoints", "zap functions", "yield functions"):
        assert any(line.startswith(f"│{name} ") for line in out.splitlines()), name


def test_tracepoints_only_exits_1_and_names_missing_figures(tmp_path: Path, as_root: None) -> None:
    h = make_host(tmp_path / "h", kprobes=False)
    remove(h / "sys/kernel/btf")
    rc, out = _run("--root", str(h))
    assert rc == 1
    flat = " ".join(out.split())
    assert "missing: zap spans, yields and lock-hold gaps (no kprobes and no fentry)" in flat
    assert "fix: use a kernel built with CONFIG_KPROBES=y" in flat
    rc, out = _run("--root", str(h), "--json")
    d = json.loads(out)
    assert rc == 1 and d["exit_code"] == 1
    assert d["figures_available"] == {"zap_levels": True, "yields": False, "retained": True}


def test_tracefs_missing_exits_with_mount_command(tmp_path: Path, as_root: None) -> None:
    h = make_host(tmp_path / "h")
    remove(h / "sys/kernel/tracing")
    rc, out = _run("--root", str(h), "--json")
    d = json.loads(out)
    # Over a fake tree bcc is not probed, so without tracefs nothing can attach.
    assert rc == 2 and d["can_record"] is False
    row = next(c for c in d["checks"] if c["name"] == "tracefs")
    assert row["fix"] == "mount -t tracefs nodev /sys/kernel/tracing"


def test_not_root_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host.os, "geteuid", lambda: 1000)
    rc, out = _run("--root", str(make_host(tmp_path / "h")))
    assert rc == 2 and "record cannot record here: not root" in " ".join(out.split())


def test_main_returns_doctor_status(tmp_path: Path, as_root: None, capsys: pytest.CaptureFixture[str]) -> None:
    h = make_host(tmp_path / "h")
    remove(h / "sys/module/kvm")
    remove(h / "sys/kernel/tracing/events/kvmmmu")
    (h / "proc/kallsyms").write_text("")
    assert main(["doctor", "--root", str(h), "--json"]) == 2
    d = json.loads(capsys.readouterr().out)
    kvm = next(c for c in d["checks"] if c["name"] == "kvm")
    assert kvm["status"] == "missing" and kvm["fix"].startswith("modprobe kvm_intel")


@pytest.mark.live
def test_live_doctor_matches_check_host() -> None:
    expected = host.check_host()
    rc, out = _run("--json")
    d = json.loads(out)
    assert rc == expected.exit_code == d["exit_code"]
    assert d["figures_available"] == expected.figures_available
    assert [c["name"] for c in d["checks"]] == [c.name for c in expected.checks]
    rc2, text = _run()
    assert rc2 == rc and expected.verdict().split(";")[0] in " ".join(text.split())
    if os.geteuid() == 0 and Path("/sys/module/kvm_pvm").exists() \
            and not Path("/sys/kernel/tracing/kprobe_events").exists():
        assert rc == 1  # this development machine: tracepoints only


@pytest.mark.live
def test_live_doctor_unprivileged_exits_2_without_traceback() -> None:
    """As an ordinary user (tracefs is root-only) doctor still prints its table and exits 2."""
    import subprocess
    import sys

    if os.geteuid() != 0:
        kw: dict = {}
    else:
        kw = {"user": 65534, "group": 65534, "extra_groups": []}
    res = subprocess.run([sys.executable, "-m", "tdptrace.cli", "doctor", "--json"], cwd="/",
                         capture_output=True, text=True, timeout=120, **kw)
    assert "Traceback" not in res.stderr, res.stderr
    d = json.loads(res.stdout)
    assert res.returncode == d["exit_code"] == 2 and d["verdict"] == "record cannot record here: not root"
    root = next(c for c in d["checks"] if c["name"] == "root")
    assert root["status"] == "missing" and "uid" in root["detail"]
