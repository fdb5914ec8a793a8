"""The client: one method per route of idexd's protocol (docs/protocol.md)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
from typing import Any, Dict, Iterator, List, Optional, Union
from urllib.parse import quote, urlencode

from .errors import IdexdError, Unreachable, error_for

DEFAULT_SOCKET = "/run/idexd/idexd.sock"

JSON = Dict[str, Any]


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: Optional[float]) -> None:
        super().__init__("idexd", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        """Connects to idexd's Unix socket, where HTTPConnection would dial TCP."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _file_path(student: str, path: str) -> str:
    # Each segment escaped; a ".." segment is sent as it is and refused by
    # idexd with InvalidPath.
    return "/v1/students/%s/files/%s" % (quote(student, safe=""), quote(path, safe="/"))


def _run_body(student: str, script: str, args: Optional[List[str]], mode: str,
              limits: Optional[Dict[str, int]], wait_seconds: int) -> JSON:
    body: JSON = {"student": student, "script": script, "mode": mode}
    if args:
        body["args"] = list(args)
    if limits:
        body["limits"] = dict(limits)
    if wait_seconds:
        body["wait_seconds"] = wait_seconds
    return body


def _ndjson(conn: _UnixHTTPConnection, resp: http.client.HTTPResponse) -> Iterator[JSON]:
    """Yields the objects of an NDJSON answer; closes the connection at its end."""
    try:
        for line in resp:
            if line.strip():
                yield json.loads(line)
    finally:
        conn.close()


def event_bytes(event: JSON) -> bytes:
    """The bytes a stdout or stderr event carries, exactly as the program
    wrote them (``data`` when valid UTF-8, else base64 in ``b64``)."""
    if "b64" in event:
        return base64.b64decode(event["b64"])
    return event.get("data", "").encode("utf-8")


