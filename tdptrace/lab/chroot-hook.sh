#!/bin/sh
# Lab hook (see init.sh): runs the command in /share/chroot_cmd inside /rootfs, a chroot shared from the
# host (tdptrace/lab/rootfs.py: bookworm with BCC, the guest kernel's headers and tdptrace in /opt/tdptrace),
# alongside the workload. SIGINT from init.sh (workload done) is passed on to the command.
R=/rootfs
echo "chroot: $(cat /share/chroot_cmd)"
chroot "$R" /bin/sh -c "export PATH=/opt/tdptrace/bin:/usr/sbin:/usr/bin:/sbin:/bin; $(cat /share/chroot_cmd)" &
child=$!
trap 'kill -INT $child 2>/dev/null' INT TERM
wait $child
rc=$?
# A trapped signal ends the first wait early; wait again for the command to finish.
kill -0 $child 2>/dev/null && { wait $child; rc=$?; }
echo "chroot command exit $rc"
exit $rc
