"""A client for idexd, the daemon that runs students' Python scripts.

Standard library only (``http.client`` over a Unix socket), Python 3.9+::

    from idexd_client import Client, QuotaExceeded

    c = Client()                      # $IDEX_SOCKET or /run/idexd/idexd.sock
    c.ensure_student("alice")
    c.write_file("alice", "main.py", "print('hi')\\n")
    run = c.start_run("alice", "main.py")
    for ev in c.events(run["id"]):
        ...

Every error answer raises the ``IdexdError`` subclass of its code.
"""

from .client import DEFAULT_SOCKET, Client, event_bytes
from .errors import *  # noqa: F401,F403 - one class per error code
from .errors import ERRORS, IdexdError, Unreachable, error_for

__all__ = ["Client", "DEFAULT_SOCKET", "event_bytes", "ERRORS", "IdexdError", "Unreachable",
           "error_for"] + [cls.__name__ for cls in ERRORS.values()]
