#!/bin/bash
# inside.sh runs inside the vm-test VM (Debian 12, a real systemd as PID 1,
# a real cgroup v2 with the memory, pids and cpu controllers), started by
# idexd-vm-test.service once multi-user.target is reached. It installs the
# idexd .deb found beside it, keeps the package's default configuration
# (Delegate=yes, no allow_unlimited) and checks, one PASS/FAIL line each:
#   (a) notify, delegated controllers, idexd in <own>/daemon, health
#   (b) a run as a student uid in the student's directory
#   (c) the limits, read from the run's own v2 group while it runs
#   (d) OOM kill -> oom_killed      (e) fork bomb held by pids.max
#   (f) CPU-time limit -> timed_out (g) warm starts get their own limits
#   (x) the hostile corpus (e2e TestHostile), when e2e.test is beside it
#   (h) systemctl stop during 3 runs: drained, shutdown, nothing left
# Its stdout is the test's result (the wrapper copies it to the serial
# console and to results.txt on the vmtest disk); it ends with one line
# "vm-test: N passed, M failed". It never aborts half-way: a failed check
# prints FAIL and the next one goes on.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER='' SYSTEMD_COLORS=0
t0=$SECONDS
failures=0 passes=0
say() { printf 'vm: [%3ds] %s\n' $((SECONDS - t0)) "$*"; }
pass() { echo "PASS $*"; passes=$((passes + 1)); }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
# expect NAME WANT GOT
expect() { if [[ $3 == "$2" ]]; then pass "$1"; else fail "$1: got '$3', want '$2'"; fi; }
oneline() { tr '\n' '|' <<<"$1" | sed 's/|$//'; }
prop() { timeout 10 systemctl show -P "$2" "$1" 2>/dev/null || true; }
# Every idexctl call has a deadline: software emulation is slow, but a hang
# must end as a FAIL, not as the host's timeout.
ictl() { timeout -k 5 "${T:-60}" idexctl "$@"; }
# count_python: live python3 processes (zombies not counted).
count_python() { ps -eo stat=,comm= | awk '$2 ~ /^python3/ && $1 !~ /^Z/' | wc -l; }
# python3-minimal has no json module: jq reads idexd's JSON.
# jfield FIELD: a top-level field of the JSON object on stdin ("" if none).
jfield() { jq -r --arg f "$1" '.[$f] // empty' 2>/dev/null || true; }
# end_run: the "run" object of the end event in `idexctl --json run` output.
end_run() { jq -Rc 'fromjson? | select(.type == "end") | .run' 2>/dev/null || true; }
# stdout_of: the stdout data of `idexctl --json run` output, decoded.
stdout_of() { jq -Rj 'fromjson? | select(.type == "stdout") | if .data then .data else (.b64 | @base64d) end' 2>/dev/null || true; }
svc_cg=/sys/fs/cgroup/system.slice/idexd.service
stu=/srv/idexd/students/alice
# put NAME: writes stdin to alice's NAME, owned by alice.
put() { cat >"$stu/$1" && chown --reference="$stu" "$stu/$1"; }

# An observer, not a configuration change: when idexd has exited and before
# systemd cleans up, list the groups left under idexd.service.
observe_stop() {
	cat >/usr/local/sbin/vmtest-snap-cgroups <<'SH'
#!/bin/sh
cd /sys/fs/cgroup/system.slice/idexd.service 2>/dev/null || { echo "(no idexd.service group)" > /run/vmtest-cgroups-at-stop; exit 0; }
{
	find . -mindepth 1 -type d | sort
	# ./.control holds this very process (systemd's control group).
	echo "procs: $(find . -path ./.control -prune -o -name cgroup.procs -exec cat {} + | tr '\n' ' ')"
} > /run/vmtest-cgroups-at-stop
SH
	chmod 755 /usr/local/sbin/vmtest-snap-cgroups
	mkdir -p /etc/systemd/system/idexd.service.d
	# Written before the package is installed: its postinst's daemon-reload
	# reads it (a reload of our own takes long in software emulation).
	printf '[Service]\n# tests/vm: observe the groups idexd left, right after it exited\nExecStopPost=+/usr/local/sbin/vmtest-snap-cgroups\n' \
		>/etc/systemd/system/idexd.service.d/vmtest-observe.conf
}

