"""Fills /dev/shm, /tmp and /var/tmp together, a MiB into each in turn, up
to 256 MiB each, under a 64 MiB memory limit: private tmpfs mounts counted
against the run's memory stop it (ENOSPC or the run's OOM kill) and do
not grow the host's shared memory."""
import os

from hostilelib import args, oserr, ready, result

a = args()
chunk = b"\x5a" * (1 << 20)
dirs = ("/dev/shm", "/tmp", "/var/tmp")
files, out = {}, {}
for d in dirs:
    try:
        files[d] = open(os.path.join(d, a["tok"] + "-big"), "wb")
        out[d + " MiB"] = 0
    except OSError as e:
        out[d] = oserr(e)
while files:
    for d in list(files):
        try:
            files[d].write(chunk)
            files[d].flush()
            out[d + " MiB"] += 1
        except OSError as e:
            out[d] = oserr(e)
            files.pop(d).close()
            continue
        if out[d + " MiB"] >= 256:
            out[d] = "OK"
            files.pop(d).close()
    print("WROTE", sum(out.get(d + " MiB", 0) for d in dirs), flush=True)
ready(**out)
result(**out)
