"""One gateway per state folder.

Everything the gateway keeps lives in its state folder, and much of it is counted in
memory while the daemon runs: the outbox's next ``seq`` per stream, the relay state
file, the web sessions. A second daemon on the same folder (``village-gateway run`` typed
by hand while the service runs, ``make run`` twice) would hand out the same seqs twice,
so the commune would take new records for duplicates and drop them. ``restore`` swaps the
folder away whole, which under a running daemon loses what it writes next.

So the daemon holds an exclusive ``flock`` on ``gateway.lock`` in the folder for as long
as it runs, and ``restore`` takes the same lock before it touches anything. The kernel
lets go of it when the process ends, however it ends (``kill -9`` and power cuts
included), so a stale lock cannot keep the village dark. The file holds the holder's
pid, for the error message only.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["LOCK_NAME", "StateFolderBusyError", "StateLock", "holder_of"]

LOCK_NAME = "gateway.lock"


class StateFolderBusyError(OSError):
    """Another process holds the state folder's lock; ``pid`` is its pid when known."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        self.folder = folder
        self.pid = pid
        who = f"another gateway (pid {pid})" if pid is not None else "another gateway"
        super().__init__(f"{folder} is in use by {who}")


class StateLock:
    """The exclusive lock on one state folder: :meth:`acquire`, then :meth:`release`.
    Not re-entrant."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock at once or raise :class:`StateFolderBusyError`; never waits."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateFolderBusyError(self.folder, holder_of(self.folder)) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (the file stays: removing it would race the next holder)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def holder_of(folder: Path) -> int | None:
    """The pid written by the lock's last holder, if the file says one."""
    try:
        text = (folder / LOCK_NAME).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