# ---- setup ---------------------------------------------------------------------

say "kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
say "cgroup2 root controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
# Where the boot's time went (seconds since the kernel started).
say "boot: $(timeout 20 journalctl -b -o short-monotonic --no-pager 2>/dev/null | awk '
	/Run \/init as init process/ { i = $2 }
	/running in system mode/ { r = $2 }
	/Reached target multi-user.target/ { m = $2 }
	END { gsub(/[][]/, "", i); gsub(/[][]/, "", r); gsub(/[][]/, "", m)
		printf "kernel %.0fs, initrd %.0fs, systemd to multi-user.target %.0fs", i, r - i, m - r }')"
if [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]]; then pass "host: /sys/fs/cgroup is cgroup2 (unified)"; else
	fail "host: /sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup), not cgroup2"; fi

observe_stop
deb=$(find "$here" -maxdepth 1 -name 'idexd_*.deb' | head -n1)
if out=$(DEBIAN_FRONTEND=noninteractive timeout 300 dpkg -i "$deb" 2>&1 </dev/null); then
	pass "install: dpkg -i $(basename "$deb")"
else
	fail "install: dpkg -i $(basename "$deb")"
	printf '%s\n' "$out" | sed 's/^/    /'
	echo "vm-test: $passes passed, $failures failed (install failed: nothing else can be checked)"
	exit 1
fi
if grep -Eq '^[[:space:]]*allow_unlimited' /etc/idexd/idexd.toml; then
	fail "install: /etc/idexd/idexd.toml sets allow_unlimited (the default config must not)"
else pass "install: default config (no allow_unlimited), Delegate=$(prop idexd Delegate)"; fi
# (g) starts six of alice's runs at once, above the default cap of four per
# student (fair share, issue 12): the test raises it, as a sysadmin would.
f=/etc/idexd/idexd.toml
{ printf '# tests/vm/inside.sh: (g) runs six of one student at once\nmax_runs_per_student = 8\n\n'; cat "$f"; } >"$f.new" && cat "$f.new" >"$f" && rm "$f.new"

# ---- (a) ---------------------------------------------------------------------------

check_a() {
	local rc=0 t=$SECONDS
	timeout 180 systemctl start idexd.service || rc=$?
	expect "(a) systemctl start idexd.service exits 0 ($((SECONDS - t))s)" 0 "$rc"
	expect "(a) Type/ActiveState/SubState" "notify active running" \
		"$(prop idexd Type) $(prop idexd ActiveState) $(prop idexd SubState)"
	local status
	status=$(prop idexd StatusText)
	if [[ $status == *accepting* ]]; then pass "(a) READY=1 and STATUS= '$status'"; else
		fail "(a) STATUS= '$status', want '... accepting'"; fi
	local ctl
	ctl=$(cat "$svc_cg/cgroup.controllers" 2>&1)
	if [[ " $ctl " == *" cpu "* && " $ctl " == *" memory "* && " $ctl " == *" pids "* ]]; then
		pass "(a) Delegate=yes: $svc_cg/cgroup.controllers = '$ctl'"
	else fail "(a) Delegate=yes: $svc_cg/cgroup.controllers = '$ctl', want cpu memory pids"; fi
	local pid cg
	pid=$(prop idexd MainPID)
	cg=$(sed -n 's/^0:://p' "/proc/$pid/cgroup" 2>&1)
	expect "(a) idexd moved itself into a leaf" /system.slice/idexd.service/daemon "$cg"
	local sub
	sub=$(cat "$svc_cg/cgroup.subtree_control" 2>&1)
	say "idexd.service/cgroup.subtree_control = '$sub'; $svc_cg/idexd/cgroup.subtree_control = '$(cat "$svc_cg/idexd/cgroup.subtree_control" 2>&1)'"
	local out
	rc=0
	out=$(T=30 ictl health 2>&1) || rc=$?
	expect "(a) 'idexctl health' exits 0 ($(oneline "$out"))" 0 "$rc"
	expect "(a) health reports cgroup_mode unified" unified "$(T=30 ictl --json health 2>/dev/null | jfield cgroup_mode)"
}

# ---- (b) ---------------------------------------------------------------------------

