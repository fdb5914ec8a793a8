"""Calls what a seccomp filter in the spirit of Docker's default profile
refuses. Several of these succeed for an unprivileged process on a stock
kernel (perf_event_open on itself, io_uring_setup, userfaultfd in user
mode, add_key/keyctl/request_key on its own keyrings): each fd it gets is
kept open until the harness, looking at /proc/<pid>/fd and
/proc/key-users from outside, says go."""
import ctypes

from hostilelib import args, ready, result, syscall

args()
out = {}
perf = (ctypes.c_uint8 * 128)()
ctypes.memmove(perf, (1).to_bytes(4, "little"), 4)          # type PERF_TYPE_SOFTWARE, config 0 (cpu clock)
ctypes.memmove(ctypes.byref(perf, 4), (128).to_bytes(4, "little"), 4)    # size
ctypes.memmove(ctypes.byref(perf, 40), (1 | 1 << 5 | 1 << 6).to_bytes(8, "little"), 8)  # disabled, exclude_kernel, exclude_hv
uring = (ctypes.c_uint8 * 120)()
bpfattr = (ctypes.c_uint32 * 30)(2, 4, 4, 1)                # BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry
calls = [
    ("perf_event_open", (ctypes.byref(perf), 0, -1, -1, 8)),
    ("io_uring_setup", (4, ctypes.byref(uring))),
    ("userfaultfd", (0o2000000 | 1,)),                      # O_CLOEXEC | UFFD_USER_MODE_ONLY
    ("bpf", (0, ctypes.byref(bpfattr), ctypes.sizeof(bpfattr))),
    ("add_key", (b"user", b"hostile-key", b"x", 1, -2)),    # into the process keyring
    ("keyctl", (1, b"hostile-ring")),                       # KEYCTL_JOIN_SESSION_KEYRING
    ("request_key", (b"user", b"hostile-none", None, 0)),
    ("mount", (b"none", b"/tmp", b"tmpfs", 0, None)),
    ("fsopen", (b"tmpfs", 0)),
    ("umount2", (b"/tmp", 2)),
    ("pivot_root", (b".", b".")),
    ("kexec_load", (0, 0, 0, 0)),
    ("kexec_file_load", (-1, -1, 0, b"", 0)),
    ("init_module", (None, 0, b"")),
    ("finit_module", (-1, b"", 0)),
    ("delete_module", (b"hostile", 0)),
    ("open_by_handle_at", (-1, None, 0)),
]
for name, a in calls:
    r, e = syscall(name, *a)
    out[name] = e if r < 0 else "OK (%d)" % r
ready(**out)
result(**out)
