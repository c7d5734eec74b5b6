"""Live per-VM statistics aggregated in the kernel by probes/stats.bpf.c, read as cumulative snapshots.

`StatsReader` loads the program (BCC imported lazily), attaches the kvmmmu tracepoints and, where the kernel
has kprobes, the zap-span and yield-point probes; `read()` returns a `Snapshot` of totals since load, and
`interval()` turns two snapshots into per-VM deltas. Used by `tdptrace top` and `tdptrace serve`; no typer here.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tdptrace.errors import MissingCapability
from tdptrace.kernel.functions import YIELD_FUNCTIONS as _YIELDS
from tdptrace.kernel.functions import ZAP_LOOPS
from tdptrace.kernel.spte import Encoding, encoding_for_release
from tdptrace.kernel.symbols import copies_of, is_compiler_copy, read_text_symbols
from tdptrace.kernel.tracefs import (
    GET_PAGE,
    PREPARE_ZAP,
    SPTE_CHANGED,
    TRACEFS_MOUNT,
    ZAP_ALL_FAST,
    find_tracefs,
)
from tdptrace.live.programs import cflags, load, probes_dir, program_text  # noqa: F401

PROGRAM = "stats.bpf.c"
REPLAY_PROGRAM = "stats_replay.bpf.c"  # tests: recorded SPTE changes through the same counting code

# Keep in sync with probes/stats.h: every #define there, with its value.
STATS_H: dict[str, int] = {
    "STATS_LEVELS": 6, "GAP_BUCKETS": 64, "STATS_REPLAY_PAD": 16,
    "LOST_VM_MAP_FULL": 0, "LOST_TABLE_MAP_FULL": 1, "LOST_TASK_MAP_FULL": 2, "LOST_SLOTS": 3,
}
STATS_LEVELS = STATS_H["STATS_LEVELS"]
GAP_BUCKETS = STATS_H["GAP_BUCKETS"]
# Keep in sync with struct vm_stats in probes/stats.h (every member is a u64 or an array of them).
STATS_FIELDS: tuple[tuple[str, int], ...] = (
    ("zap_leaf", STATS_LEVELS), ("zap_nonleaf", STATS_LEVELS), ("pt_alloc", STATS_LEVELS),
    ("pt_free", STATS_LEVELS), ("retained", STATS_LEVELS), ("zap_all_fast", 1), ("spte_changes", 1),
    ("spans", 1), ("yields", 1), ("gap_count", 1), ("gap_sum_ns", 1), ("gap_max_ns", 1),
    ("gap_hist", GAP_BUCKETS),
)
STATS_WORDS = sum(n for _, n in STATS_FIELDS)
_SLICES: dict[str, slice] = {}
_off = 0
for _name, _n in STATS_FIELDS:
    _SLICES[_name] = slice(_off, _off + _n)
    _off += _n
# Map `lost`: slot -> reason (LOST_* in probes/stats.h).
LOST_REASONS: dict[int, str] = {STATS_H[f"LOST_{r.upper()}"]: r for r in ("vm_map_full", "table_map_full",
                                                                         "task_map_full")}
# struct replay_event of probes/stats.h: one SPTE change for stats_replay.bpf.c (tests).
REPLAY_EVENT = np.dtype([("gfn", "<u8"), ("old_spte", "<u8"), ("new_spte", "<u8"), ("vm", "<u4"), ("level", "u1"),
                         ("as_id", "u1"), ("pad", "<u2")])

YIELD_FUNCTIONS: tuple[str, ...] = tuple(sorted(_YIELDS))
TRACEPOINTS: tuple[str, ...] = (SPTE_CHANGED, GET_PAGE, PREPARE_ZAP, ZAP_ALL_FAST)


@dataclass
class VmTotals:
    """Counters of one VM (keyed by its process id) since the program was loaded."""

    vm: int
    comm: str
    words: np.ndarray  # STATS_WORDS u64, summed over CPUs (gap_max_ns: max over CPUs)
    interval_max_gap_ns: int = 0  # longest gap since the previous read

    def get(self, name: str) -> np.ndarray:
        return self.words[_SLICES[name]]

    def scalar(self, name: str) -> int:
        return int(self.words[_SLICES[name]][0])

    @property
    def retained(self) -> np.ndarray:
        """Retained non-leaf tables by level now (the BPF side adds +1/-1 as u64)."""
        return self.get("retained").view(np.int64)


@dataclass
class Features:
    """What this kernel lets the program measure, with the reason when something is missing."""

    spans: bool
    spans_reason: str
    tdp_tracepoint: bool
    tdp_mmu: Optional[bool] = None  # kvm.tdp_mmu module parameter (None when kvm has none)
    attached: list[str] = field(default_factory=list)

    def unavailable(self) -> dict[str, str]:
        out = {}
        if not self.spans:
            out["spans"] = out["yields"] = out["gaps"] = self.spans_reason
        if not self.tdp_tracepoint:
            out["zaps"] = out["retained"] = "no kvmmmu:kvm_tdp_mmu_spte_changed tracepoint on this kernel"
        elif self.tdp_mmu is False:
            out["zaps"] = out["retained"] = ("kvm.tdp_mmu=N: KVM uses the shadow MMU here, so SPTE zaps and retained "
                                             "tables are not traced; page-table frees show its zaps")
        return out


@dataclass
class Snapshot:
    """Everything read at one moment: per-VM totals and lost-update counts."""

    mono_ns: int
    unix_s: float
    vms: dict[int, VmTotals]
    lost: dict[str, int]
    features: Features


def tracefs() -> Path:
    """The mounted tracefs directory; MissingCapability when there is none."""
    d = find_tracefs()
    if d is None:
        raise MissingCapability("tracefs is not mounted", f"mount it: {TRACEFS_MOUNT}")
    return d


def preflight() -> Path:
    """Root, tracefs and the kvmmmu tracepoints; returns the tracefs directory."""
    if os.geteuid() != 0:
        raise MissingCapability("live statistics need root (BPF programs)", "run with sudo")
    tf = tracefs()
    if not (tf / "events" / "kvmmmu").is_dir():
        raise MissingCapability("no kvmmmu tracepoints on this kernel (is the kvm module loaded?)",
                                "modprobe kvm_intel or kvm_amd, then retry")
    return tf


def resolve(wanted: tuple[str, ...], symbols: set[str]) -> list[str]:
    """The running kernel's symbols for the given C names, including .isra/.constprop copies."""
    return sorted(s for copies in copies_of(wanted, symbols).values() for s in copies)


