"""Shared by the hostile corpus's scripts (e2e/hostile_test.go): raw
syscalls through ctypes, errno names, and the two lines the harness reads:
READY {json} (then the script waits for one line on stdin, while the
harness looks at the run from outside) and RESULT {json}."""
import ctypes
import errno
import json
import os
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

# x86_64 syscall numbers (the harness checks the machine).
NR = {
    "mount": 165, "umount2": 166, "pivot_root": 155, "unshare": 272,
    "clone": 56, "clone3": 435, "setns": 308, "fsopen": 430,
    "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321,
    "perf_event_open": 298, "kexec_load": 246, "kexec_file_load": 320,
    "init_module": 175, "finit_module": 313, "delete_module": 176,
    "io_uring_setup": 425, "userfaultfd": 323, "open_by_handle_at": 304,
}

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIGCHLD = 17


def _arg(a):
    if isinstance(a, int):
        return ctypes.c_long(a)
    return a


def syscall(name, *args):
    """Returns (result, errno name); errno name is "OK" on success."""
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(NR[name]), *[_arg(a) for a in args])
    if r == -1:
        return r, errname(ctypes.get_errno())
    return r, "OK"


def errname(e):
    return errno.errorcode.get(e, str(e)) if e else "OK"


def oserr(e):
    return errname(e.errno) if isinstance(e, OSError) and e.errno else type(e).__name__


def ready(**kw):
    """Prints READY and waits for the harness's line ("go", "abort", ...)."""
    print("READY", json.dumps(kw), flush=True)
    return sys.stdin.readline().strip()


def result(**kw):
    print("RESULT", json.dumps(kw), flush=True)


def args():
    return json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
