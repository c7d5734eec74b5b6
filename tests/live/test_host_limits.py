"""Host limits read at record time: values from a fake host tree, None where the host does not say, and the
running host's own files as ground truth."""
from __future__ import annotations

import gzip
from pathlib import Path

from tdptrace.live.host_limits import host_limits, kernel_config, preempt_model


def _tree(tmp_path: Path, config: str | None) -> Path:
    (tmp_path / "sys/module/rcupdate/parameters").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "sys/module/rcupdate/parameters/rcu_cpu_stall_timeout").write_text("21\n")
    (tmp_path / "sys/module/rcupdate/parameters/rcu_exp_cpu_stall_timeout").write_text("20000\n")
    (tmp_path / "proc/sys/kernel/watchdog_thresh").write_text("10\n")
    if config is not None:
        (tmp_path / "proc/config.gz").write_bytes(gzip.compress(config.encode()))
    return tmp_path


def test_limits_from_a_host_tree(tmp_path):
    root = _tree(tmp_path, "CONFIG_HZ_250=y\nCONFIG_HZ=250\nCONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_PREEMPT_DYNAMIC=y\n")
    lim = host_limits(root, release="6.1.0-56-amd64")
    assert lim["rcu_cpu_stall_timeout_s"] == 21 and lim["rcu_exp_cpu_stall_timeout_ms"] == 20000
    assert lim["watchdog_thresh_s"] == 10 and lim["hz"] == 250
    assert lim["preempt_built"] == "voluntary" and lim["preempt_dynamic"] is True
    assert lim["softlockup_panic"] is None and lim["watchdog"] is None  # absent: unknown, not a default


def test_without_config_hz_is_unknown(tmp_path):
    lim = host_limits(_tree(tmp_path, None), release="6.1.0-56-amd64")
    assert lim["hz"] is None and lim["preempt_built"] is None and lim["preempt_dynamic"] is None


def test_config_from_boot_when_proc_has_none(tmp_path):
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/config-6.12.0").write_text("CONFIG_HZ=1000\nCONFIG_PREEMPT_LAZY=y\n")
    cfg = kernel_config(tmp_path, "6.12.0")
    assert cfg == {"CONFIG_HZ": "1000", "CONFIG_PREEMPT_LAZY": "y"} and preempt_model(cfg) == "lazy"


def test_running_host_matches_its_own_files():
    lim = host_limits()
    p = Path("/proc/sys/kernel/watchdog_thresh")
    if p.exists():
        assert lim["watchdog_thresh_s"] == int(p.read_text())
    p = Path("/sys/module/rcupdate/parameters/rcu_cpu_stall_timeout")
    if p.exists():
        assert lim["rcu_cpu_stall_timeout_s"] == int(p.read_text())
