#!/bin/bash
# What a busy second CPU costs the python on the first: print('hi') spawned
# back to back from a loop pinned to CPU 0, its children's CPU summed from
# RUSAGE_CHILDREN, alone and then with a shell spinning on CPU 1. On this
# 2-vCPU guest both vCPUs share one core's resources, so whatever runs
# beside a run (idexd, its client, a helper arming the next run) makes the
# run's python itself slower. Run from a directory with hi.py:
#   bench/experiments/contention.sh RUNS ROUNDS
set -euo pipefail
runs=${1:-100} rounds=${2:-3}
loop=$(mktemp)
trap 'rm -f "$loop"' EXIT
cat >"$loop" <<'PY'
import os, sys, resource
n = int(sys.argv[1]); dn = os.open('/dev/null', os.O_WRONLY)
for _ in range(n):
    pid = os.posix_spawn('/usr/bin/python3', ['python3', 'hi.py'], {'PATH': '/usr/bin:/bin'},
                         file_actions=[(os.POSIX_SPAWN_DUP2, dn, 1)])
    _, status = os.waitpid(pid, 0)
    if status != 0:
        sys.exit(f"python3 hi.py ended with status {status}")
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("%.2f ms/run" % ((r.ru_utime + r.ru_stime) * 1000 / n))
PY
for ((i = 1; i <= rounds; i++)); do
	echo "round $i: alone: $(taskset -c 0 python3 "$loop" "$runs")"
	taskset -c 1 sh -c 'while :; do :; done' &
	spin=$!
	sleep 0.2
	out=$(taskset -c 0 python3 "$loop" "$runs")
	kill "$spin"
	wait "$spin" 2>/dev/null || true
	echo "round $i: CPU 1 busy: $out"
done
