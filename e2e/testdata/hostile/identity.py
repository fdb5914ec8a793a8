"""The burst case: several of these run at once, each as another student.
Each serves on the same two ports (127.0.0.1 and 0.0.0.0) and talks to
itself over loopback, then waits while the harness looks at it from
outside (namespaces, PID 1, seccomp, mounts, the host's view of the ports)."""
import os
import socket

from hostilelib import args, oserr, ready, result

a = args()
out = {"uid": os.getuid(), "pid": os.getpid(), "cwd": os.getcwd(),
       "tmpdir": os.environ.get("TMPDIR", ""), "home": os.environ.get("HOME", "")}
held = {}
for name, addr in (("loopback", "127.0.0.1"), ("any", "0.0.0.0")):
    s = socket.socket()
    try:
        s.bind((addr, a["port_" + name]))
        s.listen(8)
        held[name] = s
        out["bind_" + name] = "OK"
    except OSError as e:
        out["bind_" + name] = oserr(e)
# A server and its client in the run, over loopback.
if "loopback" in held:
    try:
        c = socket.create_connection(("127.0.0.1", a["port_loopback"]), timeout=5)
        conn, _ = held["loopback"].accept()
        c.sendall(b"ping")
        out["echo"] = conn.recv(4).decode()
        conn.close()
        c.close()
    except OSError as e:
        out["echo"] = oserr(e)
out["interfaces"] = sorted(n for _, n in socket.if_nameindex())
out["visible_pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
try:
    # Hidden (hidepid=2) where PID 1 is idexd's root helper.
    with open("/proc/1/comm") as f:
        out["pid1_comm"] = f.read().strip()
except OSError as e:
    out["pid1_comm"] = oserr(e)
ready(**out)
result(**out)
