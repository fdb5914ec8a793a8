#!/usr/bin/env bash
# run.sh boots a real systemd (Debian 12 under systemd-nspawn), installs the
# idexd .deb in it and checks what a sysadmin relies on: socket activation,
# Type=notify, a run as a student uid, the watchdog, the drain on stop and
# no orphans after a restart. One PASS/FAIL line per check; exits non-zero
# if any failed. Everything it starts is torn down on exit, failure or not.
#
# Usage: tests/systemd/run.sh PATH/TO/idexd_*.deb     (make systemd-test)
#
# Needs root, and a host where systemd-nspawn can boot a container (see
# docs/systemd.md). Installs systemd-container and debootstrap with apt-get
# when missing. The Debian rootfs is cached in $IDEXD_TEST_CACHE
# (default /var/cache/idexd-test/rootfs-bookworm) and reused by later runs
# and other clones on the same machine; IDEXD_TEST_KEEP=1 keeps the
# container's copy for a post-mortem; IDEXD_TEST_HOLD=1 keeps the container
# running after the checks until run.sh is interrupted (it prints how to
# enter it).
set -euo pipefail

deb=${1:?usage: $0 PATH/TO/idexd.deb}
[[ -f $deb ]] || { echo "run.sh: no package at $deb (make package)" >&2; exit 2; }
deb=$(realpath "$deb")
[[ $(id -u) == 0 ]] || { echo "run.sh: needs root (nspawn, cgroups)" >&2; exit 2; }

cache_dir=${IDEXD_TEST_CACHE:-/var/cache/idexd-test}
t_start=$SECONDS

say() { printf '%s [%3ds] %s\n' "${FUNCNAME[1]:-run}" $((SECONDS - t_start)) "$*"; }
die() { echo "FAIL $*"; exit 1; }

# rootfs, mirror, ensure_rootfs: shared with tests/vm/run.sh.
# shellcheck source=../lib/rootfs.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/rootfs.sh"

# ---- host tools ------------------------------------------------------------