def tdp_mmu_enabled() -> Optional[bool]:
    """The kvm.tdp_mmu parameter (Y/N); None when the kvm module has no such parameter."""
    try:
        return Path("/sys/module/kvm/parameters/tdp_mmu").read_text().strip().upper().startswith("Y")
    except OSError:
        return None


def kprobes_supported(tf: Path) -> tuple[bool, str]:
    if not (tf / "kprobe_events").exists():
        return False, "this kernel has no kprobes (no kprobe_events in tracefs), so zap spans, yields and gaps " \
                      "cannot be measured; zaps by level, page tables and fast zaps still are"
    return True, ""


def stats_defines(encoding: Encoding, spans: bool, tdp_tracepoint: bool, pid: int = 0, max_vms: int = 1024,
                  max_tables: int = 65536, max_tasks: int = 4096) -> dict[str, int]:
    """The -D settings of probes/stats.bpf.c (and stats_replay.bpf.c) for this kernel and these options."""
    return {"TDP_PRESENT_BIT": int(encoding == Encoding.PRESENT_BIT), "TDP_WITH_SPANS": int(spans),
            "TDP_TP_SPTE_CHANGED": int(tdp_tracepoint), "TDP_FILTER_TGID": int(pid), "TDP_MAX_VMS": int(max_vms),
            "TDP_MAX_TABLES": int(max_tables), "TDP_MAX_TASKS": int(max_tasks)}


@dataclass
class StatsPlan:
    """What the statistics program is compiled with on this host, decided without loading anything."""

    release: str
    encoding: Encoding
    defines: dict[str, int]
    spans: bool
    spans_reason: str
    tdp_tracepoint: bool
    span_symbols: list[str]
    yield_symbols: list[str]


