"""The host's own limits that turn a long hold of mmu_lock into an incident, read at record time.

An RCU stall warning fires once a grace period has waited `rcu_cpu_stall_timeout` seconds (expedited grace
periods: `rcu_exp_cpu_stall_timeout` ms, 0 = the same as the normal one); the soft-lockup detector fires when
a CPU has not scheduled for 2 x `watchdog_thresh` seconds, the hard-lockup detector after `watchdog_thresh`
seconds without interrupts. RCU reports stall lengths in jiffies, so HZ comes along. Stored in the capture's
meta (`host.limits`) so triage can say how far a hold was from each of them; every value is None where the
host does not say (absent file, unreadable config), never a guessed default.
"""
from __future__ import annotations

import gzip
import os
import re
from pathlib import Path
from typing import Any, Optional

_RCU = "sys/module/rcupdate/parameters"
_SOURCES: dict[str, str] = {
    "rcu_cpu_stall_timeout_s": f"{_RCU}/rcu_cpu_stall_timeout",
    "rcu_exp_cpu_stall_timeout_ms": f"{_RCU}/rcu_exp_cpu_stall_timeout",
    "rcu_cpu_stall_suppress": f"{_RCU}/rcu_cpu_stall_suppress",
    "watchdog_thresh_s": "proc/sys/kernel/watchdog_thresh",
    "watchdog": "proc/sys/kernel/watchdog",
    "soft_watchdog": "proc/sys/kernel/soft_watchdog",
    "nmi_watchdog": "proc/sys/kernel/nmi_watchdog",
    "softlockup_panic": "proc/sys/kernel/softlockup_panic",
    "panic_on_rcu_stall": "proc/sys/kernel/panic_on_rcu_stall",
}
_CONFIG_KEYS = ("CONFIG_HZ", "CONFIG_PREEMPT_NONE", "CONFIG_PREEMPT_VOLUNTARY", "CONFIG_PREEMPT",
                "CONFIG_PREEMPT_LAZY", "CONFIG_PREEMPT_DYNAMIC", "CONFIG_PREEMPT_RT")


def _int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text in ("Y", "N"):  # boolean module parameters
        return int(text == "Y")
    return None


def kernel_config(root: Path = Path("/"), release: Optional[str] = None) -> dict[str, str]:
    """The build options of the running kernel that matter here, from /proc/config.gz or /boot/config-REL."""
    release = release or os.uname().release
    text = ""
    for p in (root / "proc/config.gz", root / f"boot/config-{release}", root / f"lib/modules/{release}/config"):
        try:
            data = p.read_bytes()
        except OSError:
            continue
        try:
            text = (gzip.decompress(data) if p.suffix == ".gz" else data).decode("utf-8", "replace")
        except (OSError, EOFError):
            continue
        break
    out = {}
    for key in _CONFIG_KEYS:
        m = re.search(rf"^{key}=(\S+)$", text, re.M)
        if m:
            out[key] = m.group(1)
    return out


def preempt_model(config: dict[str, str], version: str = "") -> Optional[str]:
    """none / voluntary / full / lazy / rt as built (PREEMPT_DYNAMIC kernels can be switched with preempt= at
    boot; the built default is what the config says). None when neither config nor version tells."""
    for key, name in (("CONFIG_PREEMPT_RT", "rt"), ("CONFIG_PREEMPT_LAZY", "lazy"), ("CONFIG_PREEMPT", "full"),
                      ("CONFIG_PREEMPT_VOLUNTARY", "voluntary"), ("CONFIG_PREEMPT_NONE", "none")):
        if config.get(key) == "y":
            return name
    if "PREEMPT_RT" in version:
        return "rt"
    return None


def host_limits(root: Path = Path("/"), release: Optional[str] = None) -> dict[str, Any]:
    """The stall and lockup limits of the host under `root`, as meta.host['limits'] stores them."""
    out: dict[str, Any] = {k: _int(root / rel) for k, rel in _SOURCES.items()}
    cfg = kernel_config(root, release)
    hz = cfg.get("CONFIG_HZ")
    out["hz"] = int(hz) if hz and hz.isdigit() else None
    out["preempt_built"] = preempt_model(cfg, os.uname().version if root == Path("/") else "")
    out["preempt_dynamic"] = cfg.get("CONFIG_PREEMPT_DYNAMIC") == "y" if cfg else None
    out["source"] = "recorded on the host"
    return out
