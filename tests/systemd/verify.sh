#!/usr/bin/env bash
# verify.sh checks systemd/ without installing anything: the units with
# `systemd-analyze verify`, the sysusers.d and tmpfiles.d files by applying
# them to a scratch root. Any output on stderr is a failure, because
# systemd-analyze reports unit parse errors as warnings with exit status 0.
#
# Usage: tests/systemd/verify.sh [--security]
#   IDEXD_BIN_DIR   where idexd and idexctl are (default: .bin of the repo)
#   --security      also print `systemd-analyze security` for idexd.service
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bindir=${IDEXD_BIN_DIR:-$repo/.bin}
security=0
[[ ${1:-} == --security ]] && security=1

for b in idexd idexctl; do
	[[ -x $bindir/$b ]] || { echo "verify: $bindir/$b is missing: run make build" >&2; exit 1; }
done
for t in systemd-analyze systemd-sysusers systemd-tmpfiles; do
	command -v "$t" >/dev/null || { echo "verify: $t is missing (apt-get install systemd)" >&2; exit 1; }
done

scratch=$(mktemp -d /tmp/idexd-verify.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

# A root that systemd-analyze can load the units from: the system's own
# units (for sysinit.target and friends), ours under /etc, and every binary
# an Exec*= line names.
mkdir -p "$scratch/usr/lib/systemd" "$scratch/etc/systemd/system" "$scratch/usr/bin" \
	"$scratch/etc/idexd" "$scratch/srv/idexd/students" "$scratch/var/lib/idexd"
cp -a /usr/lib/systemd/system "$scratch/usr/lib/systemd/"
ln -s usr/bin "$scratch/bin"
ln -s usr/sbin "$scratch/sbin"
ln -s usr/lib "$scratch/lib"
cp "$repo/systemd/idexd.service" "$repo/systemd/idexd.socket" "$scratch/etc/systemd/system/"
install -m 0755 "$bindir/idexd" "$bindir/idexctl" "$scratch/usr/bin/"
install -m 0755 "$(type -P kill)" "$scratch/usr/bin/kill"
install -m 0644 "$repo/packaging/idexd.toml" "$scratch/etc/idexd/idexd.toml"

fail=0
# check NAME CMD...: runs CMD, fails on a non-zero exit or any stderr other
# than lines matching $ok (sysusers says what it creates on stderr).
ok='^$'
check() {
	local name=$1 err rc=0
	shift
	err=$("$@" 2>&1 >/dev/null) || rc=$?
	err=$(printf '%s\n' "$err" | grep -Ev "$ok" || true)
	[[ $rc == 0 && -z $err ]] && { echo "PASS $name"; return; }
	echo "FAIL $name"
	[[ $rc == 0 ]] || echo "    exit status $rc"
	[[ -z $err ]] || printf '%s\n' "$err" | sed 's/^/    /'
	fail=1
}

# --man=no: the Documentation= pages are not installed in the scratch root.
check "systemd-analyze verify idexd.service idexd.socket" \
	systemd-analyze verify --man=no --root="$scratch" idexd.service idexd.socket

# sysusers first, so that tmpfiles finds the group idex in the scratch root.
: >"$scratch/etc/passwd"; : >"$scratch/etc/group"
ok="^Creating group '(idex|idex-admin)' with GID [0-9]+\.\$|^\$"
check "systemd-sysusers idexd.conf" systemd-sysusers --root="$scratch" "$repo/systemd/sysusers.d/idexd.conf"
if ! grep -q '^idex:' "$scratch/etc/group" || ! grep -q '^idex-admin:' "$scratch/etc/group"; then
	echo "FAIL sysusers created groups idex and idex-admin"; fail=1
fi
ok='^$'
check "systemd-tmpfiles idexd.conf" systemd-tmpfiles --root="$scratch" --create "$repo/systemd/tmpfiles.d/idexd.conf"
# stat would name the group from the host's /etc/group: compare gids.
want="751 root idex"
gid=$(grep '^idex:' "$scratch/etc/group" | cut -d: -f3)
got=$(stat -c '%a %u %g' "$scratch/srv/idexd/students")
if [[ $got == "751 0 $gid" ]]; then echo "PASS tmpfiles: /srv/idexd/students is $want"; else
	echo "FAIL tmpfiles: /srv/idexd/students is '$got', want '$want' (gid $gid)"; fail=1; fi

if ((security)); then
	systemd-analyze security --offline=yes --root="$scratch" --no-pager idexd.service
fi
exit "$fail"