check_b() {
	local out rc=0
	out=$(ictl student alice 2>&1) || rc=$?
	expect "(b) 'idexctl student alice' exits 0" 0 "$rc"
	local st uid
	# The private layout (the default): the student's, 0700.
	st=$(stat -c '%a %u %g' "$stu" 2>&1)
	uid=${st#* }
	uid=${uid%% *}
	if [[ $uid =~ ^[0-9]+$ && $st == "700 $uid $uid" ]] && ((uid >= 200000)); then
		pass "(b) alice's directory is 700 $uid:$uid"
	else fail "(b) alice's directory is '$st', want 700 <uid >= 200000>:<the same gid>"; fi
	put hello.py <<'PY'
import os
print("hello from idexd")
print("uid", os.getuid(), "cwd", os.getcwd())
PY
	rc=0
	out=$(ictl run --student alice hello.py 2>&1) || rc=$?
	expect "(b) 'idexctl run --student alice hello.py' exits 0" 0 "$rc"
	if [[ $out == *"hello from idexd"* ]]; then pass "(b) the expected output"; else
		fail "(b) no 'hello from idexd' in: $(oneline "$out")"; fi
	expect "(b) ran as alice's uid in her directory" "uid $uid cwd $stu" "$(grep '^uid ' <<<"$out")"
}

# ---- (c) and (g) ---------------------------------------------------------------------

put_limits() {
	put limits.py <<'PY'
import os, sys, time
cg = open("/proc/self/cgroup").read()
print(cg, end="", flush=True)
path = "/sys/fs/cgroup" + cg.strip().split("::", 1)[1]
for f in ("memory.max", "memory.swap.max", "pids.max", "cpu.max"):
    try:
        print(f, open(os.path.join(path, f)).read().strip())
    except FileNotFoundError:
        print(f, "absent")
    except OSError as e:
        print(f, "unreadable:", e)
print("done reading", flush=True)
# The harness reads the same group as root meanwhile, then creates this
# file; at most 60 s.
for _ in range(1200):
    if os.path.exists(sys.argv[1]):
        break
    time.sleep(0.05)
PY
}

# helper_threads CG: the threads of the run's PID 1 (idexd's helper) in
# group CG. They count against the group's pids.max, so idexd sets it to
# the run's pids limit plus them.
helper_threads() {
	local p
	for p in $(cat "/sys/fs/cgroup$1/cgroup.procs" 2>/dev/null); do
		if [[ $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) == idexd-sandbox-helper* ]]; then
			sed -n 's/^Threads:[[:space:]]*//p' "/proc/$p/status"
			return
		fi
	done
	echo 0
}

# want_limits TAG MIB SOURCE TEXT: checks "file value" lines in TEXT.
# pids_max is the run's pids limit (256) plus its helper's threads.
pids_max=256
want_limits() {
	local tag=$1 mib=$2 src=$3 text=$4 swap
	expect "$tag memory.max ($src)" "memory.max $((mib * 1048576))" "$(grep '^memory.max ' <<<"$text")"
	swap=$(grep '^memory.swap.max ' <<<"$text")
	if [[ $swap == "memory.swap.max absent" ]]; then
		pass "$tag memory.swap.max ($src): no such file on this kernel"
	else expect "$tag memory.swap.max ($src)" "memory.swap.max 0" "$swap"; fi
	expect "$tag pids.max, the default 256 and the helper's threads ($src)" "pids.max $pids_max" "$(grep '^pids.max ' <<<"$text")"
	expect "$tag cpu.max, 100% ($src)" "cpu.max 100000 100000" "$(grep '^cpu.max ' <<<"$text")"
}

