"""The ``/api/v1`` routes: session, setup, login, state, commands, events, clips, ws.

Who may call what is decided before these handlers run, by the guard in
:mod:`gateway.web.server` (deny by default, CSRF, Origin). The handlers only do their
own job. Commands go to the one :class:`~gateway.commands.Dispatcher`, exactly like
MQTT; the HTTP status is 200 whatever the reply's ``status``, which the page reads.
Every error is JSON ``{"error": {"code", "message"}}``; no answer is ever HTML built
from input, and nothing here reaches a shell.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any, Protocol

from aiohttp import BodyPartReader, web
from pydantic import BaseModel

from gateway.commands import Dispatcher, new_id
from gateway.config import Settings
from gateway.errors import GatewayError
from gateway.log import get_logger
from gateway.state import StateStore
from gateway.web.auth import MAX_PASSWORD_CHARS, Access, PasswordError, check_new_password
from gateway.web.live import LiveHub
from gateway.web.sessions import COOKIE, Session

__all__ = ["SESSION", "Api", "ClipsLike", "SchedulerLike", "error"]

_log = get_logger("web")

SESSION = web.RequestKey("session", Session)
"""Where the guard leaves the request's :class:`Session` (absent: not logged in)."""
MAX_JSON_BYTES = 16 * 1024
"""Login, setup and password bodies are tiny; anything bigger is refused unread."""
_CHUNK = 64 * 1024
STATE_CACHE_S = 0.5


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


def error(status: int, code: str, message: str, **headers: str) -> web.Response:
    """The one error shape of the API."""
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers or None
    )


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
        router.add_get("/api/v1/ws", self.ws)

    # -- sessions ---------------------------------------------------------------------

    def _start_session(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        token, session = self._access.sessions.create()
        response = web.json_response({**body, "csrf": session.csrf})
        response.set_cookie(
            COOKIE,
            token,
            max_age=int(self._settings.web.session_ttl_s),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    def _locked(self, address: str) -> web.Response | None:
        wait = self._access.limiter.retry_after(address)
        if wait is None:
            return None
        self.logins["locked"] += 1
        return error(
            429, "locked_out", f"too many wrong tries; wait {wait} s", **{"Retry-After": str(wait)}
        )

    def _wrong(self, address: str, status: int, code: str, message: str) -> web.Response:
        self.logins["wrong"] += 1
        locked_for = self._access.limiter.failure(address)
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
        return web.json_response(
            {
                "authenticated": current is not None,
                "csrf": current.csrf if current is not None else None,
                "setup_required": self._access.setup_required,
                "public_status": self._settings.web.public_status,
                "gateway": {"id": gateway.id, "name": gateway.name},
            }
        )

    async def setup(self, request: web.Request) -> web.Response:  # noqa: PLR0911 - one per refusal
        """First run: the setup code from the journal sets the first password."""
        address = request.remote or "?"
        if not self._access.setup_required:
            return error(409, "already_set", "a password is set; log in instead")
        if (locked := self._locked(address)) is not None:
            return locked
        data = await _json_object(request)
        if isinstance(data, web.Response):
            return data
        code, password = _text(data, "code"), _text(data, "password")
        if code is None or password is None:
            return error(400, "bad_args", "give code and password (strings)")
        if not self._access.setup_code_ok(code):
            return self._wrong(address, 403, "forbidden", "wrong setup code (see the log)")
        try:
            check_new_password(password)
        except PasswordError as exc:
            return error(400, "bad_args", str(exc))
        await self._access.set_password(password)
        self._access.limiter.success(address)
        self.logins["ok"] += 1
        _log.warning("web.password_set", address=address, via="setup code")
        return self._start_session(request, {})

    async def login(self, request: web.Request) -> web.Response:
        """The password gives a session cookie and a CSRF token."""
        address = request.remote or "?"
        if self._access.setup_required:
            return error(409, "setup_required", "no password yet: use the setup code")
        if (locked := self._locked(address)) is not None:
            return locked
        data = await _json_object(request)
        if isinstance(data, web.Response):
            return data
        password = _text(data, "password")
        if password is None:
            return error(400, "bad_args", "give password (a string)")
        if not await self._access.password_ok(password):
            return self._wrong(address, 401, "unauthenticated", "wrong password")
        self._access.limiter.success(address)
        self.logins["ok"] += 1
        _log.info("web.login", address=address)
        return self._start_session(request, {})

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
        address = request.remote or "?"
        if (locked := self._locked(address)) is not None:
            return locked
        data = await _json_object(request)
        if isinstance(data, web.Response):
            return data
        current, new = _text(data, "current"), _text(data, "new")
        if current is None or new is None:
            return error(400, "bad_args", "give current and new (strings)")
        if not await self._access.password_ok(current):
            return self._wrong(address, 403, "forbidden", "the current password is wrong")
        try:
            check_new_password(new)
        except PasswordError as exc:
            return error(400, "bad_args", str(exc))
        await self._access.set_password(new)
        _log.warning("web.password_set", address=address, via="web")
        return self._start_session(request, {})

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
        return web.json_response({"clips": [clip.as_dict() for clip in self.clips.list()]})

    async def upload_clip(self, request: web.Request) -> web.StreamResponse:
        """multipart ``name`` + ``file``: the size cap holds while the body streams in."""
        if self.clips is None:
            return error(503, "not_available", "the loudspeakers are not set up on this gateway")
        cap = int(self._settings.web.max_upload_mb * 1_000_000)
        received = await _read_upload(request, cap)
        if isinstance(received, web.Response):
            return received
        name, data = received
        try:
            clip = await self.clips.add(name, data)
        except GatewayError as exc:
            key = str(getattr(exc, "key", "bad_args"))
            return error(413 if key == "too_large" else 400, key, str(exc))
        _log.info("web.clip_uploaded", name=clip.name, bytes=len(data))
        return web.json_response({"clip": clip.as_dict()})


async def _read_upload(  # noqa: PLR0911 - one return per refusal
    request: web.Request, cap: int
) -> tuple[str, bytes] | web.Response:
    """The clip's name and bytes from a multipart body, or the error to answer."""
    too_large = error(413, "too_large", f"a clip is at most {cap} bytes (web.max_upload_mb)")
    too_large.force_close()  # do not read the rest of a body we refuse
    if request.content_length is not None and request.content_length > cap + _CHUNK:
        return too_large
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError):
        return error(400, "bad_args", "send multipart/form-data with name and file")
    fields: dict[str, bytes] = {}
    filename: str | None = None
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name not in ("name", "file"):
                return error(400, "bad_args", "only the fields name and file are accepted")
            if part.name == "file":
                filename = part.filename
            fields[part.name] = await _read_part(part, cap if part.name == "file" else 256)
    except _TooLargeError:
        _log.warning("web.upload_refused", address=request.remote, limit_bytes=cap)
        return too_large
    except ValueError as exc:
        return error(400, "bad_args", f"malformed multipart body: {exc}")
    name = fields.get("name", b"").decode("utf-8", "replace").strip()
    if not name and filename:
        name = PurePosixPath(filename.replace("\\", "/")).stem
    if "file" not in fields or not name:
        return error(400, "bad_args", "give the fields name and file")
    return name, fields["file"]


async def _read_part(part: BodyPartReader, limit: int) -> bytes:
    """One multipart field, chunk by chunk, refusing beyond ``limit`` bytes."""
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        data += chunk
        if len(data) > limit:
            raise _TooLargeError
    return bytes(data)
