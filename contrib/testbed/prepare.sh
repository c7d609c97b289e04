#!/bin/bash
# Prepare the arm64 KVM test bed (see README.md next to this file): host
# packages, arm64 kernels, QEMU 10.0, the base guest root (image "kvm") and
# the libvirt guest root (image "libvirt": trixie's libvirt 11.3 and QEMU
# 10.0 inside the guest), all in a cache.  Safe to re-run; when everything is
# cached it only checks (about a second).
#
# Usage: contrib/testbed/prepare.sh [--refresh]
#   --refresh   resolve the package versions through apt again; without it the
#               versions pinned in the cache by the first run are re-used.
# Env:
#   LIBVIRT_ARM_CPU_TESTBED_CACHE   cache directory
#                                   (default /var/cache/libvirt-arm-cpu/testbed)
#
# Nothing of the host's apt or dpkg state changes except installing missing
# host packages (qemu-system-arm, cpio, python3): arm64 and backports .debs
# come through private apt roots in the cache, using the mirror of the host's
# own /etc/apt configuration.
set -eu -o pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${LIBVIRT_ARM_CPU_TESTBED_CACHE:-/var/cache/libvirt-arm-cpu/testbed}

# Kernel generations: NAME:SUITE (the suite whose linux-image-cloud-arm64 is it).
KERNELS="6.12:trixie 7.3:trixie-backports 6.1:bookworm"
ARM64_SUITES="trixie trixie-updates trixie-backports bookworm-backports bookworm"
# QEMU 10.0 (amd64, run from a folder, not installed) and where it comes from.
QEMU10_SERIES=10.0
QEMU10_SUITE=bookworm-backports
QEMU10_PACKAGES="qemu-system-arm qemu-system-common qemu-system-data"
# amd64 suites: QEMU 10.0, and trixie's python3.X-minimal, run from a folder
# through its own loader, to byte-compile the guest's Python code on the host
# (byte-code does not depend on the machine; compiling under TCG takes seconds
# per import).
AMD64_SUITES="$QEMU10_SUITE trixie trixie-updates"
# gcc-aarch64-linux-gnu, binutils and libc6-dev-arm64-cross (headers, libdl; only
# a Recommends of the compiler): the loader (loader/*.c) and the EL1 payload
# (contrib/testbed/make-idregs-payload.py) are cross-built for the guest.
HOST_PACKAGES="qemu-system-arm cpio python3 gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross"
# Bump when build_base changes what goes into the base guest root: the base is
# rebuilt when this, guest/base-init or the guest packages change (the driver
# refuses a stale base).
BASE_FORMAT=1
HOST_QEMU_SERIES=7.2
# The libvirt image: these arm64 packages of trixie with their dependency
# closure (trixie-updates' versions where newer), unpacked into a guest root
# whose /init is guest/base-init too (libc-bin: the C.UTF-8 locale virsh wants).  The series are checked: a new libvirt
# or QEMU in trixie stops prepare.sh instead of silently changing the tests.
LIBVIRT_PACKAGES="libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-log libvirt-clients libc-bin
                  qemu-system-arm python3 python3-libvirt busybox-static"
LIBVIRT_SERIES=11.3
LIBVIRT_QEMU_SERIES=10.0
# Bump when build_libvirt_image changes what goes into the libvirt guest root
# (it is rebuilt when this, guest/base-init or the libvirt packages change).
LIBVIRT_FORMAT=1
# QEMU 7.2 for arm64, to run inside the guest (run_in_guest(inner_qemu=("7.2",)),
# --with qemu-7.2): bookworm's qemu-system-arm with its dependency closure from
# bookworm, as an extra archive (qemu-7.2-arm64.cpio.gz) appended only when a run
# asks for it.  Bump QEMU72_FORMAT when build_qemu72_image changes what goes in.
QEMU72_SERIES=7.2
QEMU72_SUITE=bookworm
QEMU72_FORMAT=1

say() { printf 'prepare: %s\n' "$*" >&2; }
die() { printf 'prepare: error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

REFRESH=0
for arg in "$@"; do
    case $arg in
        --refresh) REFRESH=1 ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) printf 'prepare: error: unknown argument %s (see --help)\n' "$arg" >&2; exit 2 ;;
    esac
done

T0=$(now)
[ "$(id -u)" = 0 ] || die "run as root (it installs Debian packages and writes $CACHE)"
mkdir -p "$CACHE"
exec 9>"$CACHE/.prepare.lock"
flock -w 900 9 || die "another prepare.sh holds $CACHE/.prepare.lock"

# ---------------------------------------------------------------- host packages
# shellcheck disable=SC2086
sh "$HERE/../apt-install-missing.sh" prepare $HOST_PACKAGES || exit 1
host_qemu_version=$(qemu-system-aarch64 --version 2>/dev/null | head -1) \
    || die "qemu-system-aarch64 (Debian's qemu-system-arm) does not run"
