#!/bin/sh
# Install the Debian packages of a list that are not installed yet (the
# set-up scripts share this).  `apt-get update` runs only when apt does not
# know a package or the install fails with the lists it has.
#
#   sh contrib/apt-install-missing.sh WHO PACKAGE...     (WHO prefixes messages)
set -eu
who=$1; shift
missing=""
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $pkg"
done
[ -n "$missing" ] || exit 0
export DEBIAN_FRONTEND=noninteractive
# No daemon starts from a package's postinst (openssh-server would start a
# system sshd on port 22; without systemd a failed start fails the install):
# the set-up starts what it needs itself.  Debian's policy-rc.d contract:
# exit 101 = action forbidden.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
printf '%s: installing Debian packages:%s\n' "$who" "$missing" >&2
# shellcheck disable=SC2086
if ! apt-cache show $missing >/dev/null 2>&1 \
   || ! apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1; then
    apt-get update -qq || { printf '%s: error: apt-get update failed\n' "$who" >&2; exit 1; }
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null \
        || { printf '%s: error: apt-get install%s failed\n' "$who" "$missing" >&2; exit 1; }
fi
