"""Server-side sessions: a random token in an HttpOnly cookie, everything else here.

A session ends at its absolute expiry (``web.session_ttl_s``), after ``web.session_idle_s``
without a request, on logout, and for everyone when the password changes. A session
made with "remember this phone" lasts :data:`REMEMBER_S` (30 days) for both. Each
session has its own CSRF token that state-changing requests must echo in
``X-CSRF-Token``.

Sessions are kept in ``gateway.state_dir`` (:data:`SESSIONS_FILE`), so a daemon restart
or a power cut does not log the village head out. Only a SHA-256 of the cookie value is
stored: the file (or a memory dump) does not yield a usable cookie. The file is written
atomically (temp file 0600, fsync, rename, fsync of the folder) on login and logout, and
at most every :data:`TOUCH_SAVE_S` for the idle clock; a power cut loses at most that
much of a session's "last seen", never the session. A file that cannot be read is moved
aside with a log line saying so; everyone then logs in again and nothing else is lost.

Why a session ended (expired, idle, password changed, logged out, replaced) is kept for a
week by its hash, so a phone coming back with an old cookie is told why, not just sent to
the login form.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.files import write_atomic
from gateway.log import get_logger

__all__ = [
    "COOKIE",
    "ENDED_KEPT_S",
    "REMEMBER_S",
    "SESSIONS_FILE",
    "Session",
    "SessionStore",
]

_log = get_logger("web")

COOKIE = "vg_session"
SESSIONS_FILE = "web_sessions.json"
MAX_SESSIONS = 64
"""A few phones at most; the oldest goes first beyond this (bounds memory and the file)."""
REMEMBER_S = 30 * 86400.0
"""Lifetime and idle limit of a session made with "remember this phone"."""
TOUCH_SAVE_S = 60.0
"""The idle clock ("last seen") is written to the card at most this often."""
ENDED_KEPT_S = 7 * 86400.0
"""How long the reason a session ended is remembered (by its hash)."""
MAX_ENDED = 256
_KEY = re.compile(r"[0-9a-f]{64}")
_VERSION = 1


def _key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass(slots=True)
class Session:
    """One logged-in browser."""

    key: str
    csrf: str
    created: float
    last_seen: float
    remember: bool = False

    def csrf_ok(self, given: str | None) -> bool:
        """The request carries this session's CSRF token (compared in constant time)."""
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


