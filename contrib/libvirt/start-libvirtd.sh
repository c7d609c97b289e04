#!/bin/sh
# A real libvirtd (QEMU driver, aarch64 guests under TCG) on this Debian 12
# x86_64 machine, for the tests that talk to libvirt (tests/libvirtd.py).
# Needs root; works without systemd.  Safe to run again: it only does what
# is missing, and takes a fraction of a second when the daemon already
# answers.  Prints one line.
#
# What it does:
#   * installs the missing ones of libvirt-daemon, libvirt-daemon-driver-qemu,
#     libvirt-clients, qemu-system-arm and tini (apt-get update only when apt
#     does not know them or the install fails with the lists it has);
#   * creates the libvirt-qemu user and the kvm, libvirt and libvirt-qemu
#     groups (libvirtd looks its built-in default user up before it reads
#     qemu.conf, so the user must exist even though QEMU runs as root);
#   * makes QEMU run as root (qemu.conf: user/group "root", no ownership
#     changes), so domains may use files anywhere;
#   * creates /etc/libvirt/hooks/qemu.d and the log and state directories;
#   * starts virtlogd and libvirtd (each only if not running), with a clean
#     environment, so hooks get PATH=/usr/sbin:/usr/bin:/sbin:/bin.  libvirtd
#     runs in the foreground under `tini -s` (a child subreaper), which reaps
#     the QEMU processes libvirt daemonizes: PID 1 of these machines reaps
#     orphans only every 1-2 s, and libvirt waits for the QEMU process to be
#     gone, so every destroy took 1.2-2 s instead of 0.2 s.  Its messages go
#     to /var/log/libvirt/libvirtd.log;
#   * waits until `virsh -c qemu:///system list` answers.
#
# Env: LIBVIRTD_START_TIMEOUT  seconds to wait for the daemon (default 60)
set -eu

URI=qemu:///system
PACKAGES="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-arm tini"
WAIT=${LIBVIRTD_START_TIMEOUT:-60}
QEMU_CONF=/etc/libvirt/qemu.conf
DAEMON_ENV="env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C"

say() { printf 'start-libvirtd: %s\n' "$*" >&2; }
die() { printf 'start-libvirtd: error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
T0=$(now)

[ "$(id -u)" = 0 ] || die "run as root (it installs Debian packages and starts libvirtd)"
# one at a time (two would start two daemons, and the second one would fail)
exec 9>/run/libvirt-arm-cpu-start-libvirtd.lock
flock -w 300 9 || die "another start-libvirtd.sh holds /run/libvirt-arm-cpu-start-libvirtd.lock"

# ------------------------------------------------------------------ packages
# shellcheck disable=SC2086
sh "$(dirname "$0")/../apt-install-missing.sh" start-libvirtd $PACKAGES || exit 1

# ------------------------------------------------------------------ users, directories
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null \
    || useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt >/dev/null || groupadd -r libvirt
mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/cache/libvirt /run/libvirt \
         /etc/libvirt/hooks/qemu.d

# qemu.conf: QEMU as root, no relabelling or ownership changes of its files.
conf_changed=0
for setting in 'user = "root"' 'group = "root"' 'dynamic_ownership = 0' 'remember_owner = 0'; do
    key=${setting%% *}
    if ! grep -qx "$setting" "$QEMU_CONF" 2>/dev/null; then
        if [ -f "$QEMU_CONF" ] && grep -q "^$key *=" "$QEMU_CONF"; then
            sed -i "s|^$key *=.*|$setting|" "$QEMU_CONF"
        else
            printf '%s\n' "$setting" >>"$QEMU_CONF"
        fi
        conf_changed=1
    fi
done

# ------------------------------------------------------------------ daemons
# running NAME: the daemon's pid (from its pid file, checked in /proc), or fail.
running() {
    pid=$(cat "/run/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
    echo "$pid"
}
answers() { timeout 10 virsh -c "$URI" list >/dev/null 2>&1; }
alive() { [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) [ZX] ' "/proc/$1/stat"; }   # not a zombie

if pid=$(running libvirtd) && [ "$conf_changed" = 1 ]; then
    say "restarting libvirtd ($pid): $QEMU_CONF changed"
    kill "$pid"
    i=0
    while [ -d "/proc/$pid" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    [ ! -d "/proc/$pid" ] || die "libvirtd ($pid) did not stop within 30 s"
fi

# (9>&-: the daemons must not inherit the lock)
running virtlogd >/dev/null || $DAEMON_ENV /usr/sbin/virtlogd --daemon 9>&- \
    || die "virtlogd did not start"
started=""
launcher=""
if ! running libvirtd >/dev/null; then
    # shellcheck disable=SC2086
    setsid $DAEMON_ENV /usr/bin/tini -s -- /usr/sbin/libvirtd \
        </dev/null >>/var/log/libvirt/libvirtd.log 2>&1 9>&- &
    launcher=$!
    started=" (started)"
fi

deadline=$(awk -v t="$(now)" -v w="$WAIT" 'BEGIN { printf "%d", t + w }')
until answers; do
    if [ -n "$launcher" ] && ! alive "$launcher"; then
        tail -n 5 /var/log/libvirt/libvirtd.log 2>/dev/null | sed 's/^/  /' >&2
        die "libvirtd exited at start (see /var/log/libvirt/libvirtd.log)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        tail -n 5 /var/log/libvirt/libvirtd.log 2>/dev/null | sed 's/^/  /' >&2
        die "libvirtd does not answer on $URI after $WAIT s"
    fi
    sleep 0.1
done

pid=$(running libvirtd) || die "libvirtd answers, but /run/libvirtd.pid names no libvirtd"
version=$(/usr/sbin/libvirtd --version | awk '{ print $NF }')
qemu=$(qemu-system-aarch64 --version | awk 'NR == 1 { print $4 }')
printf 'libvirtd: libvirt %s, pid %s%s, QEMU %s (qemu-system-aarch64), answers on %s; ready in %s s\n' \
    "$version" "$pid" "$started" "$qemu" "$URI" \
    "$(awk -v a="$T0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')"
