"""plant: writes a 0666 file into every world-writable place of the host
the harness named (/tmp, /var/tmp, /dev/shm, /run/lock, ...), a unix socket
in /tmp, and tries the host's read-only places, another student's directory,
a world-writable directory and file the harness made outside /tmp, and
reading idexd's store.
look (another student, while plant waits): looks for the planted files and
tries to rewrite them. Both also write in their own directory."""
import os
import socket

from hostilelib import args, oserr, ready, result

a = args()
tok, role = a["tok"], a["role"]
out = {"tmpdir": os.environ.get("TMPDIR", "")}


def create(path, data):
    """Appends to path, creating it 0666 (readable and writable by anyone)
    if it is not there."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError as e:
        return oserr(e)
    try:
        os.write(fd, data)
        try:
            os.fchmod(fd, 0o666)  # past the umask; fails on others' files
        except OSError:
            pass
        return "OK"
    except OSError as e:
        return oserr(e)
    finally:
        os.close(fd)


if role == "plant":
    for d in a["shared_dirs"]:
        out["plant " + d] = create(os.path.join(d, tok + "-planted"), b"planted by another student\n")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind("/tmp/" + tok + "-sock")
        s.listen(1)
        out["socket /tmp"] = "OK"
    except OSError as e:
        out["socket /tmp"] = oserr(e)
    for p in (a["ww_dir"] + "/" + tok + "-new", a["ww_file"],
              a["other_dir"] + "/" + tok + "-intruder", a["students_root"] + "/" + tok + "-root",
              "/etc/" + tok, "/usr/lib/" + tok, "/var/lib/" + tok):
        out["write " + p] = create(p, b"written from a run\n")
    try:
        with open(a["store"], "rb") as f:
            out["read " + a["store"]] = "OK" if f.read(16) else "empty"
    except OSError as e:
        out["read " + a["store"]] = oserr(e)
else:
    for d in a["shared_dirs"]:
        p = os.path.join(d, tok + "-planted")
        out["seen " + d] = os.path.exists(p)
        out["rewrite " + d] = create(p, b"rewritten by the next student\n") if out["seen " + d] else "absent"
out["own dir"] = create(os.path.join(os.getcwd(), tok + "-" + role), b"mine\n")
ready(**out)
result(**out)
