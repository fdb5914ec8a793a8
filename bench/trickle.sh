#!/usr/bin/env bash
# Issue 14.9: a program writing one byte every 1.1 ms for 580 s, followed by
# idexctl run, against two idexd builds at once: daemon heap and events.
# usage: bench/trickle.sh NAME BINDIR  (BINDIR holds idexd, idexctl, idexd-sandbox)
set -euo pipefail
name=$1 bin=$2
d=/var/lib/trickle-$name; rm -rf $d; mkdir -p $d
printf 'client_group = "root"\nadmin_group = "root"\nkeep_ended_mb = 64\n[max]\nwall_seconds = 600\n' > $d/idexd.toml
$bin/idexd --config $d/idexd.toml --socket $d/s.sock --workdir-root $d/students --state-dir $d/state --cgroup-parent trickle-$name > $d/idexd.log 2>&1 &
pid=$!
export IDEX_SOCKET=$d/s.sock
for i in $(seq 50); do [ -S $d/s.sock ] && break; sleep 0.2; done
$bin/idexctl student alice >/dev/null
printf 'import os, time\nend = time.time() + 580\nwhile time.time() < end:\n    os.write(1, b".")\n    time.sleep(0.0011)\n' | $bin/idexctl files put --student alice trickle.py
m() { curl -s --unix-socket $d/s.sock http://x/metrics | awk -v k="$1" '$1==k {print $2}'; }
echo "t=0 heap_inuse=$(m go_memstats_heap_inuse_bytes) rss=$(m process_resident_memory_bytes)" > $d/samples
$bin/idexctl run --student alice --timeout 600s trickle.py > $d/out 2>$d/err &
rp=$!
for t in 60 120 180 240 300 360 420 480 540 570; do
  if [ $t = 570 ]; then sleep 30; else sleep 60; fi
  echo "t=$t heap_inuse=$(m go_memstats_heap_inuse_bytes) rss=$(m process_resident_memory_bytes)" >> $d/samples
done
wait $rp || true
id=$(curl -s --unix-socket $d/s.sock 'http://x/v1/runs?student=alice' | python3 -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["id"])')
curl -s --unix-socket $d/s.sock "http://x/v1/runs/$id/events" > $d/events
echo "events=$(wc -l < $d/events) output_bytes=$(wc -c < $d/out)" >> $d/samples
echo "after end heap_inuse=$(m go_memstats_heap_inuse_bytes) rss=$(m process_resident_memory_bytes)" >> $d/samples
kill $pid; wait $pid || true
cat $d/samples
