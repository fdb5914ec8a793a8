"""Looks through /proc for other processes: every visible pid's cmdline,
environ and status, and the host pids the harness names (another
student's run, a host process, idexd, the host's PID 1): /proc entries
and kill(pid, 0)."""
import os

from hostilelib import args, oserr, ready, result

a = args()
# Reversed in argv, so that this script's own cmdline does not hold them.
secrets = [s[::-1].encode() for s in a["secrets_reversed"]]
out = {"visible": {}, "secrets_seen": [], "targets": {}}
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    seen = b""
    for f in ("cmdline", "environ", "status"):
        try:
            with open("/proc/%s/%s" % (p, f), "rb") as fh:
                seen += fh.read()
        except OSError:
            pass
    try:
        with open("/proc/%s/comm" % p) as fh:
            out["visible"][p] = fh.read().strip()
    except OSError as e:
        out["visible"][p] = oserr(e)
    out["secrets_seen"] += [s.decode() for s in secrets if s in seen]
for name, pid in a["pids"].items():
    r = {}
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            r["cmdline"] = fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError as e:
        r["cmdline"] = oserr(e)
    try:
        os.kill(pid, 0)
        r["kill0"] = "OK"
    except OSError as e:
        r["kill0"] = oserr(e)
    out["targets"][name] = r
ready(count=len(out["visible"]))
result(**out)
