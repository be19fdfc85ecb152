"""The ``/api/v1`` routes: session, setup, login, state, commands, events, clips, ws.

Who may call what is decided before these handlers run, by the guard in
:mod:`gateway.web.server` (deny by default, CSRF, Origin). The handlers only do their
own job. Commands go to the one :class:`~gateway.commands.Dispatcher`, exactly like
MQTT; the HTTP status is 200 whatever the reply's ``status``, which the page reads.
Every error is JSON ``{"error": {"code", "message"}}``; no answer is ever HTML built
from input, and nothing here reaches a shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel

from gateway.commands import Dispatcher, new_id
from gateway.config import Settings
from gateway.errors import GatewayError
from gateway.log import get_logger
from gateway.state import StateStore
from gateway.web.auth import (
    MAX_PASSWORD_CHARS,
    MIN_PASSWORD_CHARS,
    Access,
    HashBusyError,
    PasswordError,
    check_new_password,
)
from gateway.web.live import LiveHub
from gateway.web.ratelimit import address_key
from gateway.web.sessions import COOKIE, Session

__all__ = ["SESSION", "UPLOADS_AT_ONCE", "UPLOAD_DIR", "Api", "ClipsLike", "SchedulerLike", "error"]

_log = get_logger("web")

SESSION = web.RequestKey("session", Session)
"""Where the guard leaves the request's :class:`Session` (absent: not logged in)."""
MAX_JSON_BYTES = 16 * 1024
"""Login, setup and password bodies are tiny; anything bigger is refused unread."""
_CHUNK = 64 * 1024
_WRITE_BYTES = 1024 * 1024
"""An upload is written to its file in pieces of this size (what it holds in memory)."""
UPLOADS_AT_ONCE = 2
"""Clip uploads received at the same time; another one is refused (429) unread."""
UPLOAD_DIR = "uploads"
"""Folder under ``gateway.state_dir`` where an upload streams before the clip store
takes it; emptied at start."""
STATE_CACHE_S = 0.5
_AUDIO_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "flac": "audio/flac",
}
"""Content types of stored clips, by the store's ``format``."""


class SchedulerLike(Protocol):
    """What the state needs of ``gateway.lighting.schedules.Scheduler``: the lists in force."""

    @property
    def relays(self) -> Sequence[BaseModel]: ...

    @property
    def broadcasts(self) -> Sequence[BaseModel]: ...

    def snapshot(self) -> dict[str, Any]: ...


class ClipInfoLike(Protocol):
    """What the API reads of ``gateway.pa.clips.ClipInfo``."""

    @property
    def name(self) -> str: ...

    def as_dict(self) -> dict[str, Any]: ...


class ClipsLike(Protocol):
    """What the upload needs of ``gateway.pa.clips.ClipStore`` (raises ClipError)."""

    def list(self) -> Sequence[ClipInfoLike]: ...

    async def add(self, name: str, data: bytes) -> ClipInfoLike: ...


class FileClipsLike(ClipsLike, Protocol):
    """A clip store that takes an uploaded file as it is (moves it into place), so the
    upload is never held in memory. Used when the store has ``add_file``."""

    async def add_file(self, name: str, path: Path, *, sha256: str, size: int) -> ClipInfoLike: ...


def error(status: int, code: str, message: str, **headers: str) -> web.Response:
    """The one error shape of the API: ``code`` for the page (which has a sentence for
    each, in each language) and ``message`` in English for logs and engineers."""
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers or None
    )


def refusal(status: int, code: str, message: str, detail: Mapping[str, Any]) -> web.Response:
    """:func:`error` with a ``detail`` (``reason`` code and its parameters), the shape a
    command's refused reply has, so the page words both the same way."""
    body = {"code": code, "message": message, "detail": dict(detail)}
    return web.json_response({"error": body}, status=status)


class _TooLargeError(Exception):
    pass