# limits_run TAG MIB: one run of limits.py with --memory MIB MiB. The
# limits are read twice while it runs: by the script itself (its own
# group's files, as the student) and by root from the same group. Sets
# kind to warm (the group is a warm helper's, idexd/warm.<slot>) or cold.
kind=""
limits_run() {
	local tag=$1 mib=$2 out=/root/limits.out rc=0 cg="" i f outside="" text
	rm -f "$out" /root/limits.rc "$stu/limits.done"
	(
		ictl run --student alice --memory "${mib}MiB" limits.py limits.done >"$out" 2>&1
		echo $? >/root/limits.rc
	) </dev/null &
	for ((i = 0; i < 300; i++)); do
		cg=$(sed -n 's/^0:://p' "$out" 2>/dev/null)
		[[ -n $cg || -s /root/limits.rc ]] && break
		sleep 0.1
	done
	if [[ -n $cg && -d /sys/fs/cgroup$cg ]]; then
		pids_max=$((256 + $(helper_threads "$cg")))
		for f in memory.max memory.swap.max pids.max cpu.max; do
			if [[ -f /sys/fs/cgroup$cg/$f ]]; then
				outside+="$f $(cat "/sys/fs/cgroup$cg/$f" 2>&1)"$'\n'
			else outside+="$f absent"$'\n'; fi
		done
		outside+="group dir $(stat -c '%a %U:%G' "/sys/fs/cgroup$cg")"
	fi
	touch "$stu/limits.done"
	wait
	rc=$(cat /root/limits.rc 2>/dev/null)
	text=$(cat "$out" 2>/dev/null)
	kind=cold
	[[ $cg == */idexd/warm.* ]] && kind=warm
	expect "$tag --memory ${mib}MiB: exits 0 ($kind start, group $cg)" 0 "$rc"
	if [[ $cg == /system.slice/idexd.service/idexd/* ]]; then
		pass "$tag the run's group is in idexd's delegated tree"
	else fail "$tag /proc/self/cgroup: '$(oneline "$text")', want 0::/system.slice/idexd.service/idexd/..."; fi
	if [[ -n $outside ]]; then
		want_limits "$tag" "$mib" "read by root while it ran" "$outside"
	else fail "$tag could not read the run's group while it ran (group '$cg')"; fi
	if grep -q unreadable <<<"$text"; then
		fail "$tag the script cannot read its own group's limits: $(grep -m1 unreadable <<<"$text"); the group is $(grep '^group dir' <<<"$outside")"
	else want_limits "$tag" "$mib" "read by the run itself" "$text"; fi
}

check_c() {
	put_limits
	limits_run "(c) limits:" 64
}

# ---- (d) ---------------------------------------------------------------------------

check_d() {
	put hog.py <<'PY'
print("allocating 256 MiB", flush=True)
b = b"\x01" * (256 << 20)   # written, not just reserved
print("survived with", len(b) >> 20, "MiB")
PY
	local out rc=0 run id main_pid
	main_pid=$(prop idexd MainPID)
	out=$(T=120 ictl --json run --student alice --memory 64MiB hog.py 2>&1) || rc=$?
	run=$(end_run <<<"$out")
	id=$(jfield id <<<"$run")
	expect "(d) OOM: 'idexctl run --memory 64MiB hog.py' exits 137" 137 "$rc"
	local shown reason
	shown=$(ictl --json show "$id" 2>&1)
	reason=$(jfield reason <<<"$shown")
	expect "(d) OOM: 'idexctl --json show $id' reason" oom_killed "$reason"
	say "(d) the hog's record: $shown"
	[[ $(stdout_of <<<"$out") == *survived* ]] && fail "(d) OOM: the hog survived a 64 MiB limit"
	# OOMPolicy=continue: the kill inside a run's group leaves idexd alone.
	expect "(d) OOM: idexd.service still active, same MainPID, no restart" "active $main_pid 0" \
		"$(prop idexd ActiveState) $(prop idexd MainPID) $(prop idexd NRestarts)"
	return 0
}

# ---- (e) ---------------------------------------------------------------------------

check_e() {
	put bomb.py <<'PY'
import errno, gc, os, time
t0 = time.monotonic()
gc.freeze()   # fewer copy-on-write faults per fork: emulated ones are slow
group = open("/proc/self/cgroup").read().strip().split("::", 1)[1]
print("group", group, flush=True)
with open("bomb.group", "w") as f:   # for the harness, which samples pids.current
    f.write(group)
told = False
while True:
    try:
        os.fork()
    except OSError as e:
        if e.errno != errno.EAGAIN:
            raise
        if not told:
            told = True
            print("EAGAIN in pid", os.getpid(), "after %.1fs" % (time.monotonic() - t0), flush=True)
        time.sleep(0.2)
PY
	local out rc run id grp peak t tmo
	# With the host busy with other work, emulation can get so slow that
	# the bomb has not reached its limit, or has not printed that it did,
	# when its 5 s are up (seen at a load average of 30 on 2 cores: the
	# kernel refused a fork 3 s before the end and no process had printed
	# yet). Then, and only then, it runs again with 20 s.
	for tmo in 5 20; do
		bomb_attempt "$tmo"
		[[ $(stdout_of <<<"$out") == *EAGAIN* ]] && break
		[[ $tmo == 20 ]] && break
		say "(e) no EAGAIN in ${tmo}s (pids.current peaked at $peak; the VM is slow): again with --timeout 20s"
	done
	expect "(e) fork bomb: 'idexctl run --timeout ${tmo}s bomb.py' exits 124 ($((SECONDS - t))s)" 124 "$rc"
	expect "(e) fork bomb: reason" timed_out "$(jfield reason <<<"$run")"
	if [[ $(stdout_of <<<"$out") == *EAGAIN* ]]; then
		pass "(e) fork bomb: the script saw EAGAIN ($(stdout_of <<<"$out" | grep -c EAGAIN) processes said so; first $(stdout_of <<<"$out" | grep -o -m1 'after [0-9.]*s'); pids.current peaked at $peak)"
	else
		fail "(e) fork bomb: no EAGAIN in the output (pids.current peaked at $peak)"
		jq -Rr 'fromjson? | select(.type != "end") | "\(.type) \(.data // (.b64 // "" | @base64d) // "")"' <<<"$out" 2>&1 | head -20 | sed 's/^/    /'
		grep -v '^{' <<<"$out" | head -5 | sed 's/^/    idexctl: /'
	fi
	# The kernel's word for it (it says so once per group).
	if [[ -n $grp ]] && timeout 20 journalctl -k -b --no-pager -o cat 2>/dev/null | grep -qF "fork rejected by pids controller in $grp"; then
		pass "(e) fork bomb: the kernel says 'fork rejected by pids controller in $grp'"
	else fail "(e) fork bomb: no 'fork rejected by pids controller in ${grp:-the run group}' in the kernel log"; fi
	local py
	py=$(count_python)
	expect "(e) fork bomb: no python3 process left" 0 "$py"
	((py == 0)) || ps -o pid,ppid,stat,user,cgroup,args -p "$(pgrep -d, python3)" | sed 's/^/    /'
	if [[ -n $grp && ! -d /sys/fs/cgroup$grp ]]; then pass "(e) fork bomb: its group $grp is gone"; else
		fail "(e) fork bomb: its group '${grp:-unknown}' is still there"; fi
}

# bomb_attempt TIMEOUT: runs bomb.py with --timeout TIMEOUT in the
# background and follows its group's pids.current meanwhile. Sets out, rc,
# run, id, grp, peak (the highest pids.current seen) and t (start).
bomb_attempt() {
	local f=/root/bomb.out i n
	rm -f "$f" /root/bomb.rc "$stu/bomb.group"
	t=$SECONDS grp="" peak=0
	(
		T=120 ictl --json run --student alice --timeout "$1s" bomb.py >"$f" 2>&1
		echo $? >/root/bomb.rc
	) </dev/null &
	for ((i = 0; i < 1500; i++)); do
		[[ -s /root/bomb.rc ]] && break
		# Cheap in the loop: builtins only.
		[[ -n $grp ]] || read -r grp 2>/dev/null <"$stu/bomb.group"
		if [[ -n $grp ]]; then
			n=0
			read -r n 2>/dev/null <"/sys/fs/cgroup$grp/pids.current"
			((n > peak)) && peak=$n
		fi
		sleep 0.1
	done
	wait
	out=$(cat "$f")
	rc=$(cat /root/bomb.rc 2>/dev/null || echo none)
	run=$(end_run <<<"$out")
	id=$(jfield id <<<"$run")
	[[ -n $grp ]] || grp=$(stdout_of <<<"$out" | sed -n 's/^group //p' | head -n1)
	# When, in seconds since boot: the run started, the kernel first
	# refused a fork in its group, the run ended.
	local j
	j=$(timeout 20 journalctl -b --no-pager -o short-monotonic 2>/dev/null)
	at() { grep -F "$1" <<<"$j" | head -n1 | awk '{ gsub(/[][]/, "", $2); print $2 }'; }
	say "(e) --timeout $1s: run started at $(at "run started run=$id "), first fork refused at $(at "fork rejected by pids controller in ${grp:-none}"), run ended at $(at "run ended run=$id ");" \
		"pids.current peaked at $peak; $(stdout_of <<<"$out" | grep -c EAGAIN) EAGAIN lines; rc $rc"
}

# ---- (f) ---------------------------------------------------------------------------

check_f() {
	put busy.py <<'PY'
while True:
    pass
PY
	local out rc=0 run id t=$SECONDS cpu wall
	out=$(T=120 ictl --json run --student alice --cpu 1s busy.py 2>&1) || rc=$?
	run=$(end_run <<<"$out")
	id=$(jfield id <<<"$run")
	expect "(f) CPU limit: 'idexctl run --cpu 1s busy.py' exits 124 ($((SECONDS - t))s)" 124 "$rc"
	local shown
	shown=$(ictl --json show "$id" 2>&1)
	expect "(f) CPU limit: reason" timed_out "$(jfield reason <<<"$shown")"
	cpu=$(jfield cpu_ms <<<"$shown")
	wall=$(jfield wall_ms <<<"$shown")
	# Ended by CPU time, not by the 30 s wall clock default.
	if [[ $cpu =~ ^[0-9]+$ && $wall =~ ^[0-9]+$ ]] && ((cpu >= 1000 && wall < 20000)); then
		pass "(f) CPU limit: ended by CPU time (cpu_ms $cpu, wall_ms $wall)"
	else fail "(f) CPU limit: cpu_ms '$cpu', wall_ms '$wall', want cpu_ms >= 1000 and wall_ms well below the 30 s wall limit"; fi
}

# ---- (g) ---------------------------------------------------------------------------

metric() {
	timeout 20 curl -sS --unix-socket /run/idexd/idexd.sock http://x/metrics 2>/dev/null |
		awk -v m="$1" '$1 == m { print $2 }'
}

# limits_burst N MIB: N runs of limits.py at once (more than warm_runs, so
# that some must start cold), each checked like limits_run, as read by root.
limits_burst() {
	local n=$1 mib=$2 i k cg out rc warm=0 cold=0 ok=0 f v bad=""
	rm -f /root/burst*.out /root/burst*.rc "$stu/limits.done"
	for ((i = 1; i <= n; i++)); do
		# A script of its own for each: a running script is locked.
		cp "$stu/limits.py" "$stu/burst$i.py"
		chown --reference="$stu" "$stu/burst$i.py"
		(
			ictl run --student alice --memory "${mib}MiB" "burst$i.py" limits.done >"/root/burst$i.out" 2>&1
			echo $? >"/root/burst$i.rc"
		) </dev/null &
	done
	declare -A groups=()
	for ((k = 0; k < 600; k++)); do
		for ((i = 1; i <= n; i++)); do
			[[ -n ${groups[$i]:-} ]] && continue
			cg=$(sed -n 's/^0:://p' "/root/burst$i.out" 2>/dev/null)
			[[ -n $cg ]] && groups[$i]=$cg
		done
		((${#groups[@]} == n)) && break
		(($(find /root -maxdepth 1 -name 'burst*.rc' | wc -l) == n)) && break
		sleep 0.2
	done
	for ((i = 1; i <= n; i++)); do
		cg=${groups[$i]:-}
		if [[ -z $cg ]]; then
			bad+=" run $i: no group ($(head -c 200 "/root/burst$i.out" 2>/dev/null | tr '\n' ' '));"
			continue
		fi
		[[ $cg == */idexd/warm.* ]] && warm=$((warm + 1)) || cold=$((cold + 1))
		out=""
		pids_max=$((256 + $(helper_threads "$cg")))
		for f in memory.max memory.swap.max pids.max cpu.max; do
			v=absent
			[[ -f /sys/fs/cgroup$cg/$f ]] && v=$(cat "/sys/fs/cgroup$cg/$f" 2>&1)
			out+="$f=$v "
		done
		if [[ $out == "memory.max=$((mib * 1048576)) memory.swap.max="@(0|absent)" pids.max=$pids_max cpu.max=100000 100000 " ]]; then
			ok=$((ok + 1))
		else bad+=" run $i ($cg): $out;"; fi
	done
	touch "$stu/limits.done"
	wait
	rc=$(cat /root/burst*.rc 2>/dev/null | sort | uniq -c | awk '{print $2 "x" $1}' | paste -sd' ')
	expect "(g) burst of $n runs at once: every 'idexctl run' exits 0" "0x$n" "$rc"
	if ((ok == n)); then
		pass "(g) burst of $n runs at once: each had the limits it asked for, read by root while they ran (warm=$warm cold=$cold)"
	else fail "(g) burst of $n runs at once: $ok of $n had the right limits:$bad"; fi
	((cold > 0)) || say "(g) burst: no run started cold (the pool refilled in time); cold starts' limits not seen"
}

