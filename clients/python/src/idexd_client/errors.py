"""One exception class per error code of idexd's protocol.

Every error answer of idexd has the body
``{"error": {"code": "...", "message": "...", "run_id": "..."}}``; the client
raises the class registered for its code (``IdexdError`` itself for a code
this client does not know yet), so callers catch exactly what they handle::

    try:
        client.start_run("alice", "main.py")
    except Locked as e:
        print("already running as", e.run_id)
"""

from __future__ import annotations

from typing import Dict, List, Optional, Type


class IdexdError(Exception):
    """An error answered by idexd (or, for ``Unreachable``, no answer).

    Attributes: ``code`` (the stable code), ``message`` (for people),
    ``status`` (the HTTP status, 0 when there was none), ``run_id`` (the
    run the error is about, for ``locked`` and ``start_failed``),
    ``run_ids`` (the student's running runs, for ``student_busy``) and
    ``retry_after`` (seconds until the student may start again, for
    ``rate_limited``; 0 otherwise).
    """

    code = ""

    def __init__(self, message: str, *, code: Optional[str] = None, status: int = 0,
                 run_id: Optional[str] = None, run_ids: Optional[List[str]] = None,
                 retry_after: int = 0) -> None:
        super().__init__(f"{message} ({code or self.code})")
        if code is not None:
            self.code = code
        self.message = message
        self.status = status
        self.run_id = run_id
        self.run_ids = list(run_ids or [])
        self.retry_after = retry_after


class Unreachable(IdexdError, ConnectionError):
    """The socket could not be reached: is idexd running, and is this
    process in its client group?"""

    code = "unreachable"


class InvalidRequest(IdexdError):
    """Malformed JSON, wrong types, unknown fields, a bad query."""
    code = "invalid_request"


class InvalidStudent(IdexdError):
    """The student name does not match ``^[a-z_][a-z0-9_-]{0,31}$``."""
    code = "invalid_student"


class InvalidPath(IdexdError):
    """A path outside the student's directory, through a symlink, absolute,
    with ``..``, a NUL byte or a name too long."""
    code = "invalid_path"


class LimitTooHigh(IdexdError):
    """A run limit above the configured maximum."""
    code = "limit_too_high"


class Forbidden(IdexdError):
    """This process's role (from its uid and groups) does not allow the route."""
    code = "forbidden"


class MethodNotAllowed(IdexdError):
    """The route exists, but not with this method."""
    code = "method_not_allowed"


class ScriptNotFound(IdexdError):
    """No such script in the student's directory."""
    code = "script_not_found"


class NotFound(IdexdError):
    """An unknown run or route, or the events of a run ended long ago."""
    code = "not_found"


class StudentNotFound(IdexdError):
    """No such student (the file routes never create one)."""
    code = "student_not_found"


class Locked(IdexdError):
    """The same (student, script) is running; ``run_id`` names that run."""
    code = "locked"


class RunEnded(IdexdError):
    """stdin written after the run's end."""
    code = "run_ended"


class StdinClosed(IdexdError):
    """stdin written after ``eof`` or after the program closed it."""
    code = "stdin_closed"


class BodyTooLarge(IdexdError):
    """A request body over 1 MiB (JSON or stdin)."""
    code = "body_too_large"


class StartFailed(IdexdError):
    """A start-up step of the run failed; ``run_id`` names the run."""
    code = "start_failed"


class Draining(IdexdError):
    """This host takes no new runs now (drain)."""
    code = "draining"


class AtCapacity(IdexdError):
    """This host runs ``max_runs`` runs already."""
    code = "at_capacity"


class StoreUnavailable(IdexdError):
    """idexd's store (database) is unreachable."""
    code = "store_unavailable"


class Timeout(IdexdError):
    """The program did not read its stdin in time."""
    code = "timeout"


class Internal(IdexdError):
    """Anything else that went wrong inside idexd."""
    code = "internal"


class FileNotFound(IdexdError):
    """No such file or directory in the student's directory."""
    code = "file_not_found"


class NotRegular(IdexdError):
    """Not a regular file: a directory, FIFO, socket or device."""
    code = "not_regular"


class NotDirectory(IdexdError):
    """A part of the path, or the path to list, is not a directory."""
    code = "not_directory"


class FileExists(IdexdError):
    """The destination of a move exists already."""
    code = "file_exists"


class DirectoryNotEmpty(IdexdError):
    """Only an empty directory can be removed."""
    code = "directory_not_empty"


class PermissionDenied(IdexdError):
    """The student's own permissions refuse it (a run changed a mode)."""
    code = "permission_denied"


class FileTooLarge(IdexdError):
    """A file or body over ``file_max_mb``."""
    code = "file_too_large"


class QuotaExceeded(IdexdError):
    """The student is over a disk quota: delete files first."""
    code = "quota_exceeded"


class DiskFull(IdexdError):
    """The students' filesystem is full."""
    code = "disk_full"


class StudentBusy(IdexdError):
    """The student runs (or waits for) max_runs_per_student runs already;
    ``run_ids`` names the running ones, so that one can be stopped."""
    code = "student_busy"


class RateLimited(IdexdError):
    """The student started student_starts_per_minute runs within the last
    minute; ``retry_after`` says in how many seconds the next may start."""
    code = "rate_limited"


class StudentStopped(IdexdError):
    """An admin stopped every run of the student while this start waited
    for a free slot."""
    code = "student_stopped"


ERRORS: Dict[str, Type[IdexdError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest, InvalidStudent, InvalidPath, LimitTooHigh, Forbidden, MethodNotAllowed,
        ScriptNotFound, NotFound, StudentNotFound, Locked, RunEnded, StdinClosed, BodyTooLarge,
        StartFailed, Draining, AtCapacity, StoreUnavailable, Timeout, Internal, FileNotFound,
        NotRegular, NotDirectory, FileExists, DirectoryNotEmpty, PermissionDenied, FileTooLarge,
        QuotaExceeded, DiskFull, StudentBusy, RateLimited, StudentStopped,
    )
}
"""Maps each code to its exception class."""


def error_for(code: str, message: str, status: int = 0, run_id: Optional[str] = None,
              run_ids: Optional[List[str]] = None, retry_after: int = 0) -> IdexdError:
    """Returns the exception for an error answer."""
    cls = ERRORS.get(code, IdexdError)
    return cls(message, code=code, status=status, run_id=run_id, run_ids=run_ids, retry_after=retry_after)