async def _read_capped(request: web.Request, limit: int) -> bytes:
    """The body, but never more than ``limit`` bytes read (raises _TooLargeError)."""
    if request.content_length is not None and request.content_length > limit:
        raise _TooLargeError
    data = bytearray()
    while chunk := await request.content.read(_CHUNK):
        data += chunk
        if len(data) > limit:
            raise _TooLargeError
    return bytes(data)


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """A small JSON object body, or the error response to send instead."""
    try:
        raw = await _read_capped(request, MAX_JSON_BYTES)
    except _TooLargeError:
        return error(413, "too_large", f"at most {MAX_JSON_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return error(400, "bad_json", "the body is not JSON")
    if not isinstance(data, dict):
        return error(400, "bad_args", "the body must be a JSON object")
    return data


def _text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and len(value) <= MAX_PASSWORD_CHARS else None


class Api:
    """Handlers of ``/api/v1``; the server registers them and guards them."""

    def __init__(
        self,
        *,
        settings: Settings,
        access: Access,
        state: StateStore,
        hub: LiveHub,
        overview: Callable[[], dict[str, Any]],
    ) -> None:
        self._settings = settings
        self._access = access
        self._state = state
        self._hub = hub
        self._overview = overview
        self.dispatcher: Dispatcher | None = None
        self._state_cache: tuple[tuple[tuple[str, int], ...], float, bytes] | None = None
        self.clips: ClipsLike | None = None
        self.scheduler: SchedulerLike | None = None
        self.logins: dict[str, int] = {"ok": 0, "wrong": 0, "locked": 0}
        """Login and setup outcomes, for /metrics."""
        self.uploads = 0
        """Clip uploads being received right now."""
        self.upload_dir = settings.gateway.state_dir / UPLOAD_DIR

    def register(self, router: web.UrlDispatcher) -> None:
        """Add every route (the security test enumerates these)."""
        router.add_get("/api/v1/session", self.session)
        router.add_post("/api/v1/setup", self.setup)
        router.add_post("/api/v1/login", self.login)
        router.add_post("/api/v1/logout", self.logout)
        router.add_post("/api/v1/password", self.password)
        router.add_get("/api/v1/state", self.state)
        router.add_post("/api/v1/commands", self.commands)
        router.add_get("/api/v1/events", self.events)
        router.add_get("/api/v1/clips", self.list_clips)
        router.add_post("/api/v1/clips", self.upload_clip)
        router.add_get("/api/v1/clips/{clip}/audio", self.clip_audio)
        router.add_get("/api/v1/ws", self.ws)

    # -- sessions ---------------------------------------------------------------------

    def _start_session(
        self, request: web.Request, body: dict[str, Any], *, remember: bool = False
    ) -> web.Response:
        """A new session for this browser: the cookie (as long-lived as the session) and
        the CSRF token in the body."""
        token, session = self._access.sessions.create(remember=remember)
        lifetime, _idle = self._access.sessions.limits(session)
        response = web.json_response({**body, "csrf": session.csrf, "remember": remember})
        response.set_cookie(
            COOKIE,
            token,
            max_age=int(lifetime),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    def _begin(self, address: str) -> web.Response | None:
        """Start a password or code attempt (counted as wrong until it proves right), or
        the 429 to answer: locked out, or another attempt of this address in flight."""
        wait = self._access.limiter.begin(address_key(address))
        if wait is None:
            return None
        self.logins["locked"] += 1
        return error(
            429,
            "locked_out",
            f"too many tries, or one still being checked; wait {wait} s",
            **{"Retry-After": str(wait)},
        )

    def _end(self, address: str, ok: bool | None) -> int | None:
        return self._access.limiter.end(address_key(address), ok=ok)

    def _wrong(
        self, address: str, locked_for: int | None, status: int, code: str, message: str
    ) -> web.Response:
        self.logins["wrong"] += 1
        _log.warning("web.login_failed", address=address, reason=code, locked_for_s=locked_for)
        if locked_for is not None:
            return error(
                429,
                "locked_out",
                f"too many wrong tries; wait {locked_for} s",
                **{"Retry-After": str(locked_for)},
            )
        return error(status, code, message)

    async def session(self, request: web.Request) -> web.Response:
        """What the page needs before it draws anything."""
        current: Session | None = request.get(SESSION)
        gateway = self._settings.gateway
        ended = (
            None
            if current is not None
            else self._access.sessions.ended(request.cookies.get(COOKIE))
        )
        return web.json_response(
            {
                "authenticated": current is not None,
                "ended": ended,
                "csrf": current.csrf if current is not None else None,
                "setup_required": self._access.setup_required,
                "public_status": self._settings.web.public_status,
                "gateway": {"id": gateway.id, "name": gateway.name},
            }
        )

    # Setup, login and password change share one shape: the attempt is counted (and the
    # address marked busy) before the first await, and settled in ``finally``; a request
    # that never reached a check (bad body, too short a new password) is taken back.

    async def setup(self, request: web.Request) -> web.Response:
        """First run: the setup code from the journal sets the first password."""
        if not self._access.setup_required:
            return error(409, "already_set", "a password is set; log in instead")

        async def code_ok(code: str) -> bool:
            return self._access.setup_code_ok(code)

        return await self._set_password(
            request,
            proof="code",
            new="password",
            check=code_ok,
            wrong="wrong setup code (see the log)",
            via="setup code",
        )

    async def login(self, request: web.Request) -> web.Response:  # noqa: PLR0911 - one per refusal
        """The password gives a session cookie and a CSRF token."""
        address = request.remote or "?"
        if self._access.setup_required:
            return error(409, "setup_required", "no password yet: use the setup code")
        if (refused := self._begin(address)) is not None:
            return refused
        verdict: bool | None = None
        try:
            data = await _json_object(request)
            if isinstance(data, web.Response):
                return data
            password = _text(data, "password")
            if password is None:
                return error(400, "bad_args", "give password (a string)")
            verdict = await self._access.password_ok(password)
            remember = data.get("remember") is True
        except HashBusyError:
            return _busy()
        finally:
            locked_for = self._end(address, verdict)
        if not verdict:
            return self._wrong(address, locked_for, 401, "unauthenticated", "wrong password")
        self.logins["ok"] += 1
        _log.info("web.login", address=address, remember=remember)
        return self._start_session(request, {}, remember=remember)

    async def logout(self, request: web.Request) -> web.Response:
        """End this session."""
        current: Session | None = request.get(SESSION)
        if current is not None:
            self._access.sessions.revoke(current)
        response = web.Response(status=204)
        response.del_cookie(COOKIE, path="/")
        return response

    async def password(self, request: web.Request) -> web.Response:
        """Change the password: every session ends; this browser gets a fresh one."""
        return await self._set_password(
            request,
            proof="current",
            new="new",
            check=self._access.password_ok,
            wrong="the current password is wrong",
            via="web",
        )

    async def _set_password(  # noqa: PLR0911 - one return per refusal
        self,
        request: web.Request,
        *,
        proof: str,
        new: str,
        check: Callable[[str], Awaitable[bool]],
        wrong: str,
        via: str,
    ) -> web.Response:
        """Setup and password change: ``body[proof]`` (the setup code, the current
        password) must pass ``check`` before ``body[new]`` becomes the password; counted
        as a login attempt of this address like a login."""
        address = request.remote or "?"
        if (refused := self._begin(address)) is not None:
            return refused
        verdict: bool | None = None
        try:
            data = await _json_object(request)
            if isinstance(data, web.Response):
                return data
            given, password = _text(data, proof), _text(data, new)
            if given is None or password is None:
                return error(400, "bad_args", f"give {proof} and {new} (strings)")
            try:
                check_new_password(password)
            except PasswordError as exc:
                short = len(password) < MIN_PASSWORD_CHARS
                reason = {"reason": "password_short", "field": new, "min": MIN_PASSWORD_CHARS}
                if not short:
                    reason = {"reason": "password_long", "field": new}
                return refusal(400, "bad_args", str(exc), reason)
            current: Session | None = request.get(SESSION)
            remember = data.get("remember") is True or bool(current and current.remember)
            verdict = await check(given)
            if verdict:
                await self._access.set_password(password)
        except HashBusyError:
            return _busy()
        finally:
            locked_for = self._end(address, verdict)
        if not verdict:
            return self._wrong(address, locked_for, 403, "forbidden", wrong)
        if via == "setup code":
            self.logins["ok"] += 1  # the first password logs this browser in
        _log.warning("web.password_set", address=address, via=via)
        return self._start_session(request, {}, remember=remember)

    # -- state, commands, events ----------------------------------------------------

    def state_body(self) -> dict[str, Any]:
        """``GET /api/v1/state``: identity, link, health, then each component's snapshot."""
        body = self._overview()
        snapshots = self._state.all()
        body.update(snapshots)
        if "schedules" not in body and (schedules := self.schedules()) is not None:
            body["schedules"] = schedules
        return body

    def schedules(self) -> dict[str, Any] | None:
        """The schedules in force, as ``schedule.set`` takes them, and their status.

        Schedules have no state topic of their own; the page edits these lists.
        """
        if self.scheduler is None:
            return None
        return {
            **self.scheduler.snapshot(),
            "schedules": [s.model_dump(mode="json") for s in self.scheduler.relays],
            "broadcasts": [b.model_dump(mode="json") for b in self.scheduler.broadcasts],
        }

    async def state(self, request: web.Request) -> web.Response:
        """Every component's latest snapshot.

        Phones poll this; the encoded body is reused while no snapshot changed, for at
        most :data:`STATE_CACHE_S` (health and link figures may move meanwhile).
        """
        key = tuple(self._state.versions().items())
        now = time.monotonic()
        cached = self._state_cache
        if cached is None or cached[0] != key or now - cached[1] > STATE_CACHE_S:
            cached = (key, now, json.dumps(self.state_body(), ensure_ascii=False).encode())
            self._state_cache = cached
        return web.Response(body=cached[2], content_type="application/json")

    async def commands(self, request: web.Request) -> web.Response:
        """A command envelope through the one Dispatcher; 200 with its Reply."""
        if self.dispatcher is None:
            return error(503, "not_available", "the daemon is still starting")
        limit = self._settings.commands.max_bytes
        try:
            raw = await _read_capped(request, limit)
        except _TooLargeError:
            return error(413, "too_large", f"a command is at most {limit} bytes")
        payload: bytes | dict[str, Any] = raw
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            data = None  # the dispatcher answers bad_json with its own words
        if isinstance(data, dict):
            data.setdefault("id", new_id("web"))
            payload = data
        reply = await self.dispatcher.dispatch(payload, "web")
        return web.json_response(reply.as_dict())

    async def events(self, request: web.Request) -> web.Response:
        """Recent events after ``after`` (default 0), at most ``limit`` (default 100)."""
        try:
            after = int(request.query.get("after", "0"))
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return error(400, "bad_args", "after and limit are whole numbers")
        if after < 0 or not 1 <= limit <= 1000:
            return error(400, "bad_args", "after >= 0 and 1 <= limit <= 1000")
        ring = self._hub.ring
        return web.json_response({"events": ring.after(after, limit), "last_seq": ring.last_seq})

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        """The live feed: hello with the whole state, then changes, events and logs."""
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=4096)
        await ws.prepare(request)
        current = request.get(SESSION)
        key = current.key if current is not None else None
        await self._hub.serve(ws, {"kind": "hello", "state": self.state_body()}, session=key)
        return ws

    # -- clips ------------------------------------------------------------------------

    async def list_clips(self, request: web.Request) -> web.Response:
        """The clip store's clips."""
        if self.clips is None:
            return error(503, "not_available", "the loudspeakers are not set up on this gateway")
        free = getattr(self.clips, "free_bytes", None)  # room on the clips' filesystem
        return web.json_response(
            {
                "clips": [clip.as_dict() for clip in self.clips.list()],
                "free_bytes": free() if callable(free) else None,
            }
        )

    async def upload_clip(self, request: web.Request) -> web.StreamResponse:
        """multipart ``name`` + ``file``: streamed to a file under the state folder with
        the size cap holding while it streams in; at most :data:`UPLOADS_AT_ONCE`."""
        if self.clips is None:
            return error(503, "not_available", "the loudspeakers are not set up on this gateway")
        if self.uploads >= UPLOADS_AT_ONCE:
            busy = error(
                429,
                "busy",
                f"{self.uploads} clips are being uploaded; try again when one is done",
                **{"Retry-After": "5"},
            )
            busy.force_close()  # do not read the body we refuse
            return busy
        cap = int(self._settings.web.max_upload_mb * 1_000_000)
        self.uploads += 1
        temp = self.upload_dir / f"upload-{secrets.token_hex(8)}"
        try:
            received = await _read_upload(request, cap, temp)
            if isinstance(received, web.Response):
                if received.status != 413:
                    return received
                over = {
                    "code": "too_large",
                    "message": f"a clip is at most {cap} bytes (web.max_upload_mb)",
                    "detail": {"reason": "clip_too_large", "field": "file", "max_bytes": cap},
                }
                refused = web.json_response({"error": over}, status=413)
                refused.force_close()  # do not read the rest of a body we refuse
                return refused
            name, size, sha256 = received
            try:
                if (add_file := getattr(self.clips, "add_file", None)) is not None:
                    clip = await add_file(name, temp, sha256=sha256, size=size)
                else:
                    data = await asyncio.to_thread(temp.read_bytes)
                    clip = await self.clips.add(name, data)
                    del data
            except GatewayError as exc:
                key = str(getattr(exc, "key", "bad_args"))
                body: dict[str, Any] = {"code": key, "message": str(exc)}
                detail_of = getattr(exc, "detail", None)  # the clip store's reason code
                if callable(detail_of):
                    body["detail"] = detail_of("file")
                status = 413 if key == "too_large" else 400
                return web.json_response({"error": body}, status=status)
        finally:
            self.uploads -= 1
            await asyncio.to_thread(_unlink, temp)
        _log.info("web.clip_uploaded", name=clip.name, bytes=size)
        return web.json_response({"clip": clip.as_dict()})

    async def clip_audio(self, request: web.Request) -> web.StreamResponse:
        """The stored clip's file as it is, so the phone can listen before a broadcast
        (an ``<audio>`` element; the session cookie goes with it). Only a clip the store
        lists is served, by the store's own path for it."""
        if self.clips is None:
            return error(503, "not_available", "the loudspeakers are not set up on this gateway")
        wanted = request.match_info["clip"]
        known = {clip.name: clip for clip in self.clips.list()}
        path_of: Callable[[str], Path] | None = getattr(self.clips, "path", None)
        clip = known.get(wanted)
        if clip is None or path_of is None:
            missing = f"no clip named {wanted!r}"
            return refusal(404, "unknown_target", missing, {"reason": "clip_not_found"})
        try:
            path = path_of(wanted)
        except GatewayError as exc:
            return refusal(404, "unknown_target", str(exc), {"reason": "clip_not_found"})
        kind = str(clip.as_dict().get("format", ""))
        content_type = _AUDIO_TYPES.get(kind, "application/octet-stream")
        return web.FileResponse(path, headers={"Content-Type": content_type})

    def clear_uploads(self) -> None:
        """Remove what uploads cut short by a crash left behind (at start)."""
        with contextlib.suppress(OSError):
            for leftover in self.upload_dir.glob("upload-*"):
                _unlink(leftover)


def _busy() -> web.Response:
    return error(503, "busy", "too many password checks at once; try again", **{"Retry-After": "1"})


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


_MALFORMED = (ValueError, AssertionError, LookupError, HttpProcessingError)
"""What aiohttp's multipart reader raises on a body it cannot parse (no or a wrong
Content-Type, no boundary, broken part headers, a body cut short)."""


async def _read_upload(  # noqa: PLR0911 - one return per refusal
    request: web.Request, cap: int, temp: Path
) -> tuple[str, int, str] | web.Response:
    """The clip's name, size and sha256 from a multipart body whose ``file`` field is
    streamed to ``temp``, or the error to answer."""
    too_large = error(413, "too_large", f"a clip is at most {cap} bytes (web.max_upload_mb)")
    too_large.force_close()  # do not read the rest of a body we refuse
    if request.content_length is not None and request.content_length > cap + _CHUNK:
        return too_large
    malformed = error(400, "bad_args", "send multipart/form-data with the fields name and file")
    malformed.force_close()
    try:
        reader = await request.multipart()
    except _MALFORMED:
        return malformed
    name_field = b""
    filename: str | None = None
    stored: tuple[int, str] | None = None
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name not in ("name", "file"):
                return error(400, "bad_args", "only the fields name and file are accepted")
            if part.name == "file":
                filename = part.filename
                stored = await _stream_part(part, cap, temp)
            else:
                name_field = await _read_part(part, 256)
    except _TooLargeError:
        _log.warning("web.upload_refused", address=request.remote, limit_bytes=cap)
        return too_large
    except _MALFORMED as exc:
        _log.info("web.upload_malformed", address=request.remote, error=str(exc)[:200])
        return malformed
    name = name_field.decode("utf-8", "replace").strip()
    if not name and filename:
        name = PurePosixPath(filename.replace("\\", "/")).stem
    if stored is None or not name:
        return error(400, "bad_args", "give the fields name and file")
    return name, *stored


async def _read_part(part: BodyPartReader, limit: int) -> bytes:
    """One small multipart field, chunk by chunk, refusing beyond ``limit`` bytes."""
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        data += chunk
        if len(data) > limit:
            raise _TooLargeError
    return bytes(data)


async def _stream_part(part: BodyPartReader, limit: int, path: Path) -> tuple[int, str]:
    """Write one multipart field to ``path`` (flushed to the card) a piece at a time,
    refusing beyond ``limit`` bytes; returns its size and sha256."""
    digest = hashlib.sha256()
    size = 0
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        pending = bytearray()
        while chunk := await part.read_chunk(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise _TooLargeError
            pending += chunk
            if len(pending) >= _WRITE_BYTES:
                piece, pending = bytes(pending), bytearray()
                await asyncio.to_thread(_write_piece, fd, piece, digest)
        await asyncio.to_thread(_write_piece, fd, bytes(pending), digest)
        await asyncio.to_thread(os.fsync, fd)
    finally:
        await asyncio.to_thread(os.close, fd)
    return size, digest.hexdigest()


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


def _write_piece(fd: int, data: bytes, digest: _Digest) -> None:
    digest.update(data)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