class Client:
    """A client of one idexd.

    ``socket_path`` defaults to ``$IDEX_SOCKET``, else
    ``/run/idexd/idexd.sock``. Each call opens its own connection, so one
    Client may be shared by threads. Errors raise the ``IdexdError``
    subclass of their code (see ``idexd_client.errors``).
    """

    def __init__(self, socket_path: Optional[str] = None, timeout: float = 60.0) -> None:
        self.socket_path = socket_path or os.environ.get("IDEX_SOCKET") or DEFAULT_SOCKET
        self.timeout = timeout

    # -- plumbing ---------------------------------------------------------

    def _open(self, method: str, path: str, body: Optional[bytes], content_type: Optional[str],
              timeout: Optional[float]) -> "tuple[_UnixHTTPConnection, http.client.HTTPResponse]":
        conn = _UnixHTTPConnection(self.socket_path, timeout)
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as e:
            conn.close()
            raise Unreachable("cannot connect to %s: %s (is idexd running? is this user in its client group?)"
                              % (self.socket_path, e)) from e
        except BaseException:
            conn.close()
            raise
        if resp.status >= 400:
            data = resp.read()
            conn.close()
            raise self._error(resp.status, data)
        return conn, resp

    @staticmethod
    def _error(status: int, data: bytes) -> IdexdError:
        try:
            err = json.loads(data)["error"]
            return error_for(err["code"], err.get("message", ""), status, err.get("run_id"),
                             err.get("run_ids"), err.get("retry_after_s", 0))
        except (ValueError, KeyError, TypeError):
            return error_for("internal", "HTTP %d: %s" % (status, data[:200].decode("utf-8", "replace")), status)

    def _call(self, method: str, path: str, body: Optional[Union[bytes, JSON]] = None,
              raw: bool = False) -> Any:
        content_type = None
        payload: Optional[bytes] = None
        if isinstance(body, (bytes, bytearray)):
            payload, content_type = bytes(body), "application/octet-stream"
        elif body is not None:
            payload, content_type = json.dumps(body).encode(), "application/json"
        conn, resp = self._open(method, path, payload, content_type, self.timeout)
        try:
            data = resp.read()
        finally:
            conn.close()
        if raw:
            return data
        return json.loads(data) if data else None

    # -- students ---------------------------------------------------------

    def ensure_student(self, name: str) -> JSON:
        """Creates the student (uid, directory) if needed and returns it:
        ``{"name", "uid", "gid", "workdir", "disk"}``."""
        return self._call("PUT", "/v1/students/" + quote(name, safe=""))

    def get_student(self, name: str) -> JSON:
        """Returns a known student with its disk use (``disk``:
        ``used_bytes``, ``used_files``, ``limit_bytes``, ``limit_files``,
        ``enforced_by``); raises StudentNotFound otherwise."""
        return self._call("GET", "/v1/students/" + quote(name, safe=""))

    def list_students(self) -> List[JSON]:
        """Every known student (admin role)."""
        return self._call("GET", "/v1/students")["students"]

    # -- files ------------------------------------------------------------

    def list_files(self, student: str, path: str = "") -> JSON:
        """Lists a directory of the student's (``""``: the directory itself):
        ``{"path", "entries": [{"name", "type", "size", "mtime"}], "truncated"}``.
        Types: file, dir, symlink, fifo, socket, device, other."""
        q = urlencode({"path": path})
        return self._call("GET", "/v1/students/%s/files?%s" % (quote(student, safe=""), q))

    def read_file(self, student: str, path: str) -> bytes:
        """Returns a regular file's bytes. Symlinks are never followed
        (InvalidPath); FIFOs, sockets, devices and directories raise
        NotRegular; files over ``file_max_mb`` FileTooLarge."""
        return self._call("GET", _file_path(student, path), raw=True)

    def write_file(self, student: str, path: str, data: Union[bytes, str], parents: bool = False) -> JSON:
        """Replaces (or creates) a file atomically, owned by the student;
        ``parents`` creates missing directories. Returns
        ``{"path", "type", "size", "mtime"}``. May raise QuotaExceeded."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        path_q = _file_path(student, path) + ("?parents=1" if parents else "")
        return self._call("PUT", path_q, bytes(data))

    def remove_file(self, student: str, path: str) -> None:
        """Removes a file (a symlink itself, never its target) or an empty
        directory (DirectoryNotEmpty otherwise)."""
        self._call("DELETE", _file_path(student, path))

    def move_file(self, student: str, src: str, dst: str, parents: bool = False) -> JSON:
        """Renames within the student's directory; never replaces ``dst``
        (FileExists)."""
        q = {"move_to": dst}
        if parents:
            q["parents"] = "1"
        return self._call("POST", _file_path(student, src) + "?" + urlencode(q))

    # -- runs -------------------------------------------------------------

    def start_run(self, student: str, script: str, args: Optional[List[str]] = None,
                  mode: str = "script", limits: Optional[Dict[str, int]] = None,
                  wait_seconds: int = 0) -> JSON:
        """Starts a run and returns the run object. ``mode`` is "script" or
        "repl"; ``limits`` may lower or raise (up to the maximum) memory_mb,
        pids, cpu_percent, wall_seconds, cpu_seconds, output_kb;
        ``wait_seconds`` lets the start wait that long (at most idexd's
        max_wait_seconds) for a free slot when the host is full."""
        return self._call("POST", "/v1/runs", _run_body(student, script, args, mode, limits, wait_seconds))

    def start_and_follow(self, student: str, script: str, args: Optional[List[str]] = None,
                         mode: str = "script", limits: Optional[Dict[str, int]] = None,
                         wait_seconds: int = 0) -> "tuple[JSON, Iterator[JSON]]":
        """Starts a run and follows it in the same request (POST
        /v1/runs?follow=1): one round trip where start_run and events take
        two. Returns the run object and an iterator over its events from
        seq 1 to the ``end``, as ``events(run["id"])`` yields them. A refused
        start raises as start_run does. Read the iterator to its end, or
        close it, to free its connection."""
        body = json.dumps(_run_body(student, script, args, mode, limits, wait_seconds)).encode()
        conn, resp = self._open("POST", "/v1/runs?follow=1", body, "application/json", None)
        try:
            first = json.loads(resp.readline())
            if first.get("type") != "started" or "run" not in first:
                raise error_for("internal", "POST /v1/runs?follow=1: first event is %r, want started" % first.get("type"))
        except BaseException:
            conn.close()
            raise
        return first["run"], _ndjson(conn, resp)

    def get_run(self, run_id: str) -> JSON:
        """One run, live or from the store."""
        return self._call("GET", "/v1/runs/" + quote(run_id, safe=""))

    def list_runs(self, student: Optional[str] = None, state: Optional[str] = None,
                  reason: Optional[str] = None, since: Optional[str] = None,
                  limit: Optional[int] = None) -> List[JSON]:
        """Runs, newest first; ``since`` is RFC 3339."""
        q = {k: v for k, v in (("student", student), ("state", state), ("reason", reason),
                               ("since", since), ("limit", limit)) if v is not None}
        return self._call("GET", "/v1/runs?" + urlencode(q))["runs"]

    def events(self, run_id: str, after: int = 0, follow: bool = True) -> Iterator[JSON]:
        """Yields the run's events after sequence number ``after``: those
        kept, then live ones, until the ``end`` event (which carries the
        final run in ``run``). Reconnect with ``after`` = the last ``seq``
        seen to get exactly what was missed. With ``follow=False`` it stops
        after the events there are now."""
        path = "/v1/runs/%s/events?after=%d" % (quote(run_id, safe=""), after)
        if not follow:
            path += "&follow=0"
        conn, resp = self._open("GET", path, None, None, None)
        yield from _ndjson(conn, resp)

    def write_stdin(self, run_id: str, data: Union[bytes, str], eof: bool = False) -> None:
        """Feeds the program's stdin; ``eof`` closes it afterwards."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        path = "/v1/runs/%s/stdin%s" % (quote(run_id, safe=""), "?eof=1" if eof else "")
        self._call("POST", path, bytes(data))

    def stop_run(self, run_id: str) -> JSON:
        """Stops a run; returns the final run once its processes are gone."""
        return self._call("POST", "/v1/runs/%s/stop" % quote(run_id, safe=""))

    def stop_student(self, student: str) -> JSON:
        """Stops every run of a student (admin only); returns
        ``{"student", "stopped": [runs], "queued_cancelled"}``."""
        return self._call("POST", "/v1/students/%s/stop" % quote(student, safe=""))

    # -- the daemon -------------------------------------------------------

    def health(self) -> JSON:
        """The health report. A degraded or draining idexd answers 503 with
        the report, which is returned, not raised: check ``status``."""
        conn = _UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            conn.request("GET", "/v1/health")
            resp = conn.getresponse()
            data = resp.read()
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as e:
            raise Unreachable("cannot connect to %s: %s" % (self.socket_path, e)) from e
        finally:
            conn.close()
        body = json.loads(data)
        if "error" in body:
            raise self._error(resp.status, data)
        return body

    def version(self) -> JSON:
        """``{"version", "api"}``."""
        return self._call("GET", "/v1/version")

    def drain(self) -> JSON:
        """Refuses new runs on this host (admin role); returns health."""
        return self._call("POST", "/v1/drain")

    def resume(self) -> JSON:
        """Accepts runs again (admin role); returns health."""
        return self._call("POST", "/v1/resume")
