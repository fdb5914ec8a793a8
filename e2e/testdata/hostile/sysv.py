"""Leaves a 200 MiB SysV shared memory segment (written), a semaphore set,
a message queue holding a message and a POSIX message queue behind, and
exits without removing any of them."""
import ctypes
import os

from hostilelib import args, errname, libc, ready, result

a = args()
IPC_PRIVATE, IPC_CREAT = 0, 0o1000
size = a["mib"] << 20
out = {}
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget(IPC_PRIVATE, ctypes.c_size_t(size), IPC_CREAT | 0o666)
if shmid < 0:
    out["shm"] = errname(ctypes.get_errno())
else:
    addr = libc.shmat(shmid, None, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        out["shm"] = "shmat " + errname(ctypes.get_errno())
    else:
        ctypes.memset(addr, 0x5A, size)
        libc.shmdt(ctypes.c_void_p(addr))
        out["shm"] = "OK"
out["shmid"] = shmid
sem = libc.semget(IPC_PRIVATE, 4, IPC_CREAT | 0o666)
out["sem"] = "OK" if sem >= 0 else errname(ctypes.get_errno())
msq = libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o666)
if msq < 0:
    out["msg"] = errname(ctypes.get_errno())
else:
    buf = ctypes.create_string_buffer(8 + 1024)
    ctypes.memmove(buf, (1).to_bytes(8, "little"), 8)
    out["msg"] = "OK" if libc.msgsnd(msq, buf, 1024, 0) == 0 else errname(ctypes.get_errno())
mq = libc.mq_open(("/" + a["tok"] + "-mq").encode(), os.O_CREAT | os.O_RDWR, 0o666, None)
out["mq"] = "OK" if mq >= 0 else errname(ctypes.get_errno())
if a.get("hold"):
    ready(**out)
result(**out)
