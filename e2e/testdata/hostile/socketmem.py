"""Opens pairs of loopback TCP connections and fills every buffer, both
ways, without reading: kernel memory that a memory cgroup must charge to
the run (cgroup v1 only does so with memory.kmem.tcp.limit_in_bytes)."""
import socket

from hostilelib import args, oserr, ready, result

a = args()
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(256)
socks = []
out = {}
try:
    for _ in range(a["pairs"]):
        c = socket.create_connection(srv.getsockname())
        s, _ = srv.accept()
        socks += [c, s]
except OSError as e:
    out["connect"] = oserr(e)
for s in socks:
    s.setblocking(False)
chunk = b"\x5a" * (256 << 10)
queued = 0
progress = True
while progress:
    progress = False
    for s in socks:
        try:
            n = s.send(chunk)
            queued += n
            progress = progress or n > 0
        except BlockingIOError:
            pass
        except OSError as e:
            out["send"] = oserr(e)
out.update(sockets=len(socks), queued=queued)
ready(**out)
result(**out)
