"""Tries to get a user namespace (and with it uid 0 and a full capability
set): unshare(CLONE_NEWUSER), alone and with CLONE_NEWNET, clone and clone3
with CLONE_NEWUSER, and util-linux's unshare -Urn / -Urm. Whatever
succeeds stays alive (the harness then sees a process in a new user
namespace) until the harness says go."""
import ctypes
import os
import shutil
import signal
import subprocess
import time

from hostilelib import (CLONE_NEWNET, CLONE_NEWUSER, SIGCHLD, args, ready,
                        result, syscall)

args()
out = {}
held = []  # pids to kill at the end


def hold():
    while True:
        time.sleep(3600)


def in_child(name, flags):
    """unshare(flags) in a forked child, which stays alive if it worked."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        res, e = syscall("unshare", flags)
        os.write(w, e.encode())
        os.close(w)
        if res == 0:
            hold()
        os._exit(0)
    os.close(w)
    out[name] = os.read(r, 100).decode() or "child died"
    os.close(r)
    held.append(pid)


def raw_clone(name, call):
    r, e = call()
    if r == 0:  # the new process, a copy of this one
        hold()
    if r > 0:
        held.append(r)
        out[name] = "OK (pid %d)" % r
    else:
        out[name] = e


in_child("unshare(CLONE_NEWUSER)", CLONE_NEWUSER)
in_child("unshare(CLONE_NEWUSER|CLONE_NEWNET)", CLONE_NEWUSER | CLONE_NEWNET)
raw_clone("clone(CLONE_NEWUSER)", lambda: syscall("clone", CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0))
cargs = (ctypes.c_uint64 * 11)(CLONE_NEWUSER, 0, 0, 0, SIGCHLD, 0, 0, 0, 0, 0, 0)
raw_clone("clone3(CLONE_NEWUSER)", lambda: syscall("clone3", ctypes.byref(cargs), ctypes.sizeof(cargs)))
tool = shutil.which("unshare")
procs = []
for flags, cmd, ok in (("-Urn", "id -u; exec sleep 300", "0"),
                       ("-Urm", "mount -t tmpfs none /mnt && echo mounted; exec sleep 300", "mounted")):
    if not tool:
        out["unshare " + flags] = "no unshare(1) on this host"
        continue
    p = subprocess.Popen([tool, flags, "sh", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    line = p.stdout.readline().decode().strip()
    if line == ok:  # uid 0, or a tmpfs mounted: it worked and sleeps on
        out["unshare " + flags] = "OK: " + line
        procs.append(p)
    else:
        p.stdout.close()
        out["unshare " + flags] = "exit %d: %s" % (p.wait(), line)
ready(**out)
for pid in held:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
for p in procs:
    p.kill()
    p.wait()
result(**out)