def plan_stats(pid: int = 0, spans: bool = True, max_vms: int = 1024, max_tables: int = 65536,
               release: Optional[str] = None) -> StatsPlan:
    """Settings and attach points for probes/stats.bpf.c on the running kernel (tracefs must be mounted)."""
    tf = tracefs()
    release = release or os.uname().release
    enc = encoding_for_release(release) or Encoding.PRESENT_BIT
    tdp_tp = (tf / "events" / "kvmmmu" / "kvm_tdp_mmu_spte_changed").is_dir()
    ok, reason = kprobes_supported(tf) if spans else (False, "span probes disabled (--no-spans)")
    span_syms: list[str] = []
    yield_syms: list[str] = []
    if ok:
        syms = read_text_symbols()
        span_syms, yield_syms = resolve(ZAP_LOOPS, syms), resolve(YIELD_FUNCTIONS, syms)
        if not span_syms:
            ok, reason = False, "none of the TDP MMU zap loops (" + ", ".join(ZAP_LOOPS) + \
                                ") is in /proc/kallsyms (TDP MMU not built or inlined)"
    defines = stats_defines(enc, spans=ok, tdp_tracepoint=tdp_tp, pid=pid, max_vms=max_vms, max_tables=max_tables)
    return StatsPlan(release, enc, defines, ok, reason, tdp_tp, span_syms, yield_syms)


def stats_program_text(pid: int = 0, spans: bool = True) -> str:
    """The statistics program exactly as it would be compiled here, settings included (`top/serve --ebpf`)."""
    return program_text(PROGRAM, plan_stats(pid, spans).defines)


