"""Network namespaces kept between runs: a run's namespace goes back to
its student only, and only with no socket left in it. The harness reads
each run's namespace from outside while it waits. Modes: "plain" uses no
socket; "timewait" leaves a connection on port in TIME_WAIT (its server
side closes first); "bind" binds port without SO_REUSEADDR."""
import socket
import time

from hostilelib import args, oserr, ready, result

a = args()
out = {"mode": a["mode"]}
if a["mode"] == "timewait":
    lst = socket.socket()
    lst.bind(("127.0.0.1", a["port"]))
    lst.listen(1)
    cli = socket.create_connection(("127.0.0.1", a["port"]), timeout=5)
    srv, _ = lst.accept()
    srv.close()
    time.sleep(0.05)
    cli.close()
    lst.close()
    out["left"] = "TIME_WAIT"
elif a["mode"] == "bind":
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", a["port"]))
        out["bind"] = "OK"
    except OSError as e:
        out["bind"] = oserr(e)
    s.close()
ready(**out)
result(**out)
