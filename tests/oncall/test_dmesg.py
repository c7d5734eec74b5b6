"""The kernel log parser on lines written from the kernel's own format strings (tree_stall.h, watchdog.c,
hung_task.c, dump_stack.c), with and without printk / dmesg -T / iso stamps."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tdptrace.errors import BadInput
from tdptrace.oncall.kernel_log import HARD_LOCKUP, HUNG_TASK, RCU_STALL, SOFT_LOCKUP, parse_dmesg, parse_utc_offset

# "rcu: " is pr_fmt of kernel/rcu; print_cpu_stall_info's "\t%d-%c%c%c%c: (%lu %s) idle=..." follows, then
# pr_cont("\t(t=%lu jiffies g=%ld q=%lu ncpus=%d)\n").
SELF_STALL_61 = """\
[ 4321.123456] rcu: INFO: rcu_sched self-detected stall on CPU
[ 4321.123460] rcu: \t3-....: (5250 ticks this GP) idle=1b3c/1/0x4000000000000000 softirq=8824/8824 fqs=2522
[ 4321.123470] \t(t=5251 jiffies g=123457 q=1203 ncpus=8)
[ 4321.123480] NMI backtrace for cpu 3
[ 4321.123490] CPU: 3 PID: 4567 Comm: qemu-system-x86 Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2
[ 4321.123500] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[ 4321.123510] RIP: 0010:__tdp_mmu_zap_root+0x12a/0x1e0 [kvm]
[ 4321.123520] Call Trace:
[ 4321.123530]  <TASK>
[ 4321.123540]  ? tdp_mmu_zap_leafs+0x20/0x1e0 [kvm]
[ 4321.123550]  kvm_tdp_mmu_zap_invalidated_roots+0x87/0xf0 [kvm]
[ 4321.123560]  kvm_mmu_zap_all_fast+0x1a4/0x1e0 [kvm]
[ 4321.123570]  </TASK>
"""

SOFT_LOCKUP_LINE = "[  812.000123] watchdog: BUG: soft lockup - CPU#5 stuck for 22s! [qemu-system-x86:9876]\n"
HUNG_LINE = "[ 1000.5] INFO: task kworker/u16:3:211 blocked for more than 120 seconds.\n"
HARD_LINE = "[   77.000001] watchdog: Watchdog detected hard LOCKUP on cpu 2\n"


def test_self_detected_stall_with_printk_stamps():
    (r,) = parse_dmesg(SELF_STALL_61)
    assert r.kind == RCU_STALL
    assert r.rcu_flavour == "rcu_sched"
    assert r.uptime_ns == 4321_123456000
    assert r.wall_ns is None
    assert r.cpu == 3 and r.cpus == [3]
    assert (r.pid, r.comm) == (4567, "qemu-system-x86")
    assert r.stuck_ns == 5251 * 1_000_000_000 // 250  # HZ=250 on Debian amd64
    assert r.symbols[:2] == ["__tdp_mmu_zap_root", "? tdp_mmu_zap_leafs"]
    assert "kvm_tdp_mmu_zap_invalidated_roots" in r.symbols
    assert r.line_no == 1
    assert r.text == "rcu: INFO: rcu_sched self-detected stall on CPU"


def test_self_detected_stall_without_stamps_and_preempt_flavour():
    text = "rcu: INFO: rcu_preempt self-detected stall on CPU\nrcu: \t0-...!: (20999 ticks this GP) idle=0\n" \
           "\t(t=21000 jiffies g=8 q=1 ncpus=2)\n"
    (r,) = parse_dmesg(text, hz=1000)
    assert r.rcu_flavour == "rcu_preempt"
    assert r.uptime_ns is None and r.wall_ns is None
    assert r.cpu == 0
    assert r.stuck_ns == 21_000_000_000


def test_pre_5x_stall_format_cpu_in_braces_on_one_line():
    (r,) = parse_dmesg("[  100.000000] INFO: rcu_sched self-detected stall on CPU { 7}  "
                       "(t=5250 jiffies g=10 c=9 q=3)\n")
    assert r.cpu == 7 and r.stuck_ns == 21_000_000_000 and r.uptime_ns == 100 * 10**9


def test_other_cpus_stall_lists_cpus_and_detector():
    text = ("[  50.000000] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:\n"
            "[  50.000001] rcu: \t1-...!: (0 ticks this GP) idle=e4c/1/0x4000000000000000 softirq=1/1 fqs=0\n"
            "[  50.000002] rcu: \t6-...!: (1 GPs behind) idle=f00/1/0x4000000000000000 softirq=5/5 fqs=0\n"
            "[  50.000003] \t(detected by 0, t=5252 jiffies, g=77, q=12)\n")
    (r,) = parse_dmesg(text)
    assert r.kind == RCU_STALL
    assert r.cpus == [1, 6]
    assert r.stuck_ns == 5252 * 1_000_000_000 // 250


def test_soft_lockup_hung_task_hard_lockup():
    rs = parse_dmesg(SOFT_LOCKUP_LINE + HUNG_LINE + HARD_LINE)
    assert [r.kind for r in rs] == [SOFT_LOCKUP, HUNG_TASK, HARD_LOCKUP]
    soft, hung, hard = rs
    assert (soft.cpu, soft.comm, soft.pid, soft.stuck_ns) == (5, "qemu-system-x86", 9876, 22 * 10**9)
    assert soft.uptime_ns == 812_000123000
    assert (hung.comm, hung.pid, hung.stuck_ns) == ("kworker/u16:3", 211, 120 * 10**9)
    assert hung.uptime_ns == 1000_500000000
    assert hard.cpu == 2


def test_soft_lockup_without_stamp_and_comm_with_spaces():
    (r,) = parse_dmesg("watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [CPU 0/KVM:3141]\n")
    assert (r.comm, r.pid, r.cpu, r.uptime_ns) == ("CPU 0/KVM", 3141, 0, None)


def test_dmesg_T_ctime_stamps_read_in_the_given_zone():
    text = "[Wed Nov 25 09:22:59 2026] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [qemu:5]\n"
    (r,) = parse_dmesg(text, tz=timezone.utc)
    assert r.uptime_ns is None
    assert r.wall_ns == int(datetime(2026, 11, 25, 9, 22, 59, tzinfo=timezone.utc).timestamp()) * 10**9
    (r1,) = parse_dmesg(text, tz=parse_utc_offset("+01:00"))
    assert r.wall_ns - r1.wall_ns == 3600 * 10**9


def test_iso_stamps_carry_their_offset():
    text = "2026-11-25T10:22:59,500000+01:00 INFO: task qemu:77 blocked for more than 122 seconds.\n"
    (r,) = parse_dmesg(text)
    want = datetime(2026, 11, 25, 9, 22, 59, tzinfo=timezone.utc) + timedelta(milliseconds=500)
    assert r.wall_ns == int(want.timestamp() * 1e6) * 1000
    assert r.stuck_ns == 122 * 10**9


def test_raw_level_prefix_caller_id_and_journal_prefix():
    text = ("<4>[  812.000123] watchdog: BUG: soft lockup - CPU#5 stuck for 22s! [qemu:1]\n"
            "[  900.000000][  T123] INFO: task qemu:2 blocked for more than 120 seconds.\n"
            "[  901.000000] host1 kernel: rcu: INFO: rcu_sched self-detected stall on CPU\n")
    rs = parse_dmesg(text)
    assert [r.kind for r in rs] == [SOFT_LOCKUP, HUNG_TASK, RCU_STALL]
    assert [r.uptime_ns for r in rs] == [812_000123000, 900 * 10**9, 901 * 10**9]


def test_dump_stack_66_format_with_uid():
    text = ("[ 10.000000] watchdog: BUG: soft lockup - CPU#2 stuck for 26s! [qemu:10]\n"
            "[ 10.000001] CPU: 2 UID: 0 PID: 10 Comm: qemu Not tainted 6.12.5+deb12-amd64 #1\n"
            "[ 10.000002] RIP: 0010:tdp_mmu_zap_leafs+0x1a/0x1e0 [kvm]\n")
    (r,) = parse_dmesg(text)
    assert r.symbols == ["tdp_mmu_zap_leafs"]


def test_reports_do_not_swallow_the_next_report():
    rs = parse_dmesg(SELF_STALL_61 + SOFT_LOCKUP_LINE)
    assert [r.kind for r in rs] == [RCU_STALL, SOFT_LOCKUP]
    assert rs[1].line_no == SELF_STALL_61.count("\n") + 1


def test_ordinary_log_has_no_reports():
    assert parse_dmesg("[    0.000000] Linux version 6.1.0-56-amd64\n[    1.0] kvm: Nested Paging enabled\n") == []
    assert parse_dmesg("") == []


def test_binary_input_is_refused():
    with pytest.raises(BadInput):
        parse_dmesg("\x00\x01\x02" * 10)


@pytest.mark.parametrize("bad", ["CET", "+1", "01:00", ""])
def test_bad_utc_offset(bad):
    with pytest.raises(BadInput):
        parse_utc_offset(bad)
