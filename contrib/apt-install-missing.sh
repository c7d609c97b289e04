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
printf '%s: installing Debian packages:%s\n' "$who" "$missing" >&2
# shellcheck disable=SC2086
if ! apt-cache show $missing >/dev/null 2>&1 \
   || ! apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1; then
    apt-get update -qq || { printf '%s: error: apt-get update failed\n' "$who" >&2; exit 1; }
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null \
        || { printf '%s: error: apt-get install%s failed\n' "$who" "$missing" >&2; exit 1; }
fi
