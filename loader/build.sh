#!/bin/sh
# Build the loader: sh loader/build.sh [OUTPUT]   (default: loader/libvirt-arm-cpu-loader.so)
#   CC      the compiler (default gcc; aarch64-linux-gnu-gcc to cross-build for arm64)
#   CFLAGS  extra flags (default -O2)
# The flags are the ones the loader must stay clean under.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$HERE/libvirt-arm-cpu-loader.so}
# shellcheck disable=SC2086
exec "${CC:-gcc}" ${CFLAGS:--O2} -Wall -Wextra -Werror -shared -fPIC \
    -o "$OUT" "$HERE/libvirt-arm-cpu-loader.c" -ldl