class SessionStore:
    """Creates, finds, expires, revokes and keeps sessions; the clock is injectable.

    The clock is wall time (seconds since the epoch) by default, since sessions outlive
    the process; tests pass their own.
    """

    def __init__(
        self,
        *,
        ttl_s: float,
        idle_s: float,
        clock: Callable[[], float] = time.time,
        path: Path | None = None,
    ) -> None:
        self._ttl_s = ttl_s
        self._idle_s = idle_s
        self._clock = clock
        self._path = path
        self._sessions: dict[str, Session] = {}
        self._ended: dict[str, tuple[str, float]] = {}
        self._saved_at = clock()
        self._unsaved = False
        self.on_revoke: Callable[[], None] = lambda: None
        """Called after sessions ended on purpose (the live feed closes their pages)."""
        if path is not None:
            self._load(path)

    def __len__(self) -> int:
        return len(self._sessions)

    # -- limits ---------------------------------------------------------------------

    def limits(self, session: Session) -> tuple[float, float]:
        """The session's lifetime and idle limit, in seconds."""
        if session.remember:
            return max(self._ttl_s, REMEMBER_S), max(self._idle_s, REMEMBER_S)
        return self._ttl_s, self._idle_s

    def _why_over(self, session: Session, now: float) -> str | None:
        ttl, idle = self.limits(session)
        if now - session.created >= ttl:
            return "expired"
        if now - session.last_seen >= idle:
            return "idle"
        return None

    # -- the API the server uses ----------------------------------------------------

    def create(self, *, remember: bool = False) -> tuple[str, Session]:
        """A new session; returns the cookie value (never stored) and the session."""
        token = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(_key(token), secrets.token_urlsafe(32), now, now, remember)
        self._expire(now)
        while len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions.values(), key=lambda s: s.last_seen)
            self._end(oldest.key, "replaced", now)
        self._sessions[session.key] = session
        self._save()
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session of this cookie value, touched; None if unknown or expired."""
        if not token:
            return None
        key = _key(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        why = self._why_over(session, now)
        if why is not None:
            self._end(key, why, now)
            self._save()
            return None
        session.last_seen = now
        self._unsaved = True
        if now - self._saved_at >= TOUCH_SAVE_S:
            self._save()
        return session

    def ended(self, token: str | None) -> str | None:
        """Why the session of this cookie value ended (``expired``, ``idle``,
        ``password_changed``, ``logged_out``, ``replaced``), or None if unknown."""
        if not token:
            return None
        key = _key(token)
        session = self._sessions.get(key)
        now = self._clock()
        if session is not None and (why := self._why_over(session, now)) is not None:
            return why
        ended = self._ended.get(key)
        return ended[0] if ended is not None else None

    def alive(self, key: str) -> bool:
        """The session (by key) still exists, within its lifetime and its idle timeout.

        An open WebSocket asks this before each message and the server sweeps open pages
        with it regularly: a page logged out, left open past its lifetime or without a
        request for its idle limit, stops receiving. The feed itself does not count as
        use (pages send nothing but pings); the session is not touched here.
        """
        session = self._sessions.get(key)
        return session is not None and self._why_over(session, self._clock()) is None

    def revoke(self, session: Session, reason: str = "logged_out") -> None:
        """End one session (logout)."""
        if session.key in self._sessions:
            self._end(session.key, reason, self._clock())
            self._save()
        self.on_revoke()

    def revoke_all(self, keep: Session | None = None, reason: str = "password_changed") -> int:
        """End every session but ``keep``; returns how many ended."""
        now = self._clock()
        ended = [key for key in self._sessions if keep is None or key != keep.key]
        for key in ended:
            self._end(key, reason, now)
        self._save()
        self.on_revoke()
        return len(ended)

    def flush(self) -> None:
        """Write the idle clocks now if they changed (at shutdown)."""
        if self._unsaved:
            self._save()

    # -- keeping --------------------------------------------------------------------

    def _end(self, key: str, reason: str, now: float) -> None:
        self._sessions.pop(key, None)
        self._ended[key] = (reason, now)
        if len(self._ended) > MAX_ENDED:
            oldest = min(self._ended, key=lambda k: self._ended[k][1])
            del self._ended[oldest]

    def _expire(self, now: float) -> None:
        for session in list(self._sessions.values()):
            if (why := self._why_over(session, now)) is not None:
                self._end(session.key, why, now)
        for key, (_reason, at) in list(self._ended.items()):
            if now - at >= ENDED_KEPT_S:
                del self._ended[key]

    def _document(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "sessions": [asdict(s) for s in self._sessions.values()],
            "ended": {key: [reason, at] for key, (reason, at) in self._ended.items()},
        }

    def _save(self) -> None:
        """Write every session (hashes only) atomically; a failed write is logged and the
        sessions stay valid in memory."""
        self._saved_at = self._clock()
        self._unsaved = False
        if self._path is None:
            return
        try:
            write_atomic(
                self._path, json.dumps(self._document(), separators=(",", ":")), private=True
            )
        except OSError as exc:
            _log.error("web.sessions_not_saved", path=str(self._path), error=str(exc))

    def _load(self, path: Path) -> None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            _log.error("web.sessions_file_unreadable", path=str(path), error=str(exc))
            return
        try:
            document = json.loads(raw)
            sessions, ended = _parse(document)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            aside = path.with_name(f"{path.name}.bad")
            with contextlib.suppress(OSError):
                path.replace(aside)
            _log.error(
                "web.sessions_file_unreadable",
                path=str(path),
                error=str(exc)[:200],
                moved_to=str(aside),
                effect="every phone logs in again; nothing else is affected",
            )
            return
        self._sessions = {s.key: s for s in sessions[-MAX_SESSIONS:]}
        self._ended = ended
        self._expire(self._clock())
        _log.info("web.sessions_loaded", sessions=len(self._sessions))


def _parse(document: object) -> tuple[list[Session], dict[str, tuple[str, float]]]:
    """Sessions and end reasons from the file's JSON; raises ValueError on anything off."""
    if not isinstance(document, dict) or document.get("version") != _VERSION:
        raise ValueError("not a sessions file of version 1")
    sessions = []
    for item in document["sessions"]:
        key, csrf = item["key"], item["csrf"]
        created, last_seen = item["created"], item["last_seen"]
        remember = item.get("remember", False)
        if not (isinstance(key, str) and _KEY.fullmatch(key)):
            raise ValueError("a session key is not a SHA-256 in hex")
        if not (isinstance(csrf, str) and 16 <= len(csrf) <= 128):
            raise ValueError("a CSRF token is malformed")
        if not all(isinstance(v, (int, float)) and v >= 0 for v in (created, last_seen)):
            raise ValueError("a session time is not a number")
        sessions.append(Session(key, csrf, float(created), float(last_seen), remember is True))
    ended: dict[str, tuple[str, float]] = {}
    for key, (reason, at) in dict(document.get("ended", {})).items():
        if isinstance(key, str) and isinstance(reason, str) and isinstance(at, (int, float)):
            ended[key] = (reason[:32], float(at))
    return sessions, ended
