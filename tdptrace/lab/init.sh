#!/bin/sh
# /init of the lab's initramfs (busybox). Loads kvm/kvm_amd and 9p, mounts the host's share at /share,
# then does what /share/params asks (MODE=discover: dump the symbols the probes are resolved from;
# MODE=run: set up tracefs and kprobes, run kvmtouch, check for lost events, dump the trace), and powers off.
# Every result lands in /share/out; /share/out/status says "ok" or "error: <what>". Keep in sync with qemu.py.
export PATH=/bin:/sbin
T=/sys/kernel/tracing
O=/share/out

log() { echo "tdplab: $*"; }
fail() {
  log "error: $*"
  [ -d "$O" ] && echo "error: $*" > "$O/status"
  dmesg > "$O/dmesg.txt" 2>/dev/null
  cat $T/error_log > "$O/tracing_error_log.txt" 2>/dev/null
  sync
  poweroff -f
  sleep 5
  echo o > /proc/sysrq-trigger
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs $T 2>/dev/null || mount -t debugfs debugfs /sys/kernel/debug
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
[ -e $T/trace ] || T=/sys/kernel/debug/tracing

# Modules, in dependency order, with parameters (written by initramfs.py).
while read -r mod args; do
  [ -n "$mod" ] || continue
  # shellcheck disable=SC2086
  insmod "/lib/modules/$mod" $args || { log "error: insmod $mod $args failed"; }
done < /lib/modules/load.list

mkdir -p /share
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 tdpshare /share || {
  log "error: cannot mount the 9p share tdpshare (9p/virtio modules missing?)"; poweroff -f; }
mkdir -p $O
. /share/params
if [ "${ROOTFS:-0}" = 1 ]; then
  # A directory of the host (e.g. a chroot with BCC and tdptrace) for the hook to use.
  mkdir -p /rootfs
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 tdproot /rootfs || fail "cannot mount tdproot"
  # What a command chrooted there needs (every hook that uses the rootfs relies on these being in place).
  for d in proc sys dev share; do mkdir -p "/rootfs/$d"; done
  mount -t proc proc /rootfs/proc
  mount -o rbind /sys /rootfs/sys
  mount -o bind /dev /rootfs/dev
  mount -o bind /share /rootfs/share
  mount -t tracefs tracefs /rootfs/sys/kernel/tracing 2>/dev/null
  mount -t debugfs debugfs /rootfs/sys/kernel/debug 2>/dev/null
fi

uname -a > $O/uname.txt
uname -r > $O/release.txt
for p in /sys/module/kvm/parameters/tdp_mmu /sys/module/kvm_amd/parameters/npt; do
  [ -e "$p" ] && echo "$p=$(cat $p)" >> $O/kvm_params.txt
done
[ -e /dev/kvm ] || fail "no /dev/kvm: kvm_amd did not load (see dmesg.txt)"
[ -e $T/kprobe_events ] || fail "no kprobe_events in tracefs"

if [ "$MODE" = discover ]; then
  # What the probes are resolved from on the host (probes.py): the kvm module's text symbols, the yield
  # points, what ftrace can attach to, and which kvmmmu tracepoints exist.
  grep -E ' [tT] ' /proc/kallsyms | grep -E '\[kvm\]|cond_resched' > $O/kallsyms.txt
  grep -E '\[kvm\]|cond_resched' $T/available_filter_functions > $O/filter_functions.txt
  ls $T/events/kvmmmu > $O/kvmmmu_events.txt
  dmesg > $O/dmesg.txt
  echo ok > $O/status
  sync
  poweroff -f
fi

# MODE=run
echo 0 > $T/tracing_on
echo > $T/trace
echo "$BUF_KB" > $T/buffer_size_kb || fail "cannot set buffer_size_kb=$BUF_KB"
echo > $T/kprobe_events
n=0
while read -r line; do
  [ -n "$line" ] || continue
  echo "$line" >> $T/kprobe_events || fail "kprobe rejected by the kernel: $line"
  n=$((n + 1))
done < /share/kprobe_events
cat $T/kprobe_events > $O/kprobe_events_readback.txt
[ -d $T/events/tdp ] && echo 1 > $T/events/tdp/enable
for ev in $EVENTS; do
  if [ -e $T/events/kvmmmu/$ev/enable ]; then
    echo 1 > $T/events/kvmmmu/$ev/enable
  else
    fail "tracepoint kvmmmu/$ev missing"
  fi
done
if [ "${LOCK_EVENTS:-0}" = 1 ] && [ -d $T/events/lock/contention_begin ]; then
  # Who waits for a lock (5.19+): spinning rwlock waits only (mmu_lock). Pointers stay hashed: with hash-ptr
  # off, Debian 6.1 printed kvm_mmu_get_page without its fields or line end (lines lost to the dump).
  echo "$LOCK_FILTER" > $T/events/lock/contention_begin/filter || fail "cannot filter lock/contention_begin"
  echo 1 > $T/events/lock/contention_begin/enable
  echo 1 > $T/events/lock/contention_end/enable
  EVENTS="$EVENTS lock/contention_begin lock/contention_end"
fi
echo "kprobes=$n events=$EVENTS" > $O/tracing_setup.txt

if [ -x /share/hook.sh ]; then
  # A caller-supplied command that runs alongside the workload (e.g. a BCC recorder in a chroot);
  # it gets HOOK_PHASE=start now and is sent SIGINT once the workload is done.
  HOOK_PHASE=start /share/hook.sh > $O/hook.log 2>&1 &
  HOOK_PID=$!
  if [ "${HOOK_READY:-0}" = 1 ]; then
    # The hook (a recorder) creates $O/hook_ready once it has attached; HOOK_SETTLE bounds the wait.
    w=0
    while [ ! -e $O/hook_ready ]; do
      kill -0 "$HOOK_PID" 2>/dev/null || fail "the hook ended before it was ready (see hook.log)"
      [ "$w" -ge "${HOOK_SETTLE%.*}" ] && fail "the hook was not ready after ${HOOK_SETTLE} s (see hook.log)"
      sleep 1
      w=$((w + 1))
    done
  else
    sleep "${HOOK_SETTLE:-0}"
  fi
fi

echo 1 > $T/tracing_on
date +%s.%N > $O/t_start.txt 2>/dev/null
/kvmtouch "$MIB" "$THP" "$ITERS" "$HOG" "${BASE:-0}" "${CONTEND:-0}" > $O/kvmtouch.txt 2>&1
rc=$?
echo 0 > $T/tracing_on
cat $O/kvmtouch.txt
touch $O/workload_done
if [ -n "${HOOK_PID:-}" ]; then
  kill -INT "$HOOK_PID" 2>/dev/null
  wait "$HOOK_PID"
  echo "hook exit $?" >> $O/hook.log
fi
[ "$rc" = 0 ] || fail "kvmtouch exited with $rc"

for c in $T/per_cpu/cpu*; do echo "== ${c##*/}"; cat "$c/stats"; done > $O/stats_before.txt
echo 0 > $T/events/enable
up() { cut -d' ' -f1 /proc/uptime; }
t0=$(up)
# Format into guest RAM first, then copy in large blocks: small writes over 9p cost a round trip each.
cat $T/trace > /tmp/trace.txt || fail "cannot dump the trace"
t1=$(up)
dd if=/tmp/trace.txt of=$O/trace.txt bs=1M 2>/dev/null || fail "cannot copy the trace to the share"
rm -f /tmp/trace.txt
log "trace formatted: uptime $t0 -> $t1"
log "trace dumped: uptime $t0 -> $(up)"
for c in $T/per_cpu/cpu*; do echo "== ${c##*/}"; cat "$c/stats"; done > $O/stats_after.txt
dmesg > $O/dmesg.txt
echo ok > $O/status
sync
log "done"
poweroff -f
