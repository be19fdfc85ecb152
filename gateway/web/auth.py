"""The web password: a memory-hard hash on disk, and the first-run setup code.

The hash is ``hashlib.scrypt`` (stdlib, memory-hard: 16 MiB per guess), so a stolen SD
card does not give the password away cheaply. The file lives in ``gateway.state_dir``,
written atomically with mode 0600, and is shared by the daemon and ``village-gateway
set-password``: the daemon notices a change (size, mtime, inode) on the next request and
drops every session.

Until a password exists, nobody can claim the device by reaching it first: control needs
a one-time setup code that only the person with the log (journal) can read.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from gateway.files import write_atomic
from gateway.log import get_logger
from gateway.web.ratelimit import LoginLimiter
from gateway.web.sessions import SESSIONS_FILE, SessionStore

__all__ = [
    "HASHES_AT_ONCE",
    "HASHES_WAITING",
    "MAX_PASSWORD_CHARS",
    "MIN_PASSWORD_CHARS",
    "PASSWORD_FILE",
    "Access",
    "HashBusyError",
    "PasswordError",
    "PasswordFile",
    "check_new_password",
    "hash_password",
    "new_setup_code",
    "verify_password",
]

_log = get_logger("web")
_T = TypeVar("_T")

PASSWORD_FILE = "web_password"  # noqa: S105 - a file name, not a password
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
"""Bounds the work one login can cause; nobody types more."""

_N, _R, _P = 2**14, 8, 1
"""scrypt cost: 128 * r * n bytes = 16 MiB of memory per hash, ~0.1 s on a Pi 4."""
_SCHEME = "scrypt"
HASHES_AT_ONCE = 2
"""Password hashes computed at the same time (each 16 MiB and a core for ~0.1 s)."""
HASHES_WAITING = 16
"""Attempts that may wait for a hash beyond those; more are refused (503) at once."""
_SETUP_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
"""No 0/O or 1/I: the code is read off a journal and typed on a phone."""


class PasswordError(ValueError):
    """A new password that is refused (too short, too long)."""


class HashBusyError(Exception):
    """Too many password checks are running or waiting; try again in a moment."""


def check_new_password(password: str) -> None:
    """Refuse a password that is too short or absurdly long, with a message that says so."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise PasswordError(f"the password needs at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise PasswordError(f"the password may have at most {MAX_PASSWORD_CHARS} characters")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32
    )


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash``: the parameters travel with the hash so they can grow."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _N, _R, _P)
    return f"{_SCHEME}${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches; a malformed hash never matches."""
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        scheme, n, r, p, salt, digest = encoded.strip().split("$")
        if scheme != _SCHEME:
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = _scrypt(password, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def new_setup_code() -> str:
    """A one-time code like ``K7QM-2XPA-9DHT`` (60 bits), easy to copy from a journal."""
    chars = "".join(secrets.choice(_SETUP_ALPHABET) for _ in range(12))
    return f"{chars[0:4]}-{chars[4:8]}-{chars[8:12]}"


def normalise_code(code: str) -> str:
    """What the person typed, without case, spaces and dashes."""
    return "".join(c for c in code.upper() if c.isalnum())


@dataclass(frozen=True, slots=True)
class _Stamp:
    """What tells us the file changed under us: set-password ran, or it was deleted."""

    inode: int
    size: int
    mtime_ns: int


class PasswordFile:
    """The password hash under ``state_dir``: read, written atomically 0600, watched."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PASSWORD_FILE

    def read(self) -> str | None:
        """The stored hash, or None when no password was set yet."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            _log.error("web.password_file_unreadable", path=str(self.path), error=str(exc))
            return None
        return text or None

    def stamp(self) -> _Stamp | None:
        """Identity of the file right now (None when absent): compared on each request."""
        try:
            st = self.path.stat()
        except OSError:
            return None
        return _Stamp(st.st_ino, st.st_size, st.st_mtime_ns)

    def write(self, password: str) -> None:
        """Hash and store ``password``: temp file 0600, fsync, rename, fsync the folder."""
        check_new_password(password)
        write_atomic(self.path, f"{hash_password(password)}\n", private=True)


class Access:
    """Who may do what: the password, the setup code, the sessions and the login limit.

    :meth:`refresh` runs on every request: if the password file changed behind our back
    (``village-gateway set-password``, or it was deleted), every session ends.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        ttl_s: float,
        idle_s: float,
        max_attempts: int,
        lockout_s: float,
        max_lockout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.passwords = PasswordFile(state_dir)
        self.sessions = SessionStore(
            ttl_s=ttl_s, idle_s=idle_s, clock=clock, path=state_dir / SESSIONS_FILE
        )
        self.limiter = LoginLimiter(
            max_attempts=max_attempts,
            lockout_s=lockout_s,
            max_lockout_s=max_lockout_s,
            clock=clock,
        )
        self._stamp = self.passwords.stamp()
        self._hash = self.passwords.read()
        self._setup_code: str | None = None
        self._hash_slots = asyncio.Semaphore(HASHES_AT_ONCE)
        self._hashing = 0
        """Hashes running or waiting for a slot."""

    async def _hashed(self, work: Callable[[], _T]) -> _T:
        """Run ``work`` (a scrypt hash) in a thread, at most :data:`HASHES_AT_ONCE` at a
        time: a flood of logins from many addresses cannot fill the thread pool or the
        memory. Beyond :data:`HASHES_WAITING` waiting, HashBusyError at once."""
        if self._hashing >= HASHES_AT_ONCE + HASHES_WAITING:
            raise HashBusyError
        self._hashing += 1
        try:
            async with self._hash_slots:
                return await asyncio.to_thread(work)
        finally:
            self._hashing -= 1

    @property
    def setup_required(self) -> bool:
        """No password yet: control is locked until the setup code is used."""
        return self._hash is None

    def ensure_setup_code(self) -> None:
        """Without a password, make a one-time code and print it to the log (journal)."""
        if self._hash is None and self._setup_code is None:
            self._setup_code = new_setup_code()
            _log.warning(
                "web.setup_code",
                code=self._setup_code,
                local_only=True,  # for the journal at the Pi, never uploaded to the commune
                hint="open the web page and enter this code to set the password, "
                "or run `village-gateway set-password`",
            )

    def refresh(self) -> None:
        """Notice a password changed outside this process; then nobody stays logged in."""
        stamp = self.passwords.stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        self._hash = self.passwords.read()
        ended = self.sessions.revoke_all(reason="password_changed")
        _log.warning("web.password_file_changed", sessions_ended=ended, set=self._hash is not None)
        if self._hash is None:
            self.ensure_setup_code()
        else:
            self._setup_code = None

    def setup_code_ok(self, code: str) -> bool:
        """The one-time code matches (constant time, case and dashes ignored)."""
        if self._setup_code is None:
            return False
        expected = normalise_code(self._setup_code).encode()
        return hmac.compare_digest(normalise_code(code).encode(), expected)

    async def password_ok(self, password: str) -> bool:
        """Check a password (scrypt runs in a thread: ~0.1 s that must not stop the loop;
        raises HashBusyError when too many checks wait)."""
        encoded = self._hash
        if encoded is None:
            return False
        return await self._hashed(lambda: verify_password(password, encoded))

    async def set_password(self, password: str) -> None:
        """Store a new password (raises PasswordError) and end every session."""
        await self._hashed(lambda: self.passwords.write(password))
        self._hash = self.passwords.read()
        self._stamp = self.passwords.stamp()
        self._setup_code = None
        self.sessions.revoke_all(reason="password_changed")
