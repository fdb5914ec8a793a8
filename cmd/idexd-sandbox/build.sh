#!/bin/sh
# build.sh -o OUT [VERSION]: builds the sandbox helper (main.c) into OUT. The
# Makefile and the tests (internal/testutil) both build it here, so both
# run the same binary.
#
# With musl-gcc (Debian: musl-tools) the helper is linked statically against
# musl, whose MIT license lets a static binary ship with its notice alone
# (packaging/copyright.sh adds it). A static helper has no dynamic loader to
# run: its exec costs 0.06-0.07 ms of CPU against 0.45-0.60 ms for the same
# helper on the system's glibc (perf stat -r 300 of --version, twice), and
# every run execs one. A static glibc would do as well, but the LGPL would
# then ask idexd, which is not free software, to ship its objects for
# relinking. Without musl-gcc the helper is linked dynamically against the
# system's C library, and this script says so. IDEXD_HELPER_LIBC=glibc asks
# for that build even where musl-gcc is; IDEXD_HELPER_LIBC=musl fails
# without musl-gcc (CI sets it, so the shipped build is the one tested).
set -eu
[ "${1:-}" = -o ] && [ $# -ge 2 ] || { echo "usage: build.sh -o OUT [VERSION]" >&2; exit 2; }
out=$2
version=${3:-dev}
case $version in *[!A-Za-z0-9._+~-]*) echo "build.sh: version '$version' has characters a C string would need escaped" >&2; exit 2 ;; esac
src=$(dirname "$0")/main.c
flags="-std=gnu11 -O2 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong"
libc=${IDEXD_HELPER_LIBC:-auto}
case $libc in
auto) command -v musl-gcc >/dev/null && libc=musl || libc=glibc ;;
musl) command -v musl-gcc >/dev/null || { echo "build.sh: IDEXD_HELPER_LIBC=musl but musl-gcc is not installed (Debian: apt-get install musl-tools)" >&2; exit 1; } ;;
glibc) ;;
*) echo "build.sh: IDEXD_HELPER_LIBC='$libc': want musl, glibc or auto" >&2; exit 2 ;;
esac
if [ "$libc" = musl ]; then
	# musl-gcc searches musl's headers only; the kernel's (linux/, asm/)
	# come after them from the system's, as for any C library.
	multiarch=$(gcc -print-multiarch 2>/dev/null || true)
	# shellcheck disable=SC2086 # flags are words
	exec musl-gcc $flags -static -idirafter /usr/include ${multiarch:+-idirafter /usr/include/$multiarch} \
		-DIDEXD_VERSION="\"$version\"" -o "$out" "$src"
fi
command -v "${CC:-cc}" >/dev/null || { echo "build.sh: ${CC:-cc} not found: the sandbox helper is C (Debian: apt-get install gcc libc6-dev; musl-tools for the static build)" >&2; exit 1; }
[ "${IDEXD_HELPER_LIBC:-auto}" = glibc ] ||
	echo "build.sh: musl-gcc not found: idexd-sandbox links the system's C library dynamically, which costs each run about 0.5 ms more CPU (Debian: apt-get install musl-tools)" >&2
# shellcheck disable=SC2086 # flags are words
exec "${CC:-cc}" $flags -DIDEXD_VERSION="\"$version\"" -o "$out" "$src"