case $host_qemu_version in
    *"version $HOST_QEMU_SERIES".*) ;;
    *) die "the host's qemu-system-aarch64 is '$host_qemu_version', expected $HOST_QEMU_SERIES (Debian 12's qemu-system-arm)" ;;
esac

# ---------------------------------------------------------------- private apt roots
mirror_uri() {
    local uri=""
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ {
                     for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { print $i; exit } }' \
                  /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || die "no Debian mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
    echo "$uri"
}

# apt_root DIR ARCH SUITES...: a throw-away apt root with its own (empty) dpkg
# status, so apt resolves complete dependency closures without touching the
# host.  Sets APT_OPTS.
apt_root() {
    local dir=$1 arch=$2
    shift 2
    mkdir -p "$dir/etc/apt/sources.list.d" "$dir/etc/apt/preferences.d" \
             "$dir/etc/apt/apt.conf.d" "$dir/var/lib/apt/lists/partial" \
             "$dir/var/cache/apt/archives/partial" "$dir/var/lib/dpkg"
    [ -f "$dir/var/lib/dpkg/status" ] || : >"$dir/var/lib/dpkg/status"
    cat >"$dir/etc/apt/sources.list.d/testbed.sources" <<EOF
Types: deb
URIs: $(mirror_uri)
Suites: $*
Components: main
Architectures: $arch
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    APT_OPTS=(-o "Dir=$dir" -o "Dir::State::status=$dir/var/lib/dpkg/status"
              -o "APT::Architecture=$arch" -o "APT::Architectures::=$arch"
              -o "Dir::Etc::trusted=/etc/apt/trusted.gpg"
              -o "Dir::Etc::trustedparts=/etc/apt/trusted.gpg.d"
              -o "Acquire::Languages=none" -o "APT::Install-Recommends=false"
              -o "APT::Sandbox::User=root"
              -o "Dir::Cache::pkgcache=pkgcache.bin" -o "Dir::Cache::srcpkgcache=srcpkgcache.bin")
}

# need_root ARCH SUITES... sets up and updates the private apt root of ARCH
# once per run (call it outside $(...)); root_apt ARCH TOOL ARGS... then runs
# apt-get or apt-cache in it (its options are in ARM64_OPTS / AMD64_OPTS).
READY_ROOTS=" "
need_root() {
    local arch=$1
    shift
    case $READY_ROOTS in *" $arch "*) return 0 ;; esac
    apt_root "$CACHE/apt-$arch" "$arch" "$@"
    local -n root_opts="${arch^^}_OPTS"
    root_opts=("${APT_OPTS[@]}")
    say "updating the private $arch apt root ($*)"
    apt-get "${root_opts[@]}" update -qq || die "apt-get update of $CACHE/apt-$arch failed"
    READY_ROOTS="$READY_ROOTS$arch "
}
root_apt() {
    local -n root_opts="${1^^}_OPTS"
    local tool=$2
    shift 2
    "$tool" "${root_opts[@]}" "$@"
}
# shellcheck disable=SC2086
need_arm64() { need_root arm64 $ARM64_SUITES; }
# shellcheck disable=SC2086
need_amd64() { need_root amd64 $AMD64_SUITES; }
arm64_apt() { root_apt arm64 "$@"; }
amd64_apt() { root_apt amd64 "$@"; }

# Download PKG=VERSION... into DIR (quietly, but with apt's errors).
download_into() {
    local dir=$1 which=$2
    shift 2
    mkdir -p "$dir"
    (cd "$dir" && "$which" apt-get download -qq "$@") \
        || die "could not download $* (the mirror may have dropped a pinned version: try --refresh)"
}

is_arm64_image() { [ "$(dd if="$1" bs=1 skip=56 count=4 2>/dev/null)" = ARMd ]; }

