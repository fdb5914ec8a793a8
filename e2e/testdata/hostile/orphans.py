"""Orphans a grandchild (its parent exits), waits while the harness looks
at who adopted it, lets it exit and checks that it was reaped; then
leaves a detached sleeper behind and exits."""
import os
import subprocess
import time

from hostilelib import ready, result

r, w = os.pipe()
child = os.fork()
if child == 0:
    if os.fork() == 0:
        os.close(w)
        os.read(r, 1)  # until the script closes its end
        os._exit(0)
    os._exit(0)
os.close(r)
os.waitpid(child, 0)
# The grandchild's pid: the only other process of ours besides PID 1.
me = os.getpid()
others = []
for p in os.listdir("/proc"):
    if p.isdigit() and int(p) not in (me, 1):
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                if b"orphans.py" in f.read():
                    others.append(int(p))
        except OSError:
            pass
ready(grandchild=others, me=me)
os.close(w)
out = {"grandchildren": others, "reaped": {}}
for g in others:
    t0 = time.monotonic()
    state = "running"
    while time.monotonic() - t0 < 10:
        try:
            with open("/proc/%d/stat" % g) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            state = "gone"
            break
        time.sleep(0.01)
    out["reaped"][str(g)] = state
subprocess.Popen(["sleep", "300"], start_new_session=True)
result(**out)