class StatsReader:
    """Loads probes/stats.bpf.c and reads its maps. Not thread-safe: one reader thread per instance."""

    def __init__(self, pid: int = 0, spans: bool = True, max_vms: int = 1024, max_tables: int = 65536,
                 forget_after_s: float = 300.0, release: Optional[str] = None) -> None:
        preflight()
        self.forget_after_s = forget_after_s
        self._gone_since: dict[int, float] = {}
        self._comms: dict[int, str] = {}
        plan = plan_stats(pid, spans, max_vms, max_tables, release)
        self.release, self.encoding, self.defines = plan.release, plan.encoding, plan.defines
        ok, reason, tdp_tp = plan.spans, plan.spans_reason, plan.tdp_tracepoint
        span_syms, yield_syms = plan.span_symbols, plan.yield_symbols
        self.cflags = cflags(self.defines)
        try:
            from bcc import BPF
        except ImportError:
            raise MissingCapability("the bcc Python module is not importable",
                                    "install python3-bpfcc (Debian/Ubuntu) and use a venv with system site "
                                    "packages: sudo bash scripts/bootstrap.sh")
        from tdptrace.live.host import HostEnv, check_headers

        headers = check_headers(HostEnv())  # before BCC, whose own failure is several lines of noise
        if not headers.ok:
            raise MissingCapability(f"kernel headers for BCC: {headers.detail}", headers.fix)
        try:
            self.bpf = load(PROGRAM, self.defines, BPF)
        except Exception as exc:  # BCC raises bare Exception on compile/load failure
            raise MissingCapability(f"could not load the statistics program ({exc})",
                                    "check kernel headers for BCC (/lib/modules/$(uname -r)/build and source)")
        attached = [f"tracepoint:kvmmmu:{t}" for t in TRACEPOINTS
                    if t != "kvm_tdp_mmu_spte_changed" or tdp_tp]
        if ok:
            try:
                for s in span_syms:
                    fn = "span_enter" if is_compiler_copy(s) else "span_enter_kvm"
                    self.bpf.attach_kprobe(event=s.encode(), fn_name=fn.encode())
                    self.bpf.attach_kretprobe(event=s.encode(), fn_name=b"span_return")
                    attached.append(f"kprobe:{s}")
                for s in yield_syms:
                    self.bpf.attach_kprobe(event=s.encode(), fn_name=b"yield_enter")
                    self.bpf.attach_kretprobe(event=s.encode(), fn_name=b"yield_return")
                    attached.append(f"kprobe:{s}")
            except Exception as exc:
                ok, reason = False, f"attaching kprobes failed ({str(exc).splitlines()[0][:100]})"
        self.features = Features(spans=ok, spans_reason=reason, tdp_tracepoint=tdp_tp,
                                 tdp_mmu=tdp_mmu_enabled(), attached=attached)
        leaf = self.bpf["stats"].sLeaf  # one CPU's value (Leaf is the per-CPU array)
        import ctypes

        if ctypes.sizeof(leaf) != 8 * STATS_WORDS:
            raise MissingCapability(f"struct vm_stats is {ctypes.sizeof(leaf)} bytes, expected {8 * STATS_WORDS}",
                                    "probes/stats.h and tdptrace/live/stats.py are out of sync")
        self.loaded_mono_ns = time.monotonic_ns()

    def ebpf_source(self) -> str:
        """The program exactly as compiled, settings included."""
        return program_text(PROGRAM, self.defines)

    def _comm(self, vm: int, fallback: str) -> str:
        try:
            c = Path(f"/proc/{vm}/comm").read_text().strip()
            self._comms[vm] = c
            return c
        except OSError:
            return self._comms.get(vm, fallback)

    def _forget(self, vm: int, now: float) -> bool:
        """True once a VM's process has been gone for forget_after_s: its counters are dropped from the maps."""
        if Path(f"/proc/{vm}").exists():
            self._gone_since.pop(vm, None)
            return False
        since = self._gone_since.setdefault(vm, now)
        if now - since < self.forget_after_s:
            return False
        for name in ("stats", "vm_comm", "gap_interval_max"):
            try:
                del self.bpf[name][self.bpf[name].Key(vm)]
            except KeyError:
                pass
        tables = self.bpf["tables"]  # page-table states the kernel side could not retire on its own
        for k in [k for k in tables.keys() if k.vm == vm]:
            try:
                del tables[k]
            except KeyError:
                pass
        self._gone_since.pop(vm, None)
        self._comms.pop(vm, None)
        return True

    def read(self) -> Snapshot:
        """Totals per VM since load (sum over CPUs), the per-interval max gap, and lost updates."""
        b = self.bpf
        # Stamped before reading: every event before these instants is in this snapshot.
        mono_ns, unix_s = time.monotonic_ns(), time.time()
        now = mono_ns / 1e9
        comms = {int(k.value): bytes(v.comm).split(b"\0", 1)[0].decode(errors="replace")
                 for k, v in b["vm_comm"].items()}
        imax: dict[int, int] = {}
        gmax = b["gap_interval_max"]
        for k, v in list(gmax.items()):
            imax[int(k.value)] = int(v.value)
            try:
                del gmax[k]
            except KeyError:
                pass
        vms: dict[int, VmTotals] = {}
        max_col = _SLICES["gap_max_ns"].start
        for k, per_cpu in b["stats"].items():
            vm = int(k.value)
            if self._forget(vm, now):
                continue
            raw = np.frombuffer(b"".join(bytes(v) for v in per_cpu), dtype=np.uint64).reshape(-1, STATS_WORDS)
            words = raw.sum(axis=0, dtype=np.uint64)
            words[max_col] = raw[:, max_col].max()
            vms[vm] = VmTotals(vm, self._comm(vm, comms.get(vm, "?")), words, imax.get(vm, 0))
        lost_raw = b["lost"]
        lost = {name: int(sum(int(x) for x in lost_raw[lost_raw.Key(i)])) for i, name in LOST_REASONS.items()}
        return Snapshot(mono_ns, unix_s, vms, lost, self.features)

    def close(self) -> None:
        self.bpf.cleanup()


def gap_bucket_bounds_ns() -> np.ndarray:
    """Upper bound (exclusive) of each log2 gap bucket, in ns: bucket b holds [2^b, 2^(b+1))."""
    return np.power(2.0, np.arange(1, GAP_BUCKETS + 1))


