#!/bin/sh
# Lab hook of tests/lab/test_lab_two_vms.py (runs in the guest's initramfs before the lab's own workload):
# two VMMs (kvmtouch A, 16 MiB, and B, 24 MiB) run at once while `tdptrace record -p A` (the wheel installed
# in the rootfs) records; the command record runs clears both VMMs' soft-dirty bits over and over
# (/proc/PID/clear_refs: their page-table entries are write-protected through the mmu notifier, and KVM zaps
# the SPTEs of every page mapped at that moment), so both VMs are zapped by that task, not by either VMM.
O=/share/out/twovms
R=/rootfs
mkdir -p $O

# Each VMM waits for the recorder (its pid is known before it starts: exec keeps it).
sh -c "until [ -e $O/go ]; do sleep 0.2; done; exec /kvmtouch 16 0 1 0 0" > $O/a.txt 2>&1 &
A=$!
sh -c "until [ -e $O/go ]; do sleep 0.2; done; exec /kvmtouch 24 0 1 0 0" > $O/b.txt 2>&1 &
B=$!
echo "$A $B" > $O/pids
# What record runs: start both VMMs, then clear their soft-dirty bits until both have ended (exited, or
# zombies that this hook reaps afterwards).
cat > $O/compact.sh <<EOF
#!/bin/sh
# Shell builtins only in the loop: a fork and exec from the 9p rootfs takes a second under TCG, longer than
# a VMM lives here.
alive() {
  [ -r /proc/\$1/status ] || return 1
  while read -r k v rest; do
    [ "\$k" = "State:" ] && { [ "\$v" != Z ]; return; }
  done < /proc/\$1/status
  return 1
}
echo \$\$ > /share/out/twovms/compactor
touch /share/out/twovms/go
n=0
while alive $A || alive $B; do
  for p in $A $B; do
    alive \$p && echo 4 2>/dev/null > /proc/\$p/clear_refs
  done
  n=\$((n + 1))
done
echo \$n > /share/out/twovms/rounds
EOF
chmod +x $O/compact.sh
chroot $R /bin/sh -c "export PATH=/opt/tdptrace/bin:/usr/sbin:/usr/bin:/sbin:/bin; exec tdptrace record -q --backend bcc -p $A -o /share/out/twovms/a.tdp -- /share/out/twovms/compact.sh" > $O/record.log 2>&1
echo $? > $O/record_status
wait
cat /proc/uptime > /share/out/hook_ready