# ---------------------------------------------------------------- kernels
# kernels/GEN/Image + kernels/GEN/pin ("PACKAGE VERSION PATH-IN-DEB RELEASE")
prepare_kernel() {
    local gen=$1 suite=$2 dir=$CACHE/kernels/$1
    local pkg ver path release tmp
    if [ "$REFRESH" = 0 ] && [ -s "$dir/pin" ] && [ -s "$dir/Image" ]; then
        return 0
    fi
    if [ "$REFRESH" = 0 ] && [ -s "$dir/pin" ]; then
        read -r pkg ver path release <"$dir/pin"
        need_arm64
    else
        need_arm64
        release=$(arm64_apt apt-cache -o "APT::Default-Release=$suite" depends linux-image-cloud-arm64 \
                  | sed -n 's/^ *Depends: linux-image-\([^ ]*-cloud-arm64\)$/\1/p' | head -1)
        [ -n "$release" ] || die "no linux-image-cloud-arm64 for arm64 in $suite"
        case $release in
            "$gen".*|"$gen"-*) ;;
            *) die "$suite's linux-image-cloud-arm64 is now Linux $release, not $gen: update KERNELS in $0" ;;
        esac
        # From 7.x the image is in linux-binary-unsigned-*, before in linux-image-*-unsigned.
        if arm64_apt apt-cache show "linux-binary-unsigned-$release" >/dev/null 2>&1; then
            pkg=linux-binary-unsigned-$release
            path=usr/lib/modules/$release/vmlinuz.unsigned
        else
            pkg=linux-image-$release-unsigned
            path=boot/vmlinuz-$release
        fi
        ver=$(arm64_apt apt-cache -o "APT::Default-Release=$suite" policy "$pkg" \
              | awk '/Candidate:/ { print $2 }')
        [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "no version of $pkg in $suite"
        if [ -s "$dir/Image" ] && [ "$(cat "$dir/pin" 2>/dev/null)" = "$pkg $ver $path $release" ]; then
            return 0
        fi
    fi
    say "kernel $gen: downloading $pkg $ver"
    tmp=$(mktemp -d "$CACHE/.kernel.XXXXXX")
    download_into "$tmp" arm64_apt "$pkg=$ver"
    dpkg-deb --fsys-tarfile "$tmp"/*.deb | tar -xO "./$path" >"$tmp/Image.raw" \
        || die "$pkg $ver has no $path"
    if [ "$(od -An -tx1 -N2 "$tmp/Image.raw" | tr -d ' ')" = 1f8b ]; then
        gunzip -c "$tmp/Image.raw" >"$tmp/Image"
    else
        mv "$tmp/Image.raw" "$tmp/Image"
    fi
    is_arm64_image "$tmp/Image" || die "$path of $pkg $ver is not an arm64 kernel Image"
    mkdir -p "$dir"
    mv "$tmp/Image" "$dir/Image"
    echo "$pkg $ver $path $release" >"$dir/pin"
    rm -rf "$tmp"
}

# ---------------------------------------------------------------- QEMU 10.0
# qemu-10.0/usr/bin/qemu-system-aarch64, qemu-10.0/pin ("PACKAGE=VERSION"...)
qemu10_works() {
    local v
    v=$("$CACHE/qemu-$QEMU10_SERIES/usr/bin/qemu-system-aarch64" --version 2>/dev/null | head -1) || return 1
    case $v in *"version $QEMU10_SERIES".*) return 0 ;; esac
    return 1
}
prepare_qemu10() {
    local dir=$CACHE/qemu-$QEMU10_SERIES pins="" pkg ver tmp
    if [ "$REFRESH" = 0 ] && [ -s "$dir/pin" ] && qemu10_works; then
        return 0
    fi
    if [ "$REFRESH" = 0 ] && [ -s "$dir/pin" ]; then
        pins=$(cat "$dir/pin")
        need_amd64
    else
        need_amd64
        for pkg in $QEMU10_PACKAGES; do
            ver=$(amd64_apt apt-cache -o "APT::Default-Release=$QEMU10_SUITE" policy "$pkg" \
                  | awk '/Candidate:/ { print $2 }')
            [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "no $pkg in $QEMU10_SUITE"
            pins="$pins $pkg=$ver"
        done
        pins=${pins# }
        case $pins in
            "qemu-system-arm=1:$QEMU10_SERIES".*) ;;
            *) die "$QEMU10_SUITE's qemu-system-arm is now ${pins%% *}, not $QEMU10_SERIES: update QEMU10_SERIES in $0" ;;
        esac
        if [ "$(cat "$dir/pin" 2>/dev/null)" = "$pins" ] && qemu10_works; then
            return 0
        fi
    fi
    say "QEMU $QEMU10_SERIES: downloading $pins"
    tmp=$(mktemp -d "$CACHE/.qemu.XXXXXX")
    # shellcheck disable=SC2086
    download_into "$tmp/debs" amd64_apt $pins
    for deb in "$tmp"/debs/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
    rm -rf "$tmp/root/usr/share/doc" "$tmp/root/usr/share/man"
    rm -rf "$dir"
    mv "$tmp/root" "$dir"
    echo "$pins" >"$dir/pin"
    rm -rf "$tmp"
    if ! qemu10_works; then
        ldd "$dir/usr/bin/qemu-system-aarch64" 2>&1 | grep 'not found' >&2 || true
        die "$dir/usr/bin/qemu-system-aarch64 --version does not report $QEMU10_SERIES"
    fi
}

# ---------------------------------------------------------------- guest packages
# guest-debs/*.deb + guest-debs/pin ("PACKAGE=VERSION" a line): busybox-static
# and trixie's python3 with its whole standard library, arm64.
guest_debs_complete() {
    local p
    [ -s "$CACHE/guest-debs/pin" ] || return 1
    while read -r p; do
        compgen -G "$CACHE/guest-debs/${p%%=*}_*.deb" >/dev/null || return 1
    done <"$CACHE/guest-debs/pin"
}
prepare_guest_debs() {
    local dir=$CACHE/guest-debs py tmp deb
    if [ "$REFRESH" = 0 ] && guest_debs_complete; then
        return 0
    fi
    need_arm64
    tmp=$(mktemp -d "$CACHE/.guest-debs.XXXXXX")
    if [ "$REFRESH" = 0 ] && [ -s "$dir/pin" ]; then
        say "guest packages: downloading the pinned versions"
        # shellcheck disable=SC2046
        download_into "$tmp" arm64_apt $(cat "$dir/pin")
    else
        py=$(arm64_apt apt-cache -o APT::Default-Release=trixie depends python3-minimal \
             | grep -o 'python3\.[0-9]*-minimal' | head -1)
        py=${py%-minimal}
        [ -n "$py" ] || die "cannot tell trixie's python3 version"
        say "guest packages: resolving $py busybox-static (arm64, trixie)"
        arm64_apt apt-get install --download-only -y -qq -o "Dir::Cache::archives=$tmp" \
            "$py" busybox-static >/dev/null || die "cannot download $py busybox-static for arm64"
        rm -rf "$tmp/partial" "$tmp/lock"
    fi
    for deb in "$tmp"/*.deb; do
        dpkg-deb -f "$deb" Package Version | awk '/^Package:/ { p = $2 } /^Version:/ { v = $2 } END { print p "=" v }'
    done | LC_ALL=C sort >"$tmp/pin"
    rm -rf "$dir"
    mv "$tmp" "$dir"
}

# ---------------------------------------------------------------- host-side python3.X
# hostpython/: trixie's amd64 python3.X-minimal (the guest's version) with its
# libraries; hostpython/run starts it through its own loader; hostpython/pin.
guest_python() { grep -oE '^python3\.[0-9]+=' "$CACHE/guest-debs/pin" | tr -d = | head -1; }
hostpython_works() {
    local tag
    tag=$("$CACHE/hostpython/run" -I -c 'import sys; print(sys.implementation.cache_tag)' 2>/dev/null) \
        || return 1
    [ "$tag" = "cpython-$(guest_python | tr -d 'python.')" ]
}
prepare_hostpython() {
    local dir=$CACHE/hostpython py tmp deb
    py=$(guest_python)
    [ -n "$py" ] || die "no python3.X in $CACHE/guest-debs/pin"
    if [ "$REFRESH" = 0 ] && [ -s "$dir/pin" ] && hostpython_works; then
        return 0
    fi
    need_amd64
    tmp=$(mktemp -d "$CACHE/.hostpython.XXXXXX")
    if [ "$REFRESH" = 0 ] && [ -s "$dir/pin" ]; then
        # shellcheck disable=SC2046
        download_into "$tmp/debs" amd64_apt $(cat "$dir/pin")
    else
        say "host-side $py: resolving $py-minimal (amd64, trixie)"
        mkdir -p "$tmp/debs"
        amd64_apt apt-get install --download-only -y -qq -o "Dir::Cache::archives=$tmp/debs" \
            "$py-minimal" >/dev/null || die "cannot download $py-minimal for amd64"
    fi
    for deb in "$tmp"/debs/*.deb; do
        dpkg-deb -x "$deb" "$tmp/root"
        dpkg-deb -f "$deb" Package Version | awk '/^Package:/ { p = $2 } /^Version:/ { v = $2 } END { print p "=" v }'
    done | LC_ALL=C sort >"$tmp/pin"
    rm -rf "$tmp/root/usr/share/doc" "$tmp/root/usr/share/man"
    {
        echo '#!/bin/sh'
        echo "# trixie's $py for amd64, run with its own C library (not installed)."
        echo 'D=$(cd "$(dirname "$0")" && pwd)'
        echo "PYTHONHOME=\$D/usr exec \"\$D/usr/lib64/ld-linux-x86-64.so.2\" --library-path \"\$D/usr/lib/x86_64-linux-gnu\" \"\$D/usr/bin/$py\" \"\$@\""
    } >"$tmp/root/run"
    chmod 755 "$tmp/root/run"
    mv "$tmp/pin" "$tmp/root/pin"
    rm -rf "$dir"
    mv "$tmp/root" "$dir"
    rm -rf "$tmp"
    hostpython_works || die "$dir/run does not start $py"
}

# ---------------------------------------------------------------- base guest root
# base-initrd.cpio.gz, rebuilt when BASE_FORMAT, guest/base-init or the guest
# package pins change (base-initrd.stamp holds their SHA-256; the driver
# checks it too).
base_stamp() {
    { echo "BASE_FORMAT=$BASE_FORMAT"; cat "$HERE/guest/base-init" "$CACHE/guest-debs/pin"; } \
        | sha256sum | cut -d' ' -f1
}
build_base() {
    local out=$CACHE/base-initrd.cpio.gz stamp root deb py
    stamp=$(base_stamp)
    if [ -s "$out" ] && [ "$(cat "$CACHE/base-initrd.stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    say "building the base guest root"
    root=$(mktemp -d "$CACHE/.base-root.XXXXXX")
    for deb in "$CACHE"/guest-debs/*.deb; do
        case ${deb##*/} in debconf_*) continue ;; esac   # perl scripts, no perl
        dpkg-deb -x "$deb" "$root"
    done
    # merged /usr, as base-files would set up
    for l in bin sbin lib; do
        [ -e "$root/$l" ] || ln -s "usr/$l" "$root/$l"
    done
    # not needed to run Python or busybox (gconv: iconv charsets, 20 MB)
    rm -rf "$root"/usr/share/{doc,man,info,lintian,locale,perl5,debconf,bug,bash-completion,pixmaps,applications} \
           "$root"/usr/lib/aarch64-linux-gnu/gconv
    py=$(cd "$root/usr/bin" && ls | grep -E '^python3\.[0-9]+$' | head -1)
    [ -n "$py" ] || die "no python3.X in the guest packages"
    ln -sf "$py" "$root/usr/bin/python3"
    # Byte-code for the whole standard library, made on the host, with
    # unchecked hashes (file times in the guest do not matter).
    "$CACHE/hostpython/run" -I -c '
