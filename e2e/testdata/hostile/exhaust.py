"""exhaust: takes every SysV shm, message queue and semaphore id and every
POSIX message queue it can get, and holds them. It asks first: the
harness says "abort" when the run shares the host's IPC namespace, where
this would break every IPC user on the machine. probe: another student
then creates one of each."""
import ctypes
import os

from hostilelib import args, errname, libc, ready, result

a = args()
IPC_PRIVATE, IPC_CREAT = 0, 0o1000


class MqAttr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long),
                ("msgsize", ctypes.c_long), ("curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4)]


small = MqAttr(0, 1, 1, 0)


def take(kind, i):
    if kind == "shm":
        return libc.shmget(IPC_PRIVATE, ctypes.c_size_t(1), IPC_CREAT | 0o600)
    if kind == "msg":
        return libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600)
    if kind == "sem":
        return libc.semget(IPC_PRIVATE, 1, IPC_CREAT | 0o600)
    return libc.mq_open(("/%s-%s-%d" % (a["tok"], a["role"], i)).encode(),
                        os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(small))


out = {}
if a["role"] == "exhaust":
    if ready(stage="probe") != "go":
        result(aborted=True)
        raise SystemExit(0)
    for kind in ("shm", "msg", "sem", "mq"):
        n = 0
        while n < a["cap"]:
            if take(kind, n) < 0:
                out[kind + " stopped by"] = errname(ctypes.get_errno())
                break
            n += 1
        out[kind] = n
    ready(stage="exhausted", **out)
else:
    for kind in ("shm", "msg", "sem", "mq"):
        out[kind] = "OK" if take(kind, 0) >= 0 else errname(ctypes.get_errno())
result(**out)
