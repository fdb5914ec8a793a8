"""Tests of idexd_client against a real idexd.

``make test`` runs them (e2e/python_client_test.go) with ``IDEX_SOCKET``
naming a daemon started for them, configured with ``file_max_mb = 1`` and
``quota_mb = 2``. Run by hand: ``IDEX_SOCKET=... python3 -m unittest
discover -s clients/python/tests`` with ``clients/python/src`` on
``PYTHONPATH``.
"""

from __future__ import annotations

import os
import secrets
import time
import unittest

import idexd_client
from idexd_client import (Client, DirectoryNotEmpty, Draining, FileExists, FileNotFound, FileTooLarge, InvalidPath,
                          InvalidStudent, Locked, NotDirectory, NotRegular, QuotaExceeded, RunEnded,
                          StudentBusy, StudentNotFound, Unreachable, event_bytes)

FILE_MAX = int(os.environ.get("IDEXD_TEST_FILE_MAX_BYTES", str(1 << 20)))


def new_student(c: Client) -> str:
    name = "py_" + secrets.token_hex(4)
    c.ensure_student(name)
    return name


def finish(c: Client, run_id: str) -> "tuple[bytes, dict, list]":
    out, events, final = b"", [], None
    for ev in c.events(run_id):
        events.append(ev)
        if ev["type"] in ("stdout", "stderr"):
            out += event_bytes(ev)
        elif ev["type"] == "end":
            final = ev["run"]
    assert final is not None, "the stream ended without an end event"
    return out, final, events