import compileall, py_compile, sys
compileall.compile_dir(sys.argv[1], ddir=sys.argv[2], quiet=2, workers=1,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
' "$root/usr/lib/$py" "/usr/lib/$py" || die "byte-compiling the guest's standard library failed"
    [ -x "$root/usr/bin/busybox" ] || die "no busybox in the guest packages"
    mkdir -p "$root"/{proc,sys,dev,tmp,run,root,etc,out,opt,testbed}
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    install -m 755 "$HERE/guest/base-init" "$root/init"
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort \
        | cpio -o -H newc --quiet --reproducible -R 0:0) | gzip -1 -n >"$out.tmp"
    mv "$out.tmp" "$out"
    echo "$stamp" >"$CACHE/base-initrd.stamp"
    rm -rf "$root"
}

# ---------------------------------------------------------------- the libvirt image
# libvirt-debs/*.deb + libvirt-debs/pin ("PACKAGE=VERSION" a line).
debs_complete() {  # DIR: every pinned package has its .deb there
    local p
    [ -s "$1/pin" ] || return 1
    while read -r p; do
        compgen -G "$1/${p%%=*}_*.deb" >/dev/null || return 1
    done <"$1/pin"
}
prepare_libvirt_debs() {
    local dir=$CACHE/libvirt-debs pins tmp deb request
    # the package list the pins were resolved for: a new list resolves again
    request=$(echo $LIBVIRT_PACKAGES)
    if [ "$REFRESH" = 0 ] && [ "$(cat "$dir/request" 2>/dev/null)" = "$request" ] && debs_complete "$dir"; then
        return 0
    fi
    need_arm64
    if [ "$REFRESH" = 0 ] && [ "$(cat "$dir/request" 2>/dev/null)" = "$request" ] && [ -s "$dir/pin" ]; then
        pins=$(cat "$dir/pin")
    else
        say "libvirt image: resolving" $LIBVIRT_PACKAGES "(arm64, trixie)"
        # shellcheck disable=SC2086
        pins=$(arm64_apt apt-get install -s -y -qq $LIBVIRT_PACKAGES \
               | awk '$1 == "Inst" { v = $3; gsub(/[()]/, "", v); print $2 "=" v }' | LC_ALL=C sort) \
            || die "cannot resolve the libvirt image's packages for arm64"
        [ -n "$pins" ] || die "apt resolved no packages for the libvirt image"
        echo "$pins" | grep -q "^libvirt-daemon=$LIBVIRT_SERIES\." \
            || die "trixie's libvirt-daemon is now $(echo "$pins" | grep '^libvirt-daemon='), not $LIBVIRT_SERIES: update LIBVIRT_SERIES in $0"
        echo "$pins" | grep -q "^qemu-system-arm=1:$LIBVIRT_QEMU_SERIES\." \
            || die "trixie's qemu-system-arm is now $(echo "$pins" | grep '^qemu-system-arm='), not $LIBVIRT_QEMU_SERIES: update LIBVIRT_QEMU_SERIES in $0"
        if [ "$(cat "$dir/pin" 2>/dev/null)" = "$pins" ] && debs_complete "$dir"; then
            echo "$request" >"$dir/request"
            return 0
        fi
    fi
    say "libvirt image: downloading $(echo "$pins" | wc -l) packages"
    tmp=$(mktemp -d "$CACHE/.libvirt-debs.XXXXXX")
    # shellcheck disable=SC2086
    download_into "$tmp" arm64_apt $pins
    echo "$pins" >"$tmp/pin"
    echo "$request" >"$tmp/request"
    rm -rf "$dir"
    mv "$tmp" "$dir"
}