check_g() {
	put_limits
	local before after i mib warm=0 cold=0 kinds
	before=$(metric idexd_runs_warm_started_total)
	say "(g) idexd_runs_warm_started_total before: '${before:-none}'"
	# Different memory limits each time: a warm helper was prepared with
	# the defaults (512 MiB), so a claimed one must have been updated.
	for i in 1 2 3; do
		mib=$((32 * (i + 1)))
		limits_run "(g) run $i:" "$mib"
		if [[ $kind == warm ]]; then warm=$((warm + 1)); else cold=$((cold + 1)); fi
		sleep 0.5 # let the pool refill
	done
	kinds="warm=$warm cold=$cold"
	# More runs at once than warm_runs (4): some of them start cold.
	limits_burst 6 48
	after=$(metric idexd_runs_warm_started_total)
	say "(g) idexd_runs_warm_started_total after: '${after:-none}'; starts: $kinds"
	if [[ $after =~ ^[0-9.e+]+$ ]] && awk -v a="$after" 'BEGIN { exit !(a > 0) }'; then
		pass "(g) idexd_runs_warm_started_total = $after > 0"
	else fail "(g) idexd_runs_warm_started_total = '${after:-missing}', want > 0"; fi
	if ((warm > 0)); then pass "(g) at least one limits run started warm ($kinds), with the limits it asked for (above)"; else
		fail "(g) no limits run started in a warm helper's group ($kinds)"; fi
}

