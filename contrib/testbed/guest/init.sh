# Guest side of run-in-guest (busybox sh, PID 1, started by the base /init).
# Runs the job, then sends its stdout, stderr, exit code and the files it left
# in /out back over the serial console: each stream is base64 between marker
# lines that carry a per-run token, its size and its SHA-256, so the host can
# tell a complete, intact result from a mangled one.  Then powers off.
set -u
. /testbed/env        # TESTBED_TOKEN, TESTBED_KERNEL, TESTBED_QEMU, TESTBED_CPU, TESTBED_APPEND
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb
export PYTHONPATH=/opt/project:/opt/site-packages
export TESTBED_KERNEL TESTBED_QEMU TESTBED_CPU TESTBED_APPEND
M="TESTBED $TESTBED_TOKEN"
uptime_s() { cut -d' ' -f1 /proc/uptime; }

echo "$M start $(uptime_s) $(uname -r)"
mkdir -p /out /root
cd /root
if [ -f /testbed/job.sh ]; then
    sh /testbed/job.sh </dev/null >/tmp/testbed.stdout 2>/tmp/testbed.stderr
    rc=$?
else
    {
        echo "kernel: $(uname -r)"
        echo "kvm: $(ls -l /dev/kvm 2>&1)"
        echo "python: $(python3 -V 2>&1)"
        grep -E '^(CPU implementer|CPU variant|CPU part|CPU revision)' /proc/cpuinfo | head -4
        dmesg | grep -E 'started at EL|kvm \[[0-9]+\]: .*(mode|initiali)'
    } >/tmp/testbed.stdout 2>/tmp/testbed.stderr
    rc=0
fi
echo "$M job-end $(uptime_s)"

# Keep kernel messages off the console while the result goes out.
echo 1 >/proc/sys/kernel/printk
emit() {  # NAME FILE
    echo "$M begin $1 $(wc -c <"$2") $(sha256sum <"$2" | cut -d' ' -f1)"
    base64 <"$2"
    echo "$M end $1"
}
emit stdout /tmp/testbed.stdout
emit stderr /tmp/testbed.stderr
if [ -n "$(ls -A /out)" ]; then
    if tar -C /out -cf /tmp/testbed.out.tar .; then
        emit files /tmp/testbed.out.tar
    else
        echo "$M files-error tar of /out failed"
    fi
fi
echo "$M rc $rc"
echo "$M done $(uptime_s)"
poweroff -f