# libvirt-initrd.cpio.gz + libvirt-initrd.stamp (the driver checks it too).
libvirt_stamp() {
    { echo "LIBVIRT_FORMAT=$LIBVIRT_FORMAT"; cat "$HERE/guest/base-init" "$CACHE/libvirt-debs/pin"; } \
        | sha256sum | cut -d' ' -f1
}
build_libvirt_image() {
    local out=$CACHE/libvirt-initrd.cpio.gz stamp root deb py l
    stamp=$(libvirt_stamp)
    if [ -s "$out" ] && [ "$(cat "$CACHE/libvirt-initrd.stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    say "building the libvirt guest image"
    root=$(mktemp -d "$CACHE/.libvirt-root.XXXXXX")
    # Unpacked only: no maintainer scripts run, so what they would do (users,
    # directories, configuration) is done below, and the daemons are started
    # by the per-run layer (guest/init.sh).
    for deb in "$CACHE"/libvirt-debs/*.deb; do
        dpkg-deb -x "$deb" "$root"
    done
    # merged /usr, as base-files would set up (moving what a package still
    # ships under /bin, /sbin or /lib)
    for l in bin sbin lib; do
        if [ -d "$root/$l" ] && [ ! -L "$root/$l" ]; then
            mkdir -p "$root/usr/$l"
            cp -a "$root/$l/." "$root/usr/$l/"
            rm -rf "${root:?}/$l"
        fi
        [ -e "$root/$l" ] || ln -s "usr/$l" "$root/$l"
    done
    [ -x "$root/usr/bin/busybox" ] || die "no busybox in the libvirt image's packages"
    [ -e "$root/usr/bin/sh" ] || ln -s busybox "$root/usr/bin/sh"
    # Not needed in the guest: documentation, translations, iconv charsets,
    # 32-bit ARM QEMU (libvirt would probe it at every start), QEMU's
    # firmware and option ROMs (domains here boot a kernel, not firmware),
    # systemd's own programs (nothing runs systemd here).
    rm -rf "$root"/usr/share/{doc,man,info,lintian,locale,i18n,perl5,bug,bash-completion,zsh,fish} \
           "$root"/usr/lib/aarch64-linux-gnu/gconv \
           "$root"/usr/bin/qemu-system-arm \
           "$root"/usr/share/qemu/{*.bin,*.rom,*.img,*.fd,*.dtb,openbios-*,palcode-*,u-boot*,hppa-*,opensbi*,s390*,skiboot*,slof*,vof*,edk2-*} \
           "$root"/usr/share/qemu/firmware \
           "$root"/usr/lib/systemd "$root"/usr/bin/systemd* "$root"/usr/bin/journalctl
    py=$(cd "$root/usr/bin" && ls | grep -E '^python3\.[0-9]+$' | head -1)
    [ -n "$py" ] || die "no python3.X in the libvirt image's packages"
    [ "$py" = "$(guest_python)" ] \
        || die "the libvirt image's Python is $py, the host-side one $(guest_python): they must match"
    ln -sf "$py" "$root/usr/bin/python3"
    # The checkout's package and site-packages come with each run's layer; the
    # .pth also serves hook scripts, which libvirtd starts without PYTHONPATH.
    printf '/opt/project\n/opt/site-packages\n' >"$root/usr/lib/python3/dist-packages/libvirt-arm-cpu-testbed.pth"
    "$CACHE/hostpython/run" -I -c '
import compileall, py_compile, sys
for src, dest in zip(sys.argv[1::2], sys.argv[2::2]):
    compileall.compile_dir(src, ddir=dest, quiet=2, workers=1,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
' "$root/usr/lib/$py" "/usr/lib/$py" "$root/usr/lib/python3/dist-packages" "/usr/lib/python3/dist-packages" \
        || die "byte-compiling the libvirt image's Python failed"
    # What the maintainer scripts and base-files would have made.
    mkdir -p "$root"/{proc,sys,dev,tmp,run,root,out,opt,testbed} \
             "$root"/var/{log/libvirt/qemu,lib/libvirt/qemu,cache/libvirt,tmp} \
             "$root"/etc/libvirt/hooks/qemu.d
    rm -rf "$root/var/run"
    ln -s /run "$root/var/run"          # virsh looks for /var/run/libvirt/libvirt-sock
    cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
libvirt-qemu:x:64055:994:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
    cat >"$root/etc/group" <<'EOF'
root:x:0:
kvm:x:993:
libvirt-qemu:x:994:
libvirt:x:995:
nogroup:x:65534:
EOF
    printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\n' >"$root/etc/nsswitch.conf"
    printf '127.0.0.1 localhost testbed\n' >"$root/etc/hosts"
    echo testbed >"$root/etc/hostname"
    # QEMU as root, no ownership changes: as on the x86 host (contrib/libvirt).
    printf '\nuser = "root"\ngroup = "root"\ndynamic_ownership = 0\nremember_owner = 0\n' \
        >>"$root/etc/libvirt/qemu.conf"
    install -m 755 "$HERE/guest/base-init" "$root/init"
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort \
        | cpio -o -H newc --quiet --reproducible -R 0:0) | gzip -1 -n >"$out.tmp"
    mv "$out.tmp" "$out"
    echo "$stamp" >"$CACHE/libvirt-initrd.stamp"
    rm -rf "$root"
}

# ---------------------------------------------------------------- QEMU 7.2 for arm64 (in the guest)
# qemu-7.2-arm64-debs/*.deb + pin; qemu-7.2-arm64.cpio.gz + .stamp: /opt/qemu-7.2/
# with bin/qemu-system-aarch64, lib/ (bookworm's ld.so and exactly the libraries
# the binary needs, by its DT_NEEDED closure) and the wrapper
# /opt/qemu-7.2/qemu-system-aarch64 (guest/qemu-7.2), which starts it through
# bookworm's own ld.so so trixie's libraries in the guest never mix in.
prepare_qemu72_debs() {
    local dir=$CACHE/qemu-$QEMU72_SERIES-arm64-debs pins tmp
    if [ "$REFRESH" = 0 ] && debs_complete "$dir"; then
        return 0
    fi
    need_arm64
    if [ "$REFRESH" = 0 ] && [ -s "$dir/pin" ]; then
        pins=$(cat "$dir/pin")
    else
        say "QEMU $QEMU72_SERIES for arm64: resolving qemu-system-arm ($QEMU72_SUITE)"
        pins=$(arm64_apt apt-get -o "APT::Default-Release=$QEMU72_SUITE" install -s -y -qq qemu-system-arm \
               | awk '$1 == "Inst" { v = $3; gsub(/[()]/, "", v); print $2 "=" v }' | LC_ALL=C sort) \
            || die "cannot resolve $QEMU72_SUITE's qemu-system-arm for arm64"
        echo "$pins" | grep -q "^qemu-system-arm=1:$QEMU72_SERIES[.+]" \
            || die "$QEMU72_SUITE's qemu-system-arm is $(echo "$pins" | grep '^qemu-system-arm='), not $QEMU72_SERIES"
        if [ "$(cat "$dir/pin" 2>/dev/null)" = "$pins" ] && debs_complete "$dir"; then
            return 0
        fi
    fi
    say "QEMU $QEMU72_SERIES for arm64: downloading $(echo "$pins" | wc -l) packages"
    tmp=$(mktemp -d "$CACHE/.qemu72-debs.XXXXXX")
    # shellcheck disable=SC2086
    download_into "$tmp" arm64_apt $pins
    echo "$pins" >"$tmp/pin"
    rm -rf "$dir"
    mv "$tmp" "$dir"
}
qemu72_stamp() {
    { echo "QEMU72_FORMAT=$QEMU72_FORMAT"; cat "$HERE/guest/qemu-7.2" "$CACHE/qemu-$QEMU72_SERIES-arm64-debs/pin"; } \
        | sha256sum | cut -d' ' -f1
}
build_qemu72_image() {
    local out=$CACHE/qemu-$QEMU72_SERIES-arm64.cpio.gz stamp root opt deb todo f lib n
    stamp=$(qemu72_stamp)
    if [ -s "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    say "building the QEMU $QEMU72_SERIES (arm64) archive"
    root=$(mktemp -d "$CACHE/.qemu72-root.XXXXXX")
    for deb in "$CACHE/qemu-$QEMU72_SERIES-arm64-debs"/*.deb; do
        dpkg-deb -x "$deb" "$root/x"
    done
    opt=$root/img/opt/qemu-$QEMU72_SERIES
    mkdir -p "$opt/bin" "$opt/lib"
    cp "$root/x/usr/bin/qemu-system-aarch64" "$opt/bin/"
    # bookworm has no merged /usr yet: libraries are in lib/ and usr/lib/.
    find_lib() {
        local d
        for d in "$root/x/lib/aarch64-linux-gnu" "$root/x/usr/lib/aarch64-linux-gnu"; do
            [ -e "$d/$1" ] && { echo "$d/$1"; return 0; }
        done
        return 1
    }
    todo="$opt/bin/qemu-system-aarch64"
    while [ -n "$todo" ]; do
        f=${todo%% *}
        todo=${todo#"$f"}; todo=${todo# }
        for n in $(aarch64-linux-gnu-readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
            [ -e "$opt/lib/$n" ] && continue
            lib=$(find_lib "$n") || die "QEMU $QEMU72_SERIES for arm64 needs $n, which no package of the closure has"
            cp -L "$lib" "$opt/lib/$n"
            todo="$todo $opt/lib/$n"
        done
    done
    cp -L "$root/x/lib/ld-linux-aarch64.so.1" "$opt/lib/" \
        || die "no ld-linux-aarch64.so.1 in $QEMU72_SUITE's libc6"
    install -m 755 "$HERE/guest/qemu-7.2" "$opt/qemu-system-aarch64"
    (cd "$root/img" && find . -mindepth 1 | LC_ALL=C sort \
        | cpio -o -H newc --quiet --reproducible -R 0:0) | gzip -1 -n >"$out.tmp"
    mv "$out.tmp" "$out"
    echo "$stamp" >"$out.stamp"
    rm -rf "$root"
}

# ---------------------------------------------------------------- main
rm -rf "$CACHE"/.kernel.* "$CACHE"/.qemu.* "$CACHE"/.guest-debs.* "$CACHE"/.hostpython.* "$CACHE"/.base-root.* \
       "$CACHE"/.libvirt-debs.* "$CACHE"/.libvirt-root.* "$CACHE"/.qemu72-debs.* "$CACHE"/.qemu72-root.*
TIMES="host=$(since "$T0")"
step() {  # step NAME FUNCTION ARGS...: run a step, note its time
    local t name=$1
    shift
    t=$(now)
    "$@"
    TIMES="$TIMES $name=$(since "$t")"
}
step kernels eval 'for k in $KERNELS; do prepare_kernel "${k%%:*}" "${k#*:}"; done'
step qemu10 prepare_qemu10
step guest_debs prepare_guest_debs
step hostpython prepare_hostpython
step base build_base
step libvirt_debs prepare_libvirt_debs
step libvirt_image build_libvirt_image
step qemu72_debs prepare_qemu72_debs
step qemu72_image build_qemu72_image

for k in $KERNELS; do
    read -r _ ver _ release <"$CACHE/kernels/${k%%:*}/pin"
    say "kernel ${k%%:*}: $release ($ver)"
done
say "QEMU $HOST_QEMU_SERIES: $(command -v qemu-system-aarch64) ($host_qemu_version)"
say "QEMU $QEMU10_SERIES: $CACHE/qemu-$QEMU10_SERIES/usr/bin/qemu-system-aarch64 ($(head -1 "$CACHE/qemu-$QEMU10_SERIES/pin" | cut -d' ' -f1))"
say "host-side $(guest_python): $CACHE/hostpython/run ($(grep -E '^python3\.[0-9]+-minimal=' "$CACHE/hostpython/pin"))"
say "guest: $(grep -E '^python3\.[0-9]+=' "$CACHE/guest-debs/pin"), $(grep '^busybox-static=' "$CACHE/guest-debs/pin"); base-initrd.cpio.gz $(du -h "$CACHE/base-initrd.cpio.gz" | cut -f1)"
say "libvirt image: $(grep '^libvirt-daemon=' "$CACHE/libvirt-debs/pin"), $(grep '^qemu-system-arm=' "$CACHE/libvirt-debs/pin"), $(grep '^python3-libvirt=' "$CACHE/libvirt-debs/pin"); libvirt-initrd.cpio.gz $(du -h "$CACHE/libvirt-initrd.cpio.gz" | cut -f1)"
say "QEMU $QEMU72_SERIES for arm64 (in the guest): $(grep '^qemu-system-arm=' "$CACHE/qemu-$QEMU72_SERIES-arm64-debs/pin"); qemu-$QEMU72_SERIES-arm64.cpio.gz $(du -h "$CACHE/qemu-$QEMU72_SERIES-arm64.cpio.gz" | cut -f1)"
rm -f "$CACHE"/apt-*/var/cache/apt/*.bin     # apt's binary caches: only worth it during a run
say "timings_s: $TIMES"
say "ready in $(since "$T0") s: $CACHE"