# ---- (x) ---------------------------------------------------------------------------

# check_x runs the hostile corpus against the installed idexd: every case
# of e2e/hostile_test.go (each an attack sent through the socket, judged
# from outside the run) is one PASS/FAIL line here; a failing case's
# findings follow it.
check_x() {
	local bin=$here/e2e.test out=/root/hostile.out rc=0 t=$SECONDS
	if [[ ! -x $bin ]]; then
		say "(x) no e2e.test on the vmtest disk: the hostile corpus is not run"
		return 0
	fi
	cd /root || return 0
	IDEXD_E2E_BIN=/usr/bin IDEXD_HOSTILE_SOCKET=/run/idexd/idexd.sock IDEXD_HOSTILE_STUDENTS=/srv/idexd/students \
		timeout -k 10 900 "$bin" -test.run '^TestHostile$' -test.v -test.timeout 14m >"$out" 2>&1 || rc=$?
	local name verdict n=0
	while read -r verdict name; do
		n=$((n + 1))
		if [[ $verdict == PASS ]]; then
			pass "(x) hostile: $name"
		else
			fail "(x) hostile: $name"
			# Its findings: the test's own lines between its RUN and its end.
			awk -v n="TestHostile/$name" '$0 ~ "^=== (RUN|NAME|CONT) +" n "$" { on = 1; next }
				/^=== (RUN|NAME|CONT)/ { on = 0 }
				on && /_test\.go:[0-9]+:/ && !/proves:/ { print }' "$out" | cut -c1-400 | head -n 30 | sed 's/^ */    /'
		fi
	done < <(sed -n 's/^ *--- \(PASS\|FAIL\|SKIP\): TestHostile\/\([^ ]*\) .*/\1 \2/p' "$out")
	if ((n == 0 || rc != 0)) && ! grep -q '^ *--- FAIL: TestHostile/' "$out"; then
		fail "(x) hostile: the corpus exited $rc without a failing case ($n cases ran)"
		tail -n 30 "$out" | cut -c1-400 | sed 's/^/    /'
	fi
	# The figures read on the host before, during and after.
	grep -E 'host before:|host after the corpus|host Shmem before|sockets, .* queued|run ended .*peak memory|three together reached' "$out" |
		sed 's/^ *[a-z_]*_test\.go:[0-9]*: /(x) /' | cut -c1-300 | while read -r line; do say "$line"; done
	say "(x) the hostile corpus took $((SECONDS - t))s ($n cases, exit $rc)"
}

