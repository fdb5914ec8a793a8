"""Tries every way out of the run's network namespace that the harness set
up a listener for: the host's loopback (TCP, IPv6, UDP), the host's other
address, the metadata service address, an abstract unix socket and a unix
socket under /run; and the internet. The harness counts what its
listeners received."""
import os
import socket

from hostilelib import args, oserr, ready, result

a = args()
out = {}
for t in a["targets"]:
    name, kind = t["name"], t["kind"]
    try:
        if kind == "tcp":
            fam = socket.AF_INET6 if ":" in t["addr"] else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect((t["addr"], t["port"]))
            s.sendall(b"hostile " + name.encode())
            s.close()
        elif kind == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for _ in range(3):
                s.sendto(b"hostile " + name.encode(), (t["addr"], t["port"]))
            s.close()
        elif kind in ("unix", "abstract"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect(("\0" + t["addr"]) if kind == "abstract" else t["addr"])
            s.sendall(b"hostile " + name.encode())
            s.close()
        out[name] = "OK"
    except OSError as e:
        out[name] = oserr(e)
try:
    with open(a["run_secret"]) as f:
        out["run_secret"] = f.read()
except OSError as e:
    out["run_secret"] = oserr(e)
try:
    out["run_entries"] = sorted(os.listdir("/run"))
except OSError as e:
    out["run_entries"] = oserr(e)
out["interfaces"] = sorted(n for _, n in socket.if_nameindex())
ready(**out)
result(**out)
