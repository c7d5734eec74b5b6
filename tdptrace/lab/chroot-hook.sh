#!/bin/sh
# Lab hook (see init.sh): runs the command in /share/chroot_cmd inside /rootfs, a chroot shared from the
# host (tdptrace/lab/rootfs.py: bookworm with BCC, the guest kernel's headers and tdptrace in /opt/tdptrace),
# alongside the workload. SIGINT from init.sh (workload done) is passed on to the command.
R=/rootfs
for d in proc sys dev share; do mkdir -p "$R/$d"; done
mount -t proc proc "$R/proc"
mount -o rbind /sys "$R/sys"
mount -o bind /dev "$R/dev"
mount -o bind /share "$R/share"
mount -t tracefs tracefs "$R/sys/kernel/tracing" 2>/dev/null
mount -t debugfs debugfs "$R/sys/kernel/debug" 2>/dev/null
echo "chroot: $(cat /share/chroot_cmd)"
chroot "$R" /bin/sh -c "export PATH=/opt/tdptrace/bin:/usr/sbin:/usr/bin:/sbin:/bin; $(cat /share/chroot_cmd)" &
child=$!
trap 'kill -INT $child 2>/dev/null' INT TERM
wait $child
rc=$?
# A trapped signal ends the first wait early; wait again for the command to finish.
kill -0 $child 2>/dev/null && { wait $child; rc=$?; }
echo "chroot command exit $rc"
umount "$R/share" "$R/dev" "$R/proc" 2>/dev/null
umount -l "$R/sys" 2>/dev/null
exit $rc