ensure_tools() {
	local need=()
	command -v systemd-nspawn >/dev/null || need+=(systemd-container)
	command -v debootstrap >/dev/null || need+=(debootstrap)
	command -v nsenter >/dev/null || need+=(util-linux)
	((${#need[@]} == 0)) && return
	say "installing ${need[*]}"
	timeout 300 apt-get update -qq
	DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# ---- the container -----------------------------------------------------------

work="" cg_dirs=() harness_cg="" hold_pid="" nspawn_pid="" pid1="" machine="idexd-systemd-test-$$"

teardown() {
	local rc=$?
	set +e
	if [[ -n $pid1 && ${IDEXD_TEST_KEEP:-0} != 1 ]] && ((rc != 0)); then
		echo "---- journal of idexd in the container (last 60 lines) ----"
		ce 10 journalctl -u idexd.service -u idexd.socket --no-pager -n 60 -o short-monotonic 2>&1 | sed 's/^/    /'
	fi
	# Everything (nspawn, the container, every nsenter we ran) is in our
	# cgroup: kill it at once, wait until it is empty, remove the groups.
	local d i pids
	for d in "${cg_dirs[@]}"; do
		[[ -f $d/cgroup.kill ]] && echo 1 >"$d/cgroup.kill" 2>/dev/null
	done
	[[ -n $nspawn_pid ]] && kill -KILL "$nspawn_pid" 2>/dev/null
	[[ -n $hold_pid ]] && kill "$hold_pid" 2>/dev/null
	for d in "${cg_dirs[@]}"; do
		for ((i = 0; i < 50; i++)); do
			pids=$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)
			[[ -z $pids ]] && break
			# v1 (name=systemd) has no cgroup.kill: SIGKILL what is listed.
			# shellcheck disable=SC2086 # one pid a word
			kill -KILL $pids 2>/dev/null
			sleep 0.1
		done
		[[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
		[[ -d $d ]] && echo "teardown: could not remove cgroup $d" >&2
	done
	if [[ -n $work ]]; then
		if [[ ${IDEXD_TEST_KEEP:-0} == 1 ]]; then
			echo "kept the container's tree in $work"
		else
			rm -rf --one-file-system "$work"
		fi
	fi
	echo "total $((SECONDS - t_start))s"
	exit "$rc"
}

# sweep_stale removes what an earlier run left when it could not tear down
# (killed with SIGKILL, e.g. by a CI time limit): its cgroups and its copy
# of the tree, recognised by the pid in their names no longer running.
sweep_stale() {
	local d pid
	for d in /sys/fs/cgroup/idexd-systemd-test-* /sys/fs/cgroup/*/idexd-systemd-test-* /var/tmp/idexd-systemd-test.*; do
		[[ -e $d ]] || continue
		pid=${d##*idexd-systemd-test-}
		[[ $d == /var/tmp/* ]] && { pid=${d#/var/tmp/idexd-systemd-test.}; pid=${pid%%.*}; }
		[[ $pid =~ ^[0-9]+$ ]] || continue
		kill -0 "$pid" 2>/dev/null && [[ $(ps -o args= -p "$pid") == *run.sh* ]] && continue
		say "removing $d, left by run $pid"
		if [[ -d $d && $d == /sys/* ]]; then
			if [[ -f $d/cgroup.kill ]]; then echo 1 >"$d/cgroup.kill"; fi
			# shellcheck disable=SC2046 # one pid a word
			kill -KILL $(find "$d" -name cgroup.procs -exec cat {} +) 2>/dev/null || true
			sleep 0.2
			find "$d" -depth -type d -exec rmdir {} + 2>/dev/null ||
				echo "sweep: could not remove cgroup $d" >&2
		else
			rm -rf --one-file-system "$d"
		fi
	done
	return 0
}

# cgroup_roots prints the hierarchies to put the container's cgroup in: the
# v2 one (at /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host)
# and, on hybrid/legacy hosts, systemd's named v1 hierarchy.
cgroup_roots() {
	if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
		echo /sys/fs/cgroup
		return
	fi
	[[ -f /sys/fs/cgroup/unified/cgroup.procs ]] && echo /sys/fs/cgroup/unified
	[[ -f /sys/fs/cgroup/systemd/cgroup.procs ]] && echo /sys/fs/cgroup/systemd
	return 0
}

# ce TIMEOUT CMD...: runs CMD inside the container as root with a clean
# environment, killed after TIMEOUT seconds (inside the container, where it
# runs: nsenter does not pass signals on). It runs in the harness cgroup,
# so that teardown kills whatever it may have left in the background.
ce() {
	local t=$1
	shift
	(
		[[ -n $harness_cg ]] && echo "$BASHPID" >"$harness_cg/cgroup.procs"
		exec timeout -k 5 $((t + 5)) nsenter -t "$pid1" -a -- \
			/usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
			HOME=/root LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0 \
			timeout -k 3 "$t" "$@"
	)
}
# csh TIMEOUT SCRIPT: a shell snippet inside the container.
csh() { ce "$1" /bin/sh -c "$2"; }

boot() {
	work=$(mktemp -d "/var/tmp/idexd-systemd-test.$$.XXXXXX")
	say "copying the rootfs to $work/root"
	cp -a --reflink=auto "$rootfs" "$work/root"
	# The host's name came with debootstrap; the container's is the machine's.
	echo "$machine" >"$work/root/etc/hostname"
	cp "$deb" "$work/root/root/idexd.deb"

	local root
	while read -r root; do
		mkdir "$root/$machine"
		cg_dirs+=("$root/$machine")
	done < <(cgroup_roots)
	((${#cg_dirs[@]} > 0)) || die "boot: no cgroup hierarchy found under /sys/fs/cgroup"
	# The first is the v2 hierarchy: nsenter'd commands go there, beside
	# nspawn's own supervisor/payload groups.
	mkdir "${cg_dirs[0]}/harness"
	harness_cg=${cg_dirs[0]}/harness

	# nspawn runs in a cgroup of its own (--keep-unit: no scope from a
	# systemd we do not have), so teardown can kill and remove all of it.
	# The container gets a cgroup v2 tree (a delegated v2 subtree of the
	# host's, without memory/pids/cpu controllers on a hybrid host) and a
	# network namespace with only loopback.
	say "booting $machine"
	(
		for d in "${cg_dirs[@]}"; do echo "$BASHPID" >"$d/cgroup.procs"; done
		SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 exec systemd-nspawn --quiet -D "$work/root" -M "$machine" \
			--keep-unit --register=no --private-network --console=read-only -b
	) </dev/null >"$work/console.log" 2>&1 &
	nspawn_pid=$!
	disown "$nspawn_pid" # teardown kills it; no "Killed" notice from bash
	local i
	for ((i = 0; i < 300; i++)); do
		pid1=$(pgrep -P "$nspawn_pid" -x systemd || true)
		[[ -n $pid1 ]] && break
		kill -0 "$nspawn_pid" 2>/dev/null || { cat "$work/console.log"; die "boot: systemd-nspawn exited"; }
		sleep 0.1
	done
	[[ -n $pid1 ]] || { cat "$work/console.log"; die "boot: no systemd in the container after 30s"; }
	# Poll rather than `is-system-running --wait`, which was seen to hang
	# for a minute after a boot that had already finished. Until systemd's
	# own socket is up, systemctl cannot even connect.
	local state
	for ((i = 0; i < 600; i++)); do
		state=$(ce 10 systemctl is-system-running 2>&1 || true)
		[[ $state == running || $state == degraded ]] && break
		sleep 0.1
	done
	case $state in
	running) say "systemd is running (container pid 1 = host pid $pid1)" ;;
	degraded)
		say "systemd is degraded; failed units:"
		ce 10 systemctl --failed --no-legend --plain | sed 's/^/    /'
		;;
	*) cat "$work/console.log"; die "boot: systemd did not come up: '$state'" ;;
	esac
}

# ---- checks --------------------------------------------------------------------

failures=0 passes=0
pass() { echo "PASS $*"; passes=$((passes + 1)); }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
# expect NAME WANT GOT: PASS if equal.
expect() { if [[ $3 == "$2" ]]; then pass "$1"; else fail "$1: got '$3', want '$2'"; fi; }
prop() { ce 10 systemctl show -P "$2" "$1" 2>/dev/null || true; }
idexctl() { ce "${T:-20}" idexctl "$@"; }
# jcursor prints the journal's current position, for journal_has.
jcursor() { ce 10 journalctl -n 1 --show-cursor --no-pager -o cat 2>/dev/null | sed -n 's/^-- cursor: //p'; }
# journal_has REGEX [CURSOR]: whether idexd.service's journal (this boot,
# or after CURSOR) matches. The journal is read whole first: grep -q on a
# pipe would end journalctl with SIGPIPE, a failure under pipefail.
journal_has() {
	local j
	if [[ -n ${2:-} ]]; then
		j=$(ce 10 journalctl -u idexd.service --after-cursor="$2" --no-pager -o cat 2>/dev/null)
	else
		j=$(ce 10 journalctl -u idexd.service -b --no-pager -o cat 2>/dev/null)
	fi
	grep -Eq -- "$1" <<<"$j"
}
# count_python: python3 processes in the container, zombies (dead, not yet
# reaped) not counted.
count_python() { ce 10 ps -eo stat=,comm= | awk '$2 ~ /^python3/ && $1 !~ /^Z/' | wc -l; }

check_install() {
	local out
	if out=$(ce 120 dpkg -i /root/idexd.deb 2>&1); then pass "install: dpkg -i idexd.deb"; else
		fail "install: dpkg -i idexd.deb"; printf '%s\n' "$out" | sed 's/^/    /'; return 1; fi
	expect "install: groups idex and idex-admin exist" "2" \
		"$(ce 10 getent group idex idex-admin | wc -l)"
	expect "install: /srv/idexd/students is 751 root:idex" "751 root idex" \
		"$(ce 10 stat -c '%a %U %G' /srv/idexd/students)"
	expect "install: /var/lib/idexd is 750 root:root" "750 root root" \
		"$(ce 10 stat -c '%a %U %G' /var/lib/idexd)"
	expect "install: idexd.socket enabled" enabled "$(ce 10 systemctl is-enabled idexd.socket || true)"
	expect "install: idexd.socket active" active "$(ce 10 systemctl is-active idexd.socket || true)"
	expect "install: idexd.service not started yet" inactive "$(ce 10 systemctl is-active idexd.service || true)"
	expect "install: socket file is 660 root:idex" "660 root idex socket" \
		"$(ce 10 stat -c '%a %U %G %F' /run/idexd/idexd.sock)"
}

# What the package gives a sysadmin besides the daemon: the docs, the man
# page, the completion, the version of every binary, a config that shows
# every key.
check_package_files() {
	expect "files: README.md, protocol.md, copyright in /usr/share/doc/idexd" "3" \
		"$(csh 10 'ls /usr/share/doc/idexd/README.md /usr/share/doc/idexd/protocol.md /usr/share/doc/idexd/copyright | wc -l')"
	expect "files: idexctl(1) is a gzipped man page" "gzip .TH IDEXCTL 1" \
		"$(csh 10 'f=/usr/share/man/man1/idexctl.1.gz; printf "%s " "$(od -An -tx1 -N2 $f | tr -d " " | sed s/1f8b/gzip/)"; zcat $f | head -1 | cut -d" " -f1-3')"
	expect "files: bash completion for idexctl is registered" "complete -F _idexctl idexctl" \
		"$(ce 10 bash -c '. /usr/share/bash-completion/completions/idexctl && complete -p idexctl')"
	expect "files: zsh completion installed" "#compdef idexctl" \
		"$(ce 10 head -1 /usr/share/zsh/vendor-completions/_idexctl)"
	local v
	v=$(ce 10 idexctl --version)
	expect "files: idexd-sandbox --version is stamped like idexctl ($v)" "idexd-sandbox ${v#idexctl }" \
		"$(ce 10 idexd-sandbox --version)"
	[[ $v != "idexctl dev" ]] || fail "files: idexctl --version is unstamped ($v)"
	expect "files: /etc/idexd/idexd.toml shows keep_ended_mb" "#keep_ended_mb = 256" \
		"$(ce 10 grep '^#keep_ended_mb' /etc/idexd/idexd.toml)"
	local rc=0
	ce 10 idexctl --help >/dev/null 2>&1 || rc=$?
	expect "files: idexctl --help exits 0" 0 "$rc"
}

# allow_unlimited: nspawn delegates no memory/pids/cpu controllers
# (platform.md), and idexd refuses to start where it cannot limit runs
# unless told so. The limits themselves are shown in a VM.
allow_unlimited() {
	# At the top: a key appended at the end would fall into the file's
	# last [table].
	csh 10 'f=/etc/idexd/idexd.toml; { printf "# nspawn has no memory/pids/cpu controllers (tests/systemd/run.sh)\nallow_unlimited = true\n\n"; cat "$f"; } > "$f.new" && cat "$f.new" > "$f" && rm "$f.new"'
}

# (a) the first client call starts idexd through the socket.
check_socket_activation() {
	local rc=0 out
	out=$(T=30 idexctl health 2>&1) || rc=$?
	expect "(a) socket activation: first 'idexctl health' exits 0 (output: ${out//$'\n'/ })" 0 "$rc"
	expect "(a) socket activation: idexd.service became active" active "$(ce 10 systemctl is-active idexd.service || true)"
	if journal_has 'using the socket systemd passed'; then
		pass "(a) socket activation: idexd used the socket systemd passed"
	else fail "(a) socket activation: idexd did not log that it used the passed socket"; fi
	if journal_has 'sandbox helper"? helper=/usr/bin/idexd-sandbox'; then
		pass "(a) idexd starts runs through the packaged /usr/bin/idexd-sandbox"
	else fail "(a) idexd did not log 'sandbox helper helper=/usr/bin/idexd-sandbox'"; fi
}

# (b) a plain start waits for READY=1; STATUS= and the delegated cgroup.
check_notify() {
	ce 60 systemctl stop idexd.service || true
	local t0=$SECONDS
	if ce 60 systemctl start idexd.service; then pass "(b) notify: systemctl start idexd returned ($((SECONDS - t0))s)"; else
		fail "(b) notify: systemctl start idexd failed"; fi
	expect "(b) notify: is-active after start" active "$(ce 10 systemctl is-active idexd.service || true)"
	expect "(b) notify: Type/NotifyAccess/SubState" "notify main running" \
		"$(prop idexd Type) $(prop idexd NotifyAccess) $(prop idexd SubState)"
	local status
	status=$(prop idexd StatusText)
	if [[ $status == *accepting* ]]; then pass "(b) notify: STATUS= '$status'"; else fail "(b) notify: STATUS= '$status', want '... accepting'"; fi
	local pid cg
	pid=$(prop idexd MainPID)
	cg=$(ce 10 cat "/proc/$pid/cgroup" | sed -n 's/^0:://p')
	expect "(b) Delegate=yes: idexd moved itself into a leaf" "/system.slice/idexd.service/daemon" "$cg"
	expect "(b) restarts so far" 0 "$(prop idexd NRestarts)"
}

# (c) a run end to end as a student uid, and the socket's roles.
check_run() {
	local out rc=0
	out=$(idexctl student alice 2>&1) || rc=$?
	expect "(c) run: 'idexctl student alice' exits 0" 0 "$rc"
	local st uid
	# The private layout (the default): the student's, 0700.
	st=$(ce 10 stat -c '%a %u %g' /srv/idexd/students/alice 2>&1)
	uid=${st#* }; uid=${uid%% *}
	if [[ $uid =~ ^[0-9]+$ && $st == "700 $uid $uid" ]] && ((uid >= 200000)); then
		pass "(c) run: alice's directory is 700 $uid:$uid"
	else fail "(c) run: alice's directory is '$st', want 700 <uid >= 200000>:<the same gid>"; fi
	csh 10 'cat > /srv/idexd/students/alice/hello.py <<"PY"
import os
print("hello from idexd")
print("uid", os.getuid(), "gid", os.getgid(), "groups", os.getgroups())
others = [p for p in os.listdir("/proc") if p.isdigit() and os.stat("/proc/" + p).st_uid != os.getuid()]
print("foreign processes visible", len(others))
for line in open("/proc/self/status"):
    if line.startswith(("NoNewPrivs", "CapEff", "CapBnd")):
        print(line.split()[0], line.split()[1])
PY
chown --reference=/srv/idexd/students/alice /srv/idexd/students/alice/hello.py'
	rc=0
	out=$(T=30 idexctl run --student alice hello.py 2>&1) || rc=$?
	expect "(c) run: 'idexctl run --student alice hello.py' exits 0" 0 "$rc"
	if [[ $out == *"hello from idexd"* ]]; then pass "(c) run: output streamed"; else
		fail "(c) run: no 'hello from idexd' in: ${out//$'\n'/ | }"; fi
	local ruid
	ruid=$(sed -n 's/^uid \([0-9]*\) .*/\1/p' <<<"$out")
	if [[ -n $ruid ]] && ((ruid >= 200000)) && [[ $ruid == "$uid" ]]; then pass "(c) run: the script ran as alice's uid $ruid"; else
		fail "(c) run: the script's uid is '$ruid', want alice's ($uid, >= 200000)"; fi
	expect "(c) run: no supplementary groups" "groups []" "$(grep -o 'groups \[.*\]' <<<"$out")"
	expect "(c) run: no_new_privs, no capabilities" "NoNewPrivs: 1|CapEff: 0000000000000000" \
		"$(grep -E "^(NoNewPrivs|CapEff)" <<<"$out" | sort -r | paste -sd"|")"

	expect "(c) run: ProtectProc=invisible: the script sees no other uid's process" "foreign processes visible 0" \
		"$(grep -o 'foreign processes visible [0-9]*' <<<"$out")"

	# Waiting for input is seen from idexd (sandbox/input.go), which reads
	# the student's /proc as the student: under ProtectProc=invisible and
	# without CAP_SYS_PTRACE, root could not.
	csh 10 'cat > /srv/idexd/students/alice/ask.py <<"PY"
name = input("name? ")
print("hi", name)
PY
chown --reference=/srv/idexd/students/alice /srv/idexd/students/alice/ask.py'
	out=$(csh 30 '(sleep 2; echo bob) | idexctl --json run --student alice ask.py' 2>&1)
	# The output may come in several stdout events ("hi", " bob\n"): join
	# their data before looking for the line.
	local said
	said=$(grep -o '"type":"stdout","data":"[^"]*"' <<<"$out" | sed 's/.*"data":"\(.*\)"$/\1/' | tr -d '\n')
	if [[ $out == *'"input_wait"'* && $out == *'"input_resume"'* && $said == *'hi bob'* ]]; then
		pass "(c) run: input() is seen waiting for input and resuming under the unit's hardening"
	else fail "(c) run: no input_wait/input_resume around 'hi bob' in: ${out//$'\n'/ | }"; fi

	# Roles: a web-tier user in group idex may talk; others cannot connect.
	csh 10 'id web >/dev/null 2>&1 || useradd --system --no-create-home --groups idex web'
	rc=0
	out=$(ce 20 runuser -u web -- idexctl health 2>&1) || rc=$?
	expect "(c) roles: a member of idex (supplementary) gets 'idexctl health' (${out//$'\n'/ })" 0 "$rc"
	rc=0
	out=$(ce 20 runuser -u nobody -- idexctl health 2>&1) || rc=$?
	expect "(c) roles: nobody cannot connect (exit 2)" 2 "$rc"
}

# configure_test switches to the test configuration: the debug hang hook,
# a short grace, and a short watchdog interval (a drop-in), so that the
# watchdog and drain checks take seconds, not minutes.
configure_test() {
	csh 10 'cat > /etc/idexd/idexd.toml <<"EOF"
# written by tests/systemd/run.sh
allow_unlimited = true
debug_endpoints = true
shutdown_grace = "3s"
# (e) drains ten runs of one student: above the default cap of 4 per student.
max_runs_per_student = 16
EOF
mkdir -p /etc/systemd/system/idexd.service.d
cat > /etc/systemd/system/idexd.service.d/test.conf <<"EOF"
[Service]
WatchdogSec=6s
EOF
systemctl daemon-reload'
	if ce 60 systemctl restart idexd.service; then pass "test config: restart with debug_endpoints, shutdown_grace=3s, WatchdogSec=6s"; else
		fail "test config: restart failed"; fi
	expect "test config: WatchdogUSec" 6s "$(prop idexd WatchdogUSec)"
}

# (d) a hung idexd is killed by the watchdog and restarted.
check_watchdog() {
	local before n0 t0 reply cur
	cur=$(jcursor)
	before=$(prop idexd MainPID)
	n0=$(prop idexd NRestarts)
	reply=$(ce 10 python3 -c '
import socket
s = socket.socket(socket.AF_UNIX)
s.connect("/run/idexd/idexd.sock")
s.sendall(b"POST /v1/debug/hang HTTP/1.1\r\nHost: idexd\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
print(s.recv(4096).decode().split("\r\n")[0])' 2>&1)
	if [[ $reply == "HTTP/1.1 2"* ]]; then pass "(d) watchdog: POST /v1/debug/hang: $reply"; else
		fail "(d) watchdog: POST /v1/debug/hang: $reply"; return; fi
	t0=$SECONDS
	local after="" i
	for ((i = 0; i < 300; i++)); do
		after=$(prop idexd MainPID)
		[[ $after != "$before" && $after != 0 && $(prop idexd ActiveState) == active ]] && break
		sleep 0.1
	done
	if [[ $after != "$before" && $after != 0 ]]; then
		pass "(d) watchdog: idexd restarted with a new MainPID $before -> $after ($((SECONDS - t0))s after the hang)"
	else fail "(d) watchdog: MainPID still $before (or 0) 30s after the hang"; fi
	if journal_has 'Watchdog timeout' "$cur"; then
		pass "(d) watchdog: journal says 'Watchdog timeout'"
	else fail "(d) watchdog: no 'Watchdog timeout' in the journal"; fi
	expect "(d) watchdog: NRestarts went up by one" $((n0 + 1)) "$(prop idexd NRestarts)"
	local rc=0
	T=20 idexctl health >/dev/null 2>&1 || rc=$?
	expect "(d) watchdog: the new idexd answers health" 0 "$rc"
}

# start_sleepers N PREFIX: N runs of `time.sleep(60)` by alice, started in
# the background through idexctl; waits until idexd lists them running.
start_sleepers() {
	local n=$1 prefix=$2
	csh 20 "cd /srv/idexd/students/alice && for i in \$(seq 1 $n); do
  printf 'import time\ntime.sleep(60)\n' > ${prefix}\$i.py
  chown --reference=. ${prefix}\$i.py
  (idexctl run --student alice ${prefix}\$i.py >/root/${prefix}\$i.out 2>&1; echo \$? > /root/${prefix}\$i.rc) &
done" </dev/null >/dev/null 2>&1
	local i running=0
	for ((i = 0; i < 200; i++)); do
		running=$(T=10 idexctl ps --json 2>/dev/null | grep -c "\"script\":\"${prefix}[0-9]*.py\"" || true)
		((running >= n)) && break
		# Every idexctl already exited: the runs failed to start.
		(($(csh 5 "ls /root/${prefix}*.rc 2>/dev/null | wc -l") >= n)) && break
		sleep 0.1
	done
	echo "$running"
}

# (e) systemctl stop during 10 runs: drained, ended "shutdown", exit 0.
check_stop_drain() {
	local running ids
	running=$(start_sleepers 10 sleep)
	expect "(e) stop: 10 runs running before the stop" 10 "$running"
	ids=$(T=10 idexctl ps --json | grep '"script":"sleep[0-9]*.py"' | sed -n 's/.*"id":"\([^"]*\)".*/\1/p' | sort)
	local t0=$SECONDS rc=0 cur
	cur=$(jcursor)
	ce 60 systemctl stop idexd.service || rc=$?
	expect "(e) stop: systemctl stop exits 0 (took $((SECONDS - t0))s, shutdown_grace 3s)" 0 "$rc"
	expect "(e) stop: ExecMainStatus/ExecMainCode/Result" "0 1 success" \
		"$(prop idexd ExecMainStatus) $(prop idexd ExecMainCode) $(prop idexd Result)"
	if journal_has 'State .stop-sigterm. timed out|Killing process' "$cur"; then
		fail "(e) stop: systemd had to kill processes (not a clean drain)"
	else pass "(e) stop: systemd killed nothing itself"; fi
	sleep 0.5 # the background idexctl runs write their exit codes
	expect "(e) stop: every 'idexctl run' exited 143 (shutdown)" "143 x10" \
		"$(csh 10 'cat /root/sleep*.rc' | sort | uniq -c | awk '{print $2 " x" $1}' | paste -sd' ')"
	expect "(e) stop: no python3 left" 0 "$(count_python)"
	# Start again (socket activation) and read the records back.
	local hist n=0 id line
	hist=$(T=30 idexctl history --json --limit 100 2>&1 || true)
	for id in $ids; do
		line=$(grep "\"id\":\"$id\"" <<<"$hist")
		[[ $line == *'"reason":"shutdown"'* ]] && n=$((n + 1))
	done
	expect "(e) stop: after a new start, history has the 10 runs ended with reason shutdown" 10 "$n"
	ce 30 systemctl is-active --quiet idexd.service || ce 60 systemctl start idexd.service
}

# (f) systemctl restart leaves no python3 behind, not even a setsid'd
# grandchild.
check_restart_orphans() {
	csh 10 'cat > /srv/idexd/students/alice/forker.py <<"PY"
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(60)
    os._exit(0)
time.sleep(60)
PY
chown --reference=/srv/idexd/students/alice /srv/idexd/students/alice/forker.py
(idexctl run --student alice forker.py >/dev/null 2>&1 &)' </dev/null >/dev/null 2>&1
	local running
	running=$(start_sleepers 3 nap)
	local py
	for ((i = 0; i < 50; i++)); do
		py=$(count_python)
		((py >= 5)) && break
		sleep 0.1
	done
	expect "(f) restart: 3 sleepers + a double-forking run are up (python3 processes)" 5 "$py"
	local before t0=$SECONDS rc=0
	before=$(prop idexd MainPID)
	ce 60 systemctl restart idexd.service || rc=$?
	expect "(f) restart: systemctl restart exits 0 ($((SECONDS - t0))s)" 0 "$rc"
	if [[ $(prop idexd MainPID) != "$before" ]]; then pass "(f) restart: new MainPID"; else fail "(f) restart: MainPID unchanged"; fi
	py=$(count_python)
	expect "(f) restart: no python3 processes left" 0 "$py"
	# idexd/warm.<slot> hold the new instance's idle helpers (warm_runs), not runs.
	expect "(f) restart: no run cgroups left under idexd.service" "" \
		"$(csh 10 'find /sys/fs/cgroup/system.slice/idexd.service -mindepth 2 -name cgroup.procs -path "*/idexd/*" ! -path "*/idexd/warm.*" -exec cat {} +')"
}

# (g) reload (SIGHUP) keeps the process and returns to active.
check_reload() {
	local before rc=0 cur
	cur=$(jcursor)
	before=$(prop idexd MainPID)
	ce 30 systemctl reload idexd.service || rc=$?
	expect "(g) reload: systemctl reload exits 0" 0 "$rc"
	local i ok=0
	for ((i = 0; i < 50; i++)); do
		journal_has 'reloaded limits' "$cur" && { ok=1; break; }
		sleep 0.1
	done
	if ((ok)); then pass "(g) reload: idexd reloaded its limits"; else fail "(g) reload: no 'reloaded limits' in the journal"; fi
	expect "(g) reload: same MainPID, active" "$before active" "$(prop idexd MainPID) $(prop idexd ActiveState)"
}

# The documented place for the database URL: /etc/credstore, found by
# name. The unit names no path, so a missing file is no error (as (a)
# showed); a unit with the same line proves that systemd 252 loads it.
check_credential() {
	local line got unit=$work/root/etc/systemd/system/idexd-credtest.service
	line=$(ce 10 grep '^LoadCredential=' /usr/lib/systemd/system/idexd.service)
	expect "credential: idexd.service's LoadCredential=" "LoadCredential=database-url:idexd.database-url" "$line"
	csh 10 'mkdir -p -m 0700 /etc/credstore && umask 077 && echo postgres://idexd@db/idexd > /etc/credstore/idexd.database-url'
	# shellcheck disable=SC2016 # expanded by systemd
	printf '[Service]\nType=oneshot\n%s\nExecStart=/bin/cat ${CREDENTIALS_DIRECTORY}/database-url\nStandardOutput=truncate:/root/credtest.out\n' \
		"$line" >"$unit"
	ce 10 systemctl daemon-reload
	ce 20 systemctl start idexd-credtest.service
	got=$(ce 10 cat /root/credtest.out 2>&1)
	expect "credential: /etc/credstore/idexd.database-url reaches \$CREDENTIALS_DIRECTORY/database-url" \
		"postgres://idexd@db/idexd" "$got"
	rm -f "$unit"
	csh 10 'rm -f /etc/credstore/idexd.database-url; systemctl daemon-reload'
}

# (h) reinstalling (an upgrade) keeps the edited config and restarts idexd.
check_upgrade() {
	local before rc=0 out
	before=$(prop idexd MainPID)
	out=$(ce 120 dpkg -i /root/idexd.deb 2>&1 </dev/null) || rc=$?
	expect "(h) upgrade: dpkg -i again exits 0" 0 "$rc"
	((rc == 0)) || printf '%s\n' "$out" | sed 's/^/    /'
	if [[ $(prop idexd MainPID) != "$before" && $(prop idexd ActiveState) == active ]]; then
		pass "(h) upgrade: idexd was restarted and is active"
	else fail "(h) upgrade: MainPID $before -> $(prop idexd MainPID), $(prop idexd ActiveState)"; fi
	if csh 10 'grep -q "^debug_endpoints = true" /etc/idexd/idexd.toml'; then pass "(h) upgrade: the edited /etc/idexd/idexd.toml was kept"; else
		fail "(h) upgrade: /etc/idexd/idexd.toml lost its local edit"; fi
}

# (i) purge stops and removes everything but the students' work.
check_purge() {
	local rc=0 out
	out=$(ce 120 dpkg --purge idexd 2>&1 </dev/null) || rc=$?
	expect "(i) purge: dpkg --purge idexd exits 0" 0 "$rc"
	expect "(i) purge: idexd.socket and idexd.service inactive" "inactive inactive" \
		"$(ce 10 systemctl is-active idexd.socket idexd.service | paste -sd' ')"
	expect "(i) purge: binaries, units, config and store gone" "gone" \
		"$(csh 10 'ls -d /usr/bin/idexd /usr/bin/idexctl /usr/bin/idexd-sandbox /usr/lib/systemd/system/idexd.service /etc/idexd /var/lib/idexd 2>/dev/null || echo gone')"
	expect "(i) purge: students' directories kept" "/srv/idexd/students/alice" "$(ce 10 ls -d /srv/idexd/students/alice)"
	expect "(i) purge: no python3 left" 0 "$(count_python)"
}

# run_check CHECK: a check never aborts the run (set -e does not apply
# inside a function called in an || list): it reports PASS/FAIL lines and
# the next check goes on.
run_check() { "$@" || true; }

main() {
	ensure_tools
	ensure_rootfs
	trap teardown EXIT
	trap 'exit 130' INT TERM
	sweep_stale
	boot
	local t
	t=$SECONDS
	check_install || die "install failed; nothing else can be checked"
	run_check check_package_files
	allow_unlimited
	run_check check_socket_activation
	run_check check_notify
	run_check check_run
	run_check check_credential
	say "checks (a)-(c) took $((SECONDS - t))s"
	t=$SECONDS
	run_check configure_test
	run_check check_watchdog
	say "check (d) took $((SECONDS - t))s"
	t=$SECONDS
	run_check check_stop_drain
	say "check (e) took $((SECONDS - t))s"
	t=$SECONDS
	run_check check_restart_orphans
	run_check check_reload
	say "checks (f)-(g) took $((SECONDS - t))s"
	t=$SECONDS
	run_check check_upgrade
	run_check check_purge
	say "checks (h)-(i) took $((SECONDS - t))s"
	echo "systemd-test: $passes passed, $failures failed"
	if [[ ${IDEXD_TEST_HOLD:-0} == 1 ]]; then
		echo "holding: enter with 'nsenter -t $pid1 -a bash'; Ctrl-C (or kill $$) ends it"
		while :; do
			sleep 3600 &
			hold_pid=$!
			wait "$hold_pid" # unlike a foreground sleep, wait lets the trap run at once
		done
	fi
	((failures == 0))
}

main "$@"
