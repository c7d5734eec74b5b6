"""The next step for each finding: which option, which kernel change, which command to run next.

Rules, not prose generation: each is a fact of the finding (its operation, lock mode, whether it yielded,
the kernel era, the preemption model, what the capture lacks) mapped to one action. Kept as data so that
`triage --json` carries them and scripts can act on the kind.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from tdptrace.kernel.functions import LEAF_ZAP, RANGE_ZAP, ROOT_TEARDOWN, operation_class
from tdptrace.kernel.mmu_lock import WRITE, contention_yields, era_behaviour

OPTION = "option"      # a host or VMM setting to change
KERNEL = "kernel"      # a kernel change (upgrade, backport)
COMMAND = "command"    # a tdptrace (or standard) command to run next
CHECK = "check"        # something to look at on the host now


@dataclass(frozen=True)
class Action:
    """One next step."""

    kind: str
    text: str
    command: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Finding:
    """What the action rules look at, for one stretch."""

    function: str
    context: Optional[str]
    kind: str                   # 'hold' or 'includes_away'
    above_threshold: bool
    lower_bound: bool
    lock_mode: Optional[str]
    span_yields: int
    can_yield: Optional[int]
    path_source: str
    tid: int
    pid: Optional[int]
    release: Optional[str]
    preempt: Optional[str]
    imported: bool
    waiters_recorded: bool
    capture: str
    guest_size: Optional[str] = None
    preempt_dynamic: Optional[bool] = None


def actions_for(f: Finding) -> list[Action]:
    """The next steps for one finding, most useful first."""
    out: list[Action] = []
    if f.kind == "includes_away":
        how = ("import a trace that also has a return probe on the yield point, e.g. 'r:tdp/cond_resched_r_ret "
               "__cond_resched_rwlock_read ret=$retval'" if f.imported else
               "record again: the recorder traces the yield's return where the kernel lets it")
        out.append(Action(COMMAND, "measure the time spent away in the yield so this stretch splits into the "
                                   "hold and the time away: " + how))
        return out
    if f.lower_bound:
        tid = f.tid
        out.append(Action(CHECK, "the zap was still running when the capture ended: take its kernel stack while "
                                 "it lasts, and every CPU's backtrace",
                          f"cat /proc/{tid}/stack; echo l > /proc/sysrq-trigger; dmesg | tail -n 80"))
    if not f.above_threshold and not f.lower_bound:
        return out
    op = operation_class(f.function)
    era = era_behaviour(f.release)
    size = f.guest_size or "SIZE"
    if op == ROOT_TEARDOWN and era is not None and era.strategy in ("5.15", "two-pass"):
        out.append(Action(KERNEL, f"kernel change: {era.era} tears a root down in "
                                  f"{'one recursive pass' if era.strategy == '5.15' else 'two passes'}; 6.9 and "
                                  "later tear it down in four passes (4K, 2M, 1G, root) and yield at every "
                                  "level: upgrade the host kernel, or compare the eras on this guest first",
                          f"tdptrace simulate -o old.tdp --size {size} --scenario delete-slot --strategy "
                          f"{era.strategy} && tdptrace simulate -o new.tdp --size {size} --scenario delete-slot "
                          "--strategy four-pass && tdptrace compare old.tdp new.tdp"))
    contended, _ = contention_yields(f.release, f.preempt, f.preempt_dynamic)
    if f.span_yields == 0 and f.can_yield != 0 and f.preempt in (None, "none", "voluntary") and contended is not True:
        built = f"this kernel is built with preempt={f.preempt}" if f.preempt else "on a non-preemptible kernel"
        out.append(Action(OPTION, f"{built} the zap yields only when need_resched is set, never because a vCPU "
                                  "waits for mmu_lock; a PREEMPT_DYNAMIC kernel booted with preempt=full also "
                                  "yields on lock contention (rwlock_needbreak)",
                          "grep -o 'preempt=[a-z]*' /proc/cmdline; uname -v"))
    if f.can_yield == 0:
        out.append(Action(KERNEL, "this zap was called with can_yield=0 and cannot yield at all: the path that "
                                  "called it (see the caller path) is the one to change or avoid"))
    if op in (LEAF_ZAP, RANGE_ZAP) and f.context and f.context.startswith("mmu notifier"):
        out.append(Action(CHECK, "find who unmapped the guest's memory: THP collapse (khugepaged), NUMA balancing "
                                 "page migration, reclaim or swap under host memory pressure, or the VMM itself "
                                 "(madvise/munmap: balloon, free page reporting)",
                          "sysctl kernel.numa_balancing; cat /sys/kernel/mm/transparent_hugepage/enabled; "
                          "grep -E 'thp_collapse_alloc|numa_pages_migrated|pgscan' /proc/vmstat"))
    if f.context and f.context.startswith("memslot"):
        out.append(Action(CHECK, "a memslot was deleted or moved (memory hot-unplug, ROM/VGA remap, VMM "
                                 "restart of a region): every root of the VM is torn down; check what the VMM did "
                                 "at that moment"))
    if f.path_source != "kernel stack":
        pid = f"-p {f.pid} " if f.pid is not None else ""
        out.append(Action(COMMAND, "record the kernel stack of each long zap to see exactly who called it",
                          f"tdptrace record --stacks {pid}-o stacks.tdp"))
    if f.lock_mode == WRITE and not f.waiters_recorded:
        pid = f"-p {f.pid} " if f.pid is not None else ""
        out.append(Action(COMMAND, "a write hold blocks every vCPU fault of the VM: record the waiters to see "
                                   "which vCPUs waited and for how long",
                          f"tdptrace record --backend ftrace --waiters {pid}-o waiters.tdp"))
    return out


def overall(capture: str) -> list[Action]:
    """Steps that apply to any capture with findings."""
    return [Action(COMMAND, "open the capture as a timeline (one track per task, every span, yield and kernel "
                            "log line) in the Perfetto UI",
                   f"tdptrace export {capture} -o capture.perfetto-trace")]
