"""A real WebServer on 127.0.0.1 behind aiohttp's own test server, for the web tests.

The server is the daemon's (same middlewares, same routes); the Dispatcher is the real
one, with the daemon's own ``system.ping``-style handler. Its clock is injected so
session expiry and lockouts are tested without waiting.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from gateway.commands import Dispatcher, Source
from gateway.config import Settings
from gateway.events import EventHub
from gateway.outbox import Outbox
from gateway.state import StateStore
from gateway.web import HealthReport, WebServer
from gateway.web.api import ClipsLike
from tests.conftest import clean_env

PASSWORD = "mật khẩu đủ dài"  # noqa: S105 - the test's own password


@dataclass
class Clock:
    """A monotonic clock the test moves by hand."""

    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Rig:
    """The server, a client, and the parts a test looks at."""

    server: WebServer
    client: TestClient[Any, Any]
    clock: Clock
    state: StateStore
    state_dir: Path
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    csrf: str | None = None

    @property
    def origin(self) -> str:
        """What a browser showing the page sends as ``Origin``."""
        return f"http://{self.client.host}:{self.client.port}"

    async def post(
        self,
        path: str,
        body: object = None,
        *,
        csrf: str | bool | None = True,
        origin: str | bool | None = True,
        **kwargs: Any,
    ) -> ClientResponse:
        """POST as the page would: own Origin, this session's CSRF token (unless told)."""
        headers: dict[str, str] = dict(kwargs.pop("headers", {}))
        if origin is True:
            headers["Origin"] = self.origin
        elif isinstance(origin, str):
            headers["Origin"] = origin
        if csrf is True and self.csrf is not None:
            headers["X-CSRF-Token"] = self.csrf
        elif isinstance(csrf, str):
            headers["X-CSRF-Token"] = csrf
        if body is not None:
            kwargs["json"] = body
        return await self.client.post(path, headers=headers, **kwargs)

    async def setup(self, code: str, password: str = PASSWORD) -> ClientResponse:
        """First run: the setup code from the log, then a password."""
        response = await self.post("/api/v1/setup", {"code": code, "password": password})
        if response.status == 200:
            self.csrf = (await response.json())["csrf"]
        return response

    async def login(self, password: str = PASSWORD) -> ClientResponse:
        """Log in; keeps the CSRF token for the next requests."""
        response = await self.post("/api/v1/login", {"password": password})
        if response.status == 200:
            self.csrf = (await response.json())["csrf"]
        return response

    async def command(self, envelope: Mapping[str, Any]) -> dict[str, Any]:
        """POST a command; returns the reply JSON (asserts HTTP 200)."""
        response = await self.post("/api/v1/commands", dict(envelope))
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


def set_password(config: Path, typed: str) -> subprocess.CompletedProcess[str]:
    """``village-gateway set-password --config CONFIG`` with ``typed`` on a pipe."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "set-password", "--config", str(config)],
        input=typed,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )


def settings_for(state_dir: Path, **web: object) -> Settings:
    """Settings of a test gateway; ``web`` overrides [web] keys."""
    return Settings(
        gateway={"id": "test.gw1", "name": "Nhà văn hóa <b>thử</b>", "state_dir": state_dir},
        web={"host": "127.0.0.1", **web},
    )


@asynccontextmanager
async def web_rig(
    state_dir: Path,
    *,
    password: str | None = PASSWORD,
    clips: ClipsLike | None = None,
    **web: object,
) -> AsyncIterator[Rig]:
    """Serve a WebServer (password set unless None) with a real Dispatcher attached."""
    state_dir.mkdir(parents=True, exist_ok=True)
    settings = settings_for(state_dir, **web)
    if password is not None:
        from gateway.web.auth import PasswordFile  # noqa: PLC0415

        PasswordFile(state_dir).write(password)
    clock = Clock()
    state = StateStore()
    records: list[tuple[str, dict[str, Any]]] = []
    server = WebServer(
        host="127.0.0.1",
        port=0,
        health=lambda: HealthReport(True, {"version": "test", "components": {}}),
        registry=CollectorRegistry(),
        state=state,
        settings=settings,
        clock=clock,
        session_sweep_s=0.05,  # open pages notice an idle-expired session at once
    )
    outbox = await Outbox.open(state_dir / "outbox", commit_window_s=0.01)

    def feed(event: dict[str, Any], seq: int | None) -> None:
        records.append(("events", event))
        server.event(event, seq)

    async def ping(args: BaseModel, source: Source) -> dict[str, Any]:
        return {"pong": True, "source": source}

    dispatcher = Dispatcher(
        state_dir=state_dir,
        handlers={"system.ping": ping},
        outbox=outbox,
        events=EventHub(outbox, feed),
        clock_synced=lambda: True,
        wall=time.time,
    )
    server.attach(dispatcher=dispatcher, clips=clips)
    client: TestClient[Any, Any] = TestClient(TestServer(server.app, host="127.0.0.1"))
    await client.start_server()
    server.begin()
    try:
        yield Rig(server, client, clock, state, state_dir, records)
    finally:
        await server.end()
        await client.close()
        dispatcher.close()
        await outbox.close()
