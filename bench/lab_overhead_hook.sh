#!/bin/sh
# Lab hook of bench/lab_overhead_bench.py (runs in the guest's initramfs, before the lab's own workload):
# the same zap workload (kvmtouch: madvise of a populated region, root teardown by memslot deletion), timed
# by itself, without tdptrace and under each recording configuration, in this one boot. The recorder is the
# wheel installed in the BCC rootfs. Settings replaced by the bench: @MIB@ @REPS@ @CONFIGS@.
O=/share/out/bench
R=/rootfs
mkdir -p $O

workload() {  # $1: configuration name; REPS runs of the workload, each timing its own phases
  i=1
  while [ $i -le @REPS@ ]; do
    /kvmtouch @MIB@ 0 1 0 0 > $O/$1.run$i.txt 2>&1 || echo "$1 run $i: kvmtouch failed" >> $O/errors.txt
    i=$((i + 1))
  done
}

recorder_start() {  # $1: configuration name, then record options; returns once the probes are attached
  name=$1
  shift
  rm -f $O/ready $O/done
  # The command record runs reports the recorder's own memory ($PPID is the recorder) once attached.
  wait_cmd="cat /proc/\$PPID/status > /share/out/bench/$name.status; cat /proc/uptime > /share/out/bench/ready; until [ -e /share/out/bench/done ]; do sleep 0.2; done"
  cat /proc/uptime > $O/$name.started
  chroot $R /bin/sh -c "export PATH=/opt/tdptrace/bin:/usr/sbin:/usr/bin:/sbin:/bin; exec tdptrace record -q --backend bcc -o /share/out/bench/$name.tdp $* -- sh -c '$wait_cmd'" > $O/$name.log 2>&1 &
  RPID=$!
  while [ ! -e $O/ready ]; do
    kill -0 $RPID 2>/dev/null || { echo "$name: recorder ended before attaching" >> $O/errors.txt; return 1; }
    sleep 1
  done
  cp $O/ready $O/$name.ready
}

recorder_stop() {
  touch $O/done
  wait $RPID
  echo "$1 $?" >> $O/exit_status.txt
}

for c in @CONFIGS@; do
  case $c in
    none*) workload $c ;;
    tracepoints) recorder_start $c --no-spans && { workload $c; recorder_stop $c; } ;;
    kprobes) recorder_start $c && { workload $c; recorder_stop $c; } ;;
    sptes) recorder_start $c --sptes && { workload $c; recorder_stop $c; } ;;
  esac
done
echo ok > $O/finished
cat /proc/uptime > /share/out/hook_ready
