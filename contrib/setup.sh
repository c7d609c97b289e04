#!/bin/sh
# Set up libvirt-arm-cpu from a clean clone on Debian 12 (as root, no systemd):
# Debian packages, a virtualenv in .venv, the package (editable) with its
# test and libvirt extras.  Safe to run again: it only does what is missing.
#
#   LIBVIRT_ARM_CPU_VENV   where the virtualenv goes (default: <clone>/.venv)
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${LIBVIRT_ARM_CPU_VENV:-$ROOT/.venv}

say() { printf 'setup: %s\n' "$*" >&2; }

# python3-dev, gcc, pkg-config and libvirt-dev build libvirt-python; libxml2-utils
# (xmllint) lets virt-xml-validate check domain XML against libvirt's schemas.
APT_PACKAGES="python3 python3-venv python3-dev gcc pkg-config libvirt-dev libxml2-utils"
# shellcheck disable=SC2086
sh "$ROOT/contrib/apt-install-missing.sh" setup $APT_PACKAGES

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV (Debian's Python $(/usr/bin/python3 -V 2>&1 | cut -d' ' -f2))"
    /usr/bin/python3 -m venv "$VENV"
fi

stamp="$VENV/.libvirt-arm-cpu-installed"
# The editable install is a plain path (.pth) to the checkout, setuptools'
# "compat" mode: its default mode installs an import finder that every
# interpreter of the virtualenv imports at start (pathlib, re, urllib...),
# 8 ms of each command's ~70 (bench/README.md).
# The stamp names the checkout and the mode: a virtualenv shared by two
# checkouts (LIBVIRT_ARM_CPU_VENV), or installed the other way, is installed again.
want="$ROOT compat"
if [ ! -f "$stamp" ] || [ "$ROOT/setup.cfg" -nt "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] \
   || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing libvirt-arm-cpu and its dependencies into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        --config-settings editable_mode=compat -e "$ROOT[test,libvirt]"
    printf '%s\n' "$want" > "$stamp"
fi
say "ready: $VENV/bin/libvirt-arm-cpu"
