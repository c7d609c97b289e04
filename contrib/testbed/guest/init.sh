# Guest side of run-in-guest (busybox sh, PID 1, started by the base /init).
# Runs the job, then sends its stdout, stderr, exit code and the files it left
# in /out back over the serial console: each stream is base64 between marker
# lines that carry a per-run token, its size and its SHA-256, so the host can
# tell a complete, intact result from a mangled one.  Then powers off.
# In the libvirt image (TESTBED_IMAGE=libvirt) it first starts virtlogd and
# libvirtd and waits until libvirtd answers.
set -u
. /testbed/env        # TESTBED_TOKEN, TESTBED_IMAGE, TESTBED_KERNEL, TESTBED_QEMU, TESTBED_CPU, TESTBED_APPEND
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb
export PYTHONPATH=/opt/project:/opt/site-packages
export TESTBED_IMAGE TESTBED_KERNEL TESTBED_QEMU TESTBED_CPU TESTBED_APPEND
M="TESTBED $TESTBED_TOKEN"
uptime_s() { cut -d' ' -f1 /proc/uptime; }
LIBVIRTD_WAIT=120     # seconds of guest uptime libvirtd gets to answer

# Start virtlogd and libvirtd as their init scripts would (nothing of Debian's
# start-up runs here), then wait until `virsh list` answers (1-2 s under TCG;
# libvirtd probes QEMU's capabilities later, at the first call needing them).
start_libvirtd() {
    mkdir -p /sys/fs/cgroup /run/libvirt /var/log/libvirt/qemu
    mount -t cgroup2 cgroup2 /sys/fs/cgroup
    hostname testbed
    /usr/sbin/virtlogd --daemon || { echo "virtlogd did not start"; return 1; }
    LIBVIRT_LOG_OUTPUTS="3:file:/var/log/libvirt/libvirtd.log" /usr/sbin/libvirtd --daemon \
        || { echo "libvirtd --daemon failed"; return 1; }
    limit=$(( $(cut -d. -f1 /proc/uptime) + LIBVIRTD_WAIT ))
    until timeout 30 virsh -c qemu:///system list >/dev/null 2>/tmp/testbed.virsh; do
        if [ "$(cut -d. -f1 /proc/uptime)" -ge "$limit" ]; then
            echo "no answer on qemu:///system within $LIBVIRTD_WAIT s $(tail -n 1 /tmp/testbed.virsh)"
            return 1
        fi
        sleep 0.2
    done
}

echo "$M start $(uptime_s) $(uname -r)"
mkdir -p /out /root
cd /root
if [ "${TESTBED_IMAGE:-kvm}" = libvirt ]; then
    echo "$M libvirtd-start $(uptime_s)"
    # (to a file, not through $(...): that would wait for the daemons' output)
    if start_libvirtd >/tmp/testbed.libvirtd-start 2>&1; then
        echo "$M libvirtd-ready $(uptime_s)"
    else
        echo "$M libvirtd-failed $(uptime_s) $(tail -n 1 /tmp/testbed.libvirtd-start)"
        sed 's/^/libvirtd start: /' /tmp/testbed.libvirtd-start
        tail -n 20 /var/log/libvirt/libvirtd.log 2>/dev/null | sed 's/^/libvirtd.log: /'
        poweroff -f
        exit 1
    fi
fi
if [ -f /testbed/job.sh ]; then
    sh /testbed/job.sh </dev/null >/tmp/testbed.stdout 2>/tmp/testbed.stderr
    rc=$?
else
    {
        echo "kernel: $(uname -r)"
        echo "kvm: $(ls -l /dev/kvm 2>&1)"
        echo "python: $(python3 -V 2>&1)"
        if [ "$TESTBED_IMAGE" = libvirt ]; then
            echo "libvirt: $(libvirtd --version), $(qemu-system-aarch64 --version | head -n 1)"
        fi
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