class ClientTest(unittest.TestCase):
    def setUp(self) -> None:
        self.c = Client(timeout=120)

    def test_students(self) -> None:
        name = new_student(self.c)
        st = self.c.get_student(name)
        self.assertEqual(st["name"], name)
        self.assertGreaterEqual(st["uid"], 1000)
        self.assertIn(st["disk"]["enforced_by"], ("kernel", "idexd"))
        with self.assertRaises(StudentNotFound) as cm:
            self.c.get_student("py_nobody_" + secrets.token_hex(4))
        self.assertEqual(cm.exception.status, 404)
        with self.assertRaises(InvalidStudent):
            self.c.ensure_student("Not A Name")

    def test_files(self) -> None:
        s = new_student(self.c)
        info = self.c.write_file(s, "pkg/mod.py", "x = 1\n", parents=True)
        self.assertEqual((info["path"], info["type"], info["size"]), ("pkg/mod.py", "file", 6))
        self.assertEqual(self.c.read_file(s, "pkg/mod.py"), b"x = 1\n")
        self.c.write_file(s, "pkg/mod.py", b"x = 2\n")
        self.assertEqual(self.c.read_file(s, "pkg/mod.py"), b"x = 2\n")
        self.c.write_file(s, "odd name?#%.txt", b"odd")
        self.assertEqual(self.c.read_file(s, "odd name?#%.txt"), b"odd")
        names = [(e["name"], e["type"]) for e in self.c.list_files(s)["entries"]]
        self.assertEqual(names, [("odd name?#%.txt", "file"), ("pkg", "dir")])
        self.assertEqual([e["name"] for e in self.c.list_files(s, "pkg")["entries"]], ["mod.py"])
        self.c.write_file(s, "other.py", b"")
        with self.assertRaises(FileExists):
            self.c.move_file(s, "other.py", "pkg/mod.py")
        moved = self.c.move_file(s, "other.py", "sub/dir/other.py", parents=True)
        self.assertEqual(moved["path"], "sub/dir/other.py")
        with self.assertRaises(DirectoryNotEmpty):
            self.c.remove_file(s, "pkg")
        self.c.remove_file(s, "pkg/mod.py")
        self.c.remove_file(s, "pkg")
        with self.assertRaises(FileNotFound):
            self.c.read_file(s, "pkg/mod.py")
        for bad in ("../x.py", "/etc/passwd", "sub/../../x", "a\x00b"):
            with self.assertRaises(InvalidPath, msg=bad):
                self.c.read_file(s, bad)
            with self.assertRaises(InvalidPath, msg=bad):
                self.c.write_file(s, bad, b"x")
        with self.assertRaises(NotRegular):
            self.c.read_file(s, "sub")
        with self.assertRaises(NotDirectory):
            self.c.list_files(s, "sub/dir/other.py")
        with self.assertRaises(FileTooLarge):
            self.c.write_file(s, "big.bin", b"x" * (FILE_MAX + 1))
        with self.assertRaises(StudentNotFound):
            self.c.write_file("py_nobody_" + secrets.token_hex(4), "x.py", b"x")

    def test_what_runs_plant_is_not_followed(self) -> None:
        s = new_student(self.c)
        self.c.write_file(s, "plant.py", "import os\n"
                          "os.symlink('/etc/passwd', 'passwd.txt')\n"
                          "os.symlink('/proc/self/environ', 'env.txt')\n"
                          "os.mkfifo('fifo.txt')\n"
                          "os.mkdir('d')\n"
                          "os.symlink('d', 'dlink')\n")
        out, final, _ = finish(self.c, self.c.start_run(s, "plant.py")["id"])
        self.assertEqual(final["reason"], "exited", out)
        for p in ("passwd.txt", "env.txt", "dlink/x.py"):
            with self.assertRaises(InvalidPath, msg=p):
                self.c.read_file(s, p)
            with self.assertRaises(InvalidPath, msg=p):
                self.c.write_file(s, p, b"x")
        started = time.monotonic()
        with self.assertRaises(NotRegular):
            self.c.read_file(s, "fifo.txt")
        self.assertLess(time.monotonic() - started, 60, "reading a FIFO blocked")
        types = {e["name"]: e["type"] for e in self.c.list_files(s)["entries"]}
        self.assertEqual(types["passwd.txt"], "symlink")
        self.assertEqual(types["fifo.txt"], "fifo")
        self.c.remove_file(s, "passwd.txt")
        self.assertTrue(os.path.exists("/etc/passwd"))

    def test_run_stdin_events_resume(self) -> None:
        s = new_student(self.c)
        self.c.write_file(s, "hello.py", 'name = input("name? ")\n'
                          'print("hello", name)\n'
                          'open("out.txt", "w").write(name.upper())\n')
        run = self.c.start_run(s, "hello.py")
        self.assertEqual(run["state"], "running")
        self.c.write_stdin(run["id"], "Ada\n", eof=True)
        out, final, events = finish(self.c, run["id"])
        self.assertEqual(out, b"name? hello Ada\n")
        self.assertEqual((final["reason"], final["exit_code"]), ("exited", 0))
        self.assertEqual(self.c.read_file(s, "out.txt"), b"ADA")
        # Resume after the first event: exactly the rest.
        rest = list(self.c.events(run["id"], after=events[0]["seq"]))
        self.assertEqual(rest, events[1:])
        self.assertEqual(list(self.c.events(run["id"], after=events[-1]["seq"], follow=False)), [])
        with self.assertRaises(RunEnded):
            self.c.write_stdin(run["id"], "late\n")
        self.assertEqual(self.c.get_run(run["id"])["reason"], "exited")
        self.assertIn(run["id"], [r["id"] for r in self.c.list_runs(student=s)])

    def test_start_and_follow(self) -> None:
        s = new_student(self.c)
        self.c.write_file(s, "ask.py", 'print("got", input())\n')
        run, events = self.c.start_and_follow(s, "ask.py")
        self.assertEqual(run["state"], "running")
        self.c.write_stdin(run["id"], "x\n", eof=True)
        followed = list(events)
        self.assertEqual(b"".join(event_bytes(e) for e in followed if e["type"] == "stdout"), b"got x\n")
        self.assertEqual([e["seq"] for e in followed], list(range(1, len(followed) + 1)))
        self.assertEqual((followed[-1]["type"], followed[-1]["run"]["reason"]), ("end", "exited"))
        self.assertEqual(list(self.c.events(run["id"])), followed)
        # A refused start raises, as start_run's does.
        held = self.c.start_run(s, "ask.py")
        self.addCleanup(self.c.stop_run, held["id"])
        with self.assertRaises(Locked):
            self.c.start_and_follow(s, "ask.py")

    def test_locked_and_stop(self) -> None:
        s = new_student(self.c)
        self.c.write_file(s, "wait.py", "print('up', flush=True)\ninput()\n")
        run = self.c.start_run(s, "wait.py", limits={"wall_seconds": 300})
        with self.assertRaises(Locked) as cm:
            self.c.start_run(s, "wait.py")
        self.assertEqual(cm.exception.run_id, run["id"])
        for ev in self.c.events(run["id"]):
            if ev["type"] == "stdout":
                break
        final = self.c.stop_run(run["id"])
        self.assertEqual(final["reason"], "stopped")

    def test_student_busy_and_stop_student(self) -> None:
        # The test daemon keeps the default max_runs_per_student, 4.
        s = new_student(self.c)
        ids = []
        for i in range(4):
            self.c.write_file(s, "w%d.py" % i, "input()\n")
            ids.append(self.c.start_run(s, "w%d.py" % i, limits={"wall_seconds": 300})["id"])
        self.c.write_file(s, "one_more.py", "pass\n")
        with self.assertRaises(StudentBusy) as cm:
            self.c.start_run(s, "one_more.py")
        self.assertEqual(cm.exception.status, 429)
        self.assertEqual(sorted(cm.exception.run_ids), sorted(ids))
        out = self.c.stop_student(s)
        self.assertEqual(sorted(r["id"] for r in out["stopped"]), sorted(ids))
        self.assertEqual({r["reason"] for r in out["stopped"]}, {"stopped"})
        self.assertEqual(self.c.start_run(s, "one_more.py")["student"], s)

    def test_quota(self) -> None:
        s = new_student(self.c)
        disk = self.c.get_student(s)["disk"]
        limit = disk["limit_bytes"]
        self.assertGreater(limit, 0, "the test daemon has a byte quota")
        chunk = b"q" * (FILE_MAX - 4096)
        with self.assertRaises(QuotaExceeded):
            for i in range(limit // len(chunk) + 2):
                self.c.write_file(s, "q%d.bin" % i, chunk)
        used = self.c.get_student(s)["disk"]["used_bytes"]
        self.assertLessEqual(used, limit)
        self.c.remove_file(s, "q0.bin")
        self.c.write_file(s, "small.txt", b"fits again")

    def test_daemon(self) -> None:
        self.assertIn(self.c.health()["status"], ("ok", "degraded", "draining"))
        self.assertEqual(self.c.version()["api"], "v1")
        with self.assertRaises(Unreachable):
            Client("/nonexistent/idexd.sock").version()

    def test_drain_and_resume(self) -> None:
        # The test runs as root: the admin role.
        s = new_student(self.c)
        self.c.write_file(s, "ok.py", "print('ok')\n")
        try:
            self.assertEqual(self.c.drain()["status"], "draining")
            self.assertEqual(self.c.health()["status"], "draining")
            with self.assertRaises(Draining) as cm:
                self.c.start_run(s, "ok.py")
            self.assertEqual(cm.exception.status, 503)
        finally:
            self.assertNotEqual(self.c.resume()["status"], "draining")
        out, final, _ = finish(self.c, self.c.start_run(s, "ok.py")["id"])
        self.assertEqual((out, final["reason"]), (b"ok\n", "exited"))

    def test_every_code_has_a_class(self) -> None:
        for code, cls in idexd_client.ERRORS.items():
            self.assertEqual(cls.code, code)
            self.assertIs(type(idexd_client.error_for(code, "m")), cls)
        self.assertIs(type(idexd_client.error_for("some_new_code", "m")), idexd_client.IdexdError)


if __name__ == "__main__":
    unittest.main()
