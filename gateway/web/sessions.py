"""Server-side sessions: a random token in an HttpOnly cookie, everything else here.

A session ends at its absolute expiry (``web.session_ttl_s``), after ``web.session_idle_s``
without a request, on logout, and for everyone when the password changes. Each session
has its own CSRF token that state-changing requests must echo in ``X-CSRF-Token``.
Only a hash of the cookie value is kept, so even a memory dump does not yield a
usable cookie. Sessions live in memory: a restart logs everybody out, which is fine
for a handful of operators.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["COOKIE", "Session", "SessionStore"]

COOKIE = "vg_session"
MAX_SESSIONS = 64
"""A few phones at most; the oldest goes first beyond this (bounds memory)."""


def _key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass(slots=True)
class Session:
    """One logged-in browser."""

    key: str
    csrf: str
    created: float
    last_seen: float

    def csrf_ok(self, given: str | None) -> bool:
        """The request carries this session's CSRF token (compared in constant time)."""
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


class SessionStore:
    """Creates, finds, expires and revokes sessions; the clock is injectable for tests."""

    def __init__(
        self, *, ttl_s: float, idle_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._idle_s = idle_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self.on_revoke: Callable[[], None] = lambda: None
        """Called after sessions ended on purpose (the live feed closes their pages)."""

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self) -> tuple[str, Session]:
        """A new session; returns the cookie value (never stored) and the session."""
        token = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(_key(token), secrets.token_urlsafe(32), now, now)
        while len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions.values(), key=lambda s: s.last_seen)
            del self._sessions[oldest.key]
        self._sessions[session.key] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session of this cookie value, touched; None if unknown or expired."""
        if not token:
            return None
        session = self._sessions.get(_key(token))
        if session is None:
            return None
        now = self._clock()
        if now - session.created >= self._ttl_s or now - session.last_seen >= self._idle_s:
            del self._sessions[session.key]
            return None
        session.last_seen = now
        return session

    def alive(self, key: str) -> bool:
        """The session (by key) still exists, within its lifetime and its idle timeout.

        An open WebSocket asks this before each message and the server sweeps open pages
        with it regularly: a page logged out, left open past its lifetime or without a
        request for ``session_idle_s``, stops receiving. The feed itself does not count
        as use (pages send nothing but pings); the session is not touched here.
        """
        session = self._sessions.get(key)
        if session is None:
            return False
        now = self._clock()
        return now - session.created < self._ttl_s and now - session.last_seen < self._idle_s

    def revoke(self, session: Session) -> None:
        """End one session (logout)."""
        self._sessions.pop(session.key, None)
        self.on_revoke()

    def revoke_all(self, keep: Session | None = None) -> int:
        """End every session but ``keep``; returns how many ended."""
        ended = [key for key in self._sessions if keep is None or key != keep.key]
        for key in ended:
            del self._sessions[key]
        self.on_revoke()
        return len(ended)