@dataclass
class VmInterval:
    """What one VM did between two snapshots (counts, not rates; divide by seconds for rates)."""

    vm: int
    comm: str
    seconds: float
    zap_leaf: np.ndarray
    zap_nonleaf: np.ndarray
    pt_alloc: np.ndarray
    pt_free: np.ndarray
    zap_all_fast: int
    spans: int
    yields: int
    max_gap_ns: int
    max_gap_since_start_ns: int
    retained: np.ndarray
    totals: VmTotals

    @property
    def zaps(self) -> int:
        return int(self.zap_leaf.sum() + self.zap_nonleaf.sum())

    def to_dict(self, features: Features) -> dict[str, Any]:
        """One VM's interval as JSON: counts in the interval, per-second rates, and totals since start."""
        lv = range(1, STATS_LEVELS)
        sec = self.seconds or 1.0
        zaps = {str(i): {"leaf": int(self.zap_leaf[i]), "nonleaf": int(self.zap_nonleaf[i])} for i in lv
                if self.zap_leaf[i] or self.zap_nonleaf[i]}
        t = self.totals
        out: dict[str, Any] = {
            "vm": self.vm, "pid": self.vm, "comm": self.comm,
            "zaps": zaps,
            "zaps_per_s": {k: {kk: round(vv / sec, 3) for kk, vv in v.items()} for k, v in zaps.items()},
            "page_tables": {"allocated": int(self.pt_alloc.sum()), "freed": int(self.pt_free.sum()),
                            "allocated_by_level": {str(i): int(self.pt_alloc[i]) for i in lv if self.pt_alloc[i]},
                            "freed_by_level": {str(i): int(self.pt_free[i]) for i in lv if self.pt_free[i]}},
            "zap_all_fast": self.zap_all_fast,
            "totals": {"zaps": {str(i): {"leaf": int(t.get("zap_leaf")[i]), "nonleaf": int(t.get("zap_nonleaf")[i])}
                                for i in lv if t.get("zap_leaf")[i] or t.get("zap_nonleaf")[i]},
                       "page_tables_allocated": int(t.get("pt_alloc").sum()),
                       "page_tables_freed": int(t.get("pt_free").sum()),
                       "zap_all_fast": t.scalar("zap_all_fast")},
        }
        if "zaps" in features.unavailable():  # a figure the host cannot trace is null, never a made-up 0
            out.update(zaps=None, zaps_per_s=None)
            out["totals"]["zaps"] = None
        if features.spans:
            out.update(spans=self.spans, yields=self.yields, max_gap_ns=self.max_gap_ns or None,
                       max_gap_since_start_ns=self.max_gap_since_start_ns or None)
        else:
            out.update(spans=None, yields=None, max_gap_ns=None, max_gap_since_start_ns=None)
        if "retained" not in features.unavailable():
            out["retained_nonleaf"] = {"total": int(self.retained.sum()),
                                       "by_level": {str(i): int(self.retained[i]) for i in lv if self.retained[i]}}
        else:
            out["retained_nonleaf"] = None
        return out


def interval(prev: Optional[Snapshot], cur: Snapshot) -> list[VmInterval]:
    """Per-VM deltas from prev to cur (prev None = since load). VMs new in cur count from zero."""
    seconds = (cur.mono_ns - prev.mono_ns) / 1e9 if prev else 0.0
    out = []
    zero = np.zeros(STATS_WORDS, dtype=np.uint64)
    for vm, t in cur.vms.items():
        p = prev.vms[vm].words if prev and vm in prev.vms else zero
        d = t.words - p  # u64 wraps correctly for the signed retained deltas
        out.append(VmInterval(
            vm=vm, comm=t.comm, seconds=seconds,
            zap_leaf=d[_SLICES["zap_leaf"]], zap_nonleaf=d[_SLICES["zap_nonleaf"]],
            pt_alloc=d[_SLICES["pt_alloc"]], pt_free=d[_SLICES["pt_free"]],
            zap_all_fast=int(d[_SLICES["zap_all_fast"]][0]), spans=int(d[_SLICES["spans"]][0]),
            yields=int(d[_SLICES["yields"]][0]), max_gap_ns=t.interval_max_gap_ns,
            max_gap_since_start_ns=t.scalar("gap_max_ns"), retained=t.retained, totals=t))
    return out
