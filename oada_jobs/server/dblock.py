"""An exclusive lock on the embedded server's SQLite file, held while it is open.

Two servers on one SQLite file would each cache its documents and silently
overwrite each other's writes. :class:`DatabaseLock` takes an advisory lock on
``<db>.lock`` beside the database (``flock`` on POSIX, ``msvcrt.locking`` on
Windows). The operating system drops it when the process ends, however it
ends, so a crash never leaves a stale lock behind; the file itself stays and
is reused. The holder writes its pid into the file, so that a refusal can
name the other process.

This module only locks; it never opens the database.

Owns the lock only; imports only the exception tree and must not import the
framework or the client.
"""

from __future__ import annotations

import contextlib
import os
import sys

from oada_jobs.exceptions import DatabaseLocked

__all__ = ["DatabaseLock"]

#: Where the Windows lock sits: far beyond the pid, which stays readable.
_WINDOWS_LOCK_OFFSET = 1 << 30


class DatabaseLock:
    """The lock for the SQLite file *db*; :meth:`acquire` it, :meth:`release` it.

    >>> lock = DatabaseLock("oada.sqlite")  # doctest: +SKIP
    >>> lock.acquire()  # raises DatabaseLocked while another process holds it
    """

    def __init__(self, db: str) -> None:
        self.db = os.path.abspath(db)
        self.path = f"{self.db}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`DatabaseLocked` naming the holder's pid."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError:
            pid = _read_pid(fd)
            os.close(fd)
            raise DatabaseLocked(self.db, pid) from None
        # The pid only makes another process's refusal clearer.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                _unlock(fd)
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


if sys.platform == "win32":
    import msvcrt

    def _lock(fd: int) -> None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