# ---- (h) ---------------------------------------------------------------------------

check_h() {
	local i
	for i in 1 2 3; do
		printf 'import time\nprint("sleeping", flush=True)\ntime.sleep(60)\n' | put "sleep$i.py"
		(
			ictl run --student alice "sleep$i.py" >"/root/sleep$i.out" 2>&1
			echo $? >"/root/sleep$i.rc"
		) </dev/null &
	done
	local running=0 ids
	for ((i = 0; i < 300; i++)); do
		running=$(T=10 ictl ps --json 2>/dev/null | grep -c '"script":"sleep[0-9].py"' || true)
		((running >= 3)) && break
		sleep 0.2
	done
	expect "(h) stop: 3 runs running" 3 "$running"
	ids=$(T=10 ictl ps --json 2>/dev/null | grep '"script":"sleep[0-9].py"' | sed -n 's/.*"id":"\([^"]*\)".*/\1/p' | sort)
	local t=$SECONDS rc=0 since
	since=$(date '+%Y-%m-%d %H:%M:%S')
	timeout 120 systemctl stop idexd.service || rc=$?
	expect "(h) stop: 'systemctl stop idexd' exits 0 ($((SECONDS - t))s, shutdown_grace 10s)" 0 "$rc"
	expect "(h) stop: ExecMainStatus/ExecMainCode/Result" "0 1 success" \
		"$(prop idexd ExecMainStatus) $(prop idexd ExecMainCode) $(prop idexd Result)"
	wait
	expect "(h) stop: every 'idexctl run' exited 143 (shutdown)" "143 143 143" \
		"$(cat /root/sleep[123].rc 2>/dev/null | paste -sd' ')"
	local j
	j=$(timeout 20 journalctl -u idexd.service --since "$since" --no-pager -o cat 2>/dev/null)
	if grep -Eq 'Killing process|left-over process|remains running|stop-sigterm. timed out' <<<"$j"; then
		fail "(h) stop: systemd had to kill processes itself: $(oneline "$(grep -E 'Killing process|left-over|remains running|timed out' <<<"$j" | head -5)")"
	else pass "(h) stop: systemd killed nothing itself"; fi
	expect "(h) stop: no python3 left" 0 "$(count_python)"
	local snap
	snap=$(cat /run/vmtest-cgroups-at-stop 2>&1)
	say "(h) groups under idexd.service right after idexd exited: $(oneline "$snap")"
	expect "(h) stop: no run cgroups left when idexd exited (idexd/<student>/<run>)" "" \
		"$(grep -E '^\./idexd/[^/]+/[^/]+$' <<<"$snap" | grep -v '/warm\.' | paste -sd' ')"
	# The helpers' groups (idexd/warm.<slot>) must be gone; an empty
	# <student> directory is a container that systemd trims.
	expect "(h) stop: no warm helper groups (idexd/warm.<slot>) left when idexd exited" "" \
		"$(grep -E '^\./idexd/warm\.' <<<"$snap" | paste -sd' ')"
	expect "(h) stop: no process left in idexd.service's groups when idexd exited" "procs:" "$(grep '^procs:' <<<"$snap" | xargs echo)"
	expect "(h) stop: nothing left under idexd.service now" "" \
		"$(find "$svc_cg" -mindepth 1 -type d 2>/dev/null | paste -sd' ')"
	# A new client call starts idexd again through idexd.socket.
	local hist n=0 id line
	hist=$(T=120 ictl history --json --limit 50 2>&1 || true)
	for id in $ids; do
		line=$(grep "\"id\":\"$id\"" <<<"$hist")
		[[ $line == *'"reason":"shutdown"'* ]] && n=$((n + 1))
	done
	expect "(h) stop: after a new start, history has the 3 runs ended with reason shutdown" 3 "$n"
}

for c in check_a check_b check_c check_d check_e check_f check_g check_x check_h; do
	t=$SECONDS
	"$c" || true
	say "$c took $((SECONDS - t))s"
done

if ((failures > 0)); then
	echo "---- journal of idexd (last 80 lines) ----"
	timeout 20 journalctl -u idexd.service -u idexd.socket --no-pager -n 80 -o short-monotonic 2>&1 | sed 's/^/    /'
fi
echo "vm-test: $passes passed, $failures failed"
((failures == 0))
