"""How far a hold of mmu_lock was from the host limits that turn it into an incident (RCU stall warning,
soft lockup), from the limits the recorder stored in meta (`host.limits`) or the ones the user gives.

A hold inside a zap runs under rcu_read_lock() without scheduling, so it delays RCU grace periods and keeps
the CPU from scheduling for its whole length: the stall timeout and the soft-lockup threshold (2 x
watchdog_thresh) are what it is measured against. Imported traces carry no limits: they stay unknown unless
given, and the kernel defaults are only ever shown as defaults.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from tdptrace.errors import BadInput

# Kernel defaults (CONFIG_RCU_CPU_STALL_TIMEOUT=21, watchdog_thresh=10 -> soft lockup after 20 s):
# shown beside unknown limits, never used as if they were the host's.
DEFAULT_RCU_STALL_S = 21
DEFAULT_WATCHDOG_THRESH_S = 10
DEFAULT_HZ = 250

# --limits KEY=VALUE names: the kernel's own parameter names, in the kernel's units.
_GIVEN_KEYS = {"rcu_cpu_stall_timeout": "rcu_cpu_stall_timeout_s", "rcu_exp_cpu_stall_timeout":
               "rcu_exp_cpu_stall_timeout_ms", "watchdog_thresh": "watchdog_thresh_s", "hz": "hz"}


@dataclass(frozen=True)
class Limits:
    """The host's limits in ns (None = unknown) and where they came from."""

    rcu_stall_ns: Optional[int]
    rcu_exp_stall_ns: Optional[int]
    soft_lockup_ns: Optional[int]
    hz: Optional[int]
    preempt: Optional[str]
    source: str                 # 'recorded on the host', 'given', 'recorded on the host, some given', 'unknown'
    rcu_stall_suppressed: bool = False
    preempt_dynamic: Optional[bool] = None  # CONFIG_PREEMPT_DYNAMIC (the model can be changed at boot)

    @property
    def known(self) -> bool:
        return self.rcu_stall_ns is not None or self.soft_lockup_ns is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kernel_defaults"] = {"rcu_stall_ns": DEFAULT_RCU_STALL_S * 10**9,
                                "soft_lockup_ns": 2 * DEFAULT_WATCHDOG_THRESH_S * 10**9}
        return d


def parse_given(text: Optional[str]) -> dict[str, int]:
    """'rcu_cpu_stall_timeout=21,watchdog_thresh=10,hz=250' -> the meta.host.limits keys it sets."""
    if not text:
        return {}
    out: dict[str, int] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or key not in _GIVEN_KEYS or not value.strip().isdigit():
            raise BadInput(f"--limits: cannot read '{item.strip()[:40]}'",
                           "give KEY=INTEGER pairs from " + ", ".join(_GIVEN_KEYS)
                           + " (the kernel's own units), e.g. rcu_cpu_stall_timeout=21,watchdog_thresh=10")
        out[_GIVEN_KEYS[key]] = int(value)
    if out.get("hz") == 0:
        raise BadInput("--limits: hz=0 is not a tick rate", "give the kernel's CONFIG_HZ, e.g. hz=250")
    return out


def resolve(recorded: Optional[dict[str, Any]], given: Optional[dict[str, int]] = None) -> Limits:
    """The limits to judge a capture by: what the host recorded, overridden key by key by what is given."""
    rec = dict(recorded or {})
    giv = dict(given or {})
    vals = rec | giv
    rcu = vals.get("rcu_cpu_stall_timeout_s")
    exp_ms = vals.get("rcu_exp_cpu_stall_timeout_ms")
    wd = vals.get("watchdog_thresh_s")
    rcu_ns = int(rcu) * 10**9 if isinstance(rcu, int) and rcu > 0 else None
    # rcu_exp_cpu_stall_timeout = 0 means "the same as rcu_cpu_stall_timeout" (kernel/rcu/tree_stall.h).
    exp_ns = int(exp_ms) * 10**6 if isinstance(exp_ms, int) and exp_ms > 0 else (rcu_ns if exp_ms == 0 else None)
    soft_ns = 2 * int(wd) * 10**9 if isinstance(wd, int) and wd > 0 else None
    if isinstance(vals.get("watchdog"), int) and vals["watchdog"] == 0 or \
            isinstance(vals.get("soft_watchdog"), int) and vals["soft_watchdog"] == 0:
        soft_ns = None  # the soft-lockup detector is off on this host
    hz = vals.get("hz") if isinstance(vals.get("hz"), int) else None
    has_rec = any(rec.get(k) is not None for k in ("rcu_cpu_stall_timeout_s", "watchdog_thresh_s", "hz"))
    source = ("recorded on the host, some given" if has_rec and giv else "given" if giv else
              "recorded on the host" if has_rec else "unknown")
    return Limits(rcu_ns, exp_ns, soft_ns, hz, rec.get("preempt_built"), source,
                  rcu_stall_suppressed=vals.get("rcu_cpu_stall_suppress") == 1,
                  preempt_dynamic=rec.get("preempt_dynamic"))


def distance(hold_ns: int, lim: Limits) -> dict[str, Any]:
    """A hold against each known limit: its share of it and the headroom left (ns); None where unknown."""
    def one(limit: Optional[int]) -> dict[str, Any]:
        if limit is None:
            return {"limit_ns": None, "share": None, "headroom_ns": None}
        return {"limit_ns": limit, "share": hold_ns / limit, "headroom_ns": limit - hold_ns}

    return {"source": lim.source, "rcu_stall": one(lim.rcu_stall_ns), "soft_lockup": one(lim.soft_lockup_ns),
            "rcu_stall_warnings_suppressed": lim.rcu_stall_suppressed}
