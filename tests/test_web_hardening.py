"""Issue 13: the web UI holds when the LAN is hostile.

Each test here is an attack that worked before: racing the login lockout with parallel
guesses, flooding or outwaiting the lockout table, idle and trickling connections,
uploads held in memory and run side by side, malformed multipart, probes read through a
rebound name (in test_web_security), a WebSocket outliving its session, and the client
address behind a reverse proxy. Only 127.0.0.0/8 is contacted; clocks are injected.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from gateway.state import StateStore
from gateway.web import HealthReport, WebServer
from gateway.web import auth as auth_module
from gateway.web.auth import HASHES_AT_ONCE, HASHES_WAITING, HashBusyError
from gateway.web.connections import ConnectionGate
from gateway.web.ratelimit import LoginLimiter, address_key
from gateway.web.server import forwarded_client
from tests.test_app import wait_for
from tests.webrig import PASSWORD, Clock, Rig, settings_for, web_rig

WRONG = "sai mật khẩu rồi"


class _Spy:
    """Stands for ``verify_password``: counts checks and can hold them until released."""

    def __init__(self, *, hold: bool = False) -> None:
        self.real = auth_module.verify_password
        self.calls: list[str] = []
        self.running = 0
        self.most_at_once = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        if not hold:
            self.release.set()

    def __call__(self, password: str, encoded: str) -> bool:
        with self._lock:
            self.calls.append(password)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.release.wait(timeout=30)
            return self.real(password, encoded)
        finally:
            with self._lock:
                self.running -= 1


# -- 1. the lockout cannot be raced ----------------------------------------------------


async def test_parallel_wrong_guesses_get_no_more_checks_than_serial_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 wrong guesses at once from one address: at most login_max_attempts of them are
    checked at all (before: all 40 were hashed), and none but 401/429 comes back."""
    spy = _Spy()
    monkeypatch.setattr(auth_module, "verify_password", spy)
    async with web_rig(tmp_path, login_max_attempts=5, login_lockout_s=30) as rig:
        answers = await asyncio.gather(*(rig.login(f"{WRONG} {i}") for i in range(40)))
        statuses = [a.status for a in answers]
        assert len(spy.calls) <= 5, len(spy.calls)
        assert statuses.count(401) <= 4
        assert set(statuses) <= {401, 429}
        assert statuses.count(429) >= 35


async def test_the_right_password_in_a_burst_after_the_threshold_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 wrong tries, then a burst of 40 with the right password 35th: the one guess in
    flight is the 5th try and locks the address, so the right one is never checked
    (before: every guess of the burst passed the lock check and the right one got 200)."""
    spy = _Spy(hold=True)
    monkeypatch.setattr(auth_module, "verify_password", spy)
    async with web_rig(tmp_path, login_max_attempts=5, login_lockout_s=30) as rig:
        try:
            spy.release.set()
            for i in range(4):
                assert (await rig.login(f"{WRONG} {i}")).status == 401
            spy.release.clear()
            first = [asyncio.create_task(rig.login(f"{WRONG} a{i}")) for i in range(34)]
            await wait_for(lambda: len(spy.calls) == 5)  # one of them is being hashed
            rest = [rig.login(PASSWORD)] + [rig.login(f"{WRONG} b{i}") for i in range(5)]
            later = await asyncio.wait_for(asyncio.gather(*rest), timeout=10)
            assert [a.status for a in later] == [429] * 6
            spy.release.set()
            burst = await asyncio.wait_for(asyncio.gather(*first), timeout=30)
        finally:
            spy.release.set()
        assert [a.status for a in burst].count(429) == 34
        assert PASSWORD not in spy.calls
        assert len(spy.calls) == 5
        assert (await rig.login()).status == 429  # locked, right password or not
        rig.clock.advance(31)
        assert (await rig.login()).status == 200


async def test_password_change_cannot_be_raced_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guessing the current password through the change form in parallel: no more checks
    than the lockout allows."""
    async with web_rig(tmp_path, login_max_attempts=5) as rig:
        assert (await rig.login()).status == 200
        spy = _Spy()
        monkeypatch.setattr(auth_module, "verify_password", spy)
        answers = await asyncio.gather(
            *(
                rig.post("/api/v1/password", {"current": f"{WRONG} {i}", "new": "mới mới mới"})
                for i in range(30)
            )
        )
        statuses = [a.status for a in answers]
        assert len(spy.calls) <= 5
        assert statuses.count(403) <= 4
        assert set(statuses) <= {403, 429}


async def test_parallel_setup_codes_get_no_more_tries_than_serial_ones(tmp_path: Path) -> None:
    """The setup code, guessed 40 times at once with the right code 35th: never more
    than 4 wrong codes answered 403 before the address is locked."""
    async with web_rig(tmp_path, password=None, login_max_attempts=5) as rig:
        code = rig.server.access._setup_code
        assert code is not None
        guesses = [f"AAAA-BBBB-{i:04d}" for i in range(40)]
        guesses[34] = code
        answers = await asyncio.gather(*(rig.setup(g) for g in guesses))
        statuses = [a.status for a in answers]
        assert statuses.count(403) <= 4
        assert set(statuses) <= {200, 403, 429}
        if statuses[34] == 200:  # only if it came before the lockout, as serially
            assert statuses.count(403) < 5


async def test_at_most_two_password_hashes_run_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checks from many addresses share a cap of two hashes at a time; beyond the queue
    the check is refused at once instead of filling the thread pool."""
    async with web_rig(tmp_path) as rig:
        spy = _Spy(hold=True)
        monkeypatch.setattr(auth_module, "verify_password", spy)
        access = rig.server.access
        n = HASHES_AT_ONCE + HASHES_WAITING
        try:
            checks = [asyncio.create_task(access.password_ok(WRONG)) for _ in range(n)]
            await wait_for(lambda: spy.running == HASHES_AT_ONCE)
            with pytest.raises(HashBusyError):
                await access.password_ok(PASSWORD)
        finally:
            spy.release.set()
        assert await asyncio.gather(*checks) == [False] * n
        assert spy.most_at_once == HASHES_AT_ONCE
        # Through HTTP: the refusal is a 503 with a JSON error, not a stuck request.
        spy.release.clear()
        try:
            held = [asyncio.create_task(access.password_ok(WRONG)) for _ in range(n)]
            await wait_for(lambda: spy.running == HASHES_AT_ONCE)
            busy = await rig.login()
            assert busy.status == 503
            assert (await busy.json())["error"]["code"] == "busy"
        finally:
            spy.release.set()
        await asyncio.gather(*held)
        assert (await rig.login()).status == 200  # the busy answer counted nothing


# -- 3. the lockout table: no flushing, and decay --------------------------------------


def test_a_flood_of_new_addresses_does_not_wipe_a_lockout() -> None:
    """The table is full of addresses that tried once; the locked one stays locked
    (before: the oldest entry went first, locked or not)."""
    clock = Clock()
    limiter = LoginLimiter(
        max_attempts=5, lockout_s=30, max_lockout_s=3600, clock=clock, max_addresses=100
    )
    for _ in range(5):
        limiter.failure("192.0.2.66")
    assert limiter.retry_after("192.0.2.66") == 30
    for n in range(5000):
        limiter.failure(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
        assert len(limiter) <= 100
    assert limiter.retry_after("192.0.2.66") == 30
    clock.advance(10)
    assert limiter.retry_after("192.0.2.66") == 20


def test_one_wrong_try_an_hour_never_locks_anyone_out() -> None:
    """Behind a NAT a whole village shares an address: an occasional typo must not add
    up to a lockout (before: after five, every single miss locked again, for an hour)."""
    clock = Clock()
    limiter = LoginLimiter(max_attempts=5, lockout_s=30, max_lockout_s=3600, clock=clock)
    for _ in range(48):
        assert limiter.failure("192.0.2.1") is None
        clock.advance(3600)
    assert limiter.retry_after("192.0.2.1") is None


def test_lockouts_escalate_while_guessing_goes_on_and_fade_after() -> None:
    """Serial guessing still doubles the wait; a long quiet spell forgets it again."""
    clock = Clock()
    limiter = LoginLimiter(max_attempts=5, lockout_s=30, max_lockout_s=3600, clock=clock)
    for _ in range(4):
        assert limiter.failure("a") is None
    assert limiter.failure("a") == 30
    clock.advance(31)
    assert limiter.failure("a") == 60
    clock.advance(61)
    assert limiter.failure("a") == 120
    clock.advance(121 + 4 * 3600)  # four half-lives of quiet: 7 tries weigh under one
    assert [limiter.failure("a") for _ in range(4)] == [None] * 4
    assert limiter.failure("a") is not None


def test_one_attempt_in_flight_per_address_and_ipv6_counts_by_64() -> None:
    limiter = LoginLimiter(max_attempts=5, lockout_s=30, max_lockout_s=3600, clock=Clock())
    assert limiter.begin("a") is None
    assert limiter.begin("a") == 1  # busy: refused, not counted
    assert limiter.begin("b") is None
    assert limiter.end("a", ok=None) is None  # no verdict: taken back
    assert limiter.begin("a") is None
    assert limiter.end("a", ok=True) is None
    assert len(limiter) == 1  # "a" forgotten on success, "b" still in flight
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("192.0.2.7") == "192.0.2.7"


# -- 2. idle and trickling connections -------------------------------------------------


@asynccontextmanager
async def _listening(state_dir: Path, **kwargs: Any) -> AsyncIterator[WebServer]:
    """A WebServer on its own port of 127.0.0.1, started as the daemon starts it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    server = WebServer(
        host="127.0.0.1",
        port=0,
        health=lambda: HealthReport(True, {"version": "test", "components": {}}),
        registry=CollectorRegistry(),
        state=StateStore(),
        settings=settings_for(state_dir),
        **kwargs,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _healthz(port: int, source: str) -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        return response.status


async def test_two_hundred_idle_sockets_from_one_address_do_not_lock_others_out(
    tmp_path: Path,
) -> None:
    """200 idle connections from 127.0.0.1: the per-address cap closes the ones beyond
    it at once, /healthz still answers another address (127.0.0.2), and the refusals
    are logged once, not once per socket."""
    async with _listening(tmp_path) as server:
        cap = server.connections.per_address
        assert cap < 200
        port = server.port
        sockets: list[asyncio.StreamWriter] = []
        try:
            with capture_logs() as logs:
                for _ in range(200):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    sockets.append(writer)
                await wait_for(lambda: server.connections.refused >= 200 - cap)
            assert server.connections.from_address("127.0.0.1") == cap
            assert server.connections.refused == 200 - cap
            refusals = [e for e in logs if e["event"] == "web.connections_refused"]
            assert len(refusals) == 1
            assert await _healthz(port, "127.0.0.2") == 200
            with pytest.raises(aiohttp.ClientError):
                await _healthz(port, "127.0.0.1")
        finally:
            for writer in sockets:
                writer.close()
        await wait_for(lambda: server.connections.open == 0)
        assert await _healthz(port, "127.0.0.1") == 200


async def test_the_overall_cap_refuses_every_address(tmp_path: Path) -> None:
    async with _listening(tmp_path, max_connections=20, max_per_address=15) as server:
        sockets = []
        try:
            for source in ("127.0.0.3", "127.0.0.4"):
                for _ in range(15):
                    _, writer = await asyncio.open_connection(
                        "127.0.0.1", server.port, local_addr=(source, 0)
                    )
                    sockets.append(writer)
            await wait_for(lambda: server.connections.refused >= 10)
            assert server.connections.open == 20
            with pytest.raises(aiohttp.ClientError):
                await _healthz(server.port, "127.0.0.5")
        finally:
            for writer in sockets:
                writer.close()
        await wait_for(lambda: server.connections.open == 0)
        assert await _healthz(server.port, "127.0.0.5") == 200


async def test_idle_and_trickling_connections_are_cut_off(tmp_path: Path) -> None:
    """A connection that sends nothing, and one that sends its request head a line at a
    time without ever finishing, are both closed after the keep-alive time (before:
    kept for an hour, the head for ever)."""
    async with _listening(tmp_path, keepalive_s=0.5) as server:
        idle_reader, idle = await asyncio.open_connection("127.0.0.1", server.port)
        slow_reader, slow = await asyncio.open_connection("127.0.0.1", server.port)
        slow.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")

        async def trickle() -> None:
            for n in range(200):
                await asyncio.sleep(0.05)
                slow.write(f"X-Slow-{n}: a\r\n".encode())

        feeding = asyncio.create_task(trickle())
        try:
            async with asyncio.timeout(10):
                assert await idle_reader.read() == b""
                assert await slow_reader.read() == b""
        finally:
            feeding.cancel()
            idle.close()
            slow.close()


def test_accept_errors_and_refusals_are_logged_at_a_bounded_rate() -> None:
    clock = Clock()
    gate = ConnectionGate(total=1, per_address=1, clock=clock)
    passed: list[dict[str, Any]] = []
    handle = gate.exception_handler(lambda loop, context: passed.append(context))
    loop = asyncio.new_event_loop()
    try:
        with capture_logs() as logs:
            assert gate.admit("192.0.2.1")
            for _ in range(1000):
                assert not gate.admit("192.0.2.2")
                handle(
                    loop,
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(24, "Too many open files"),
                    },
                )
            clock.advance(11)
            assert not gate.admit("192.0.2.2")
            handle(loop, {"message": "something else"})
    finally:
        loop.close()
    assert [c["message"] for c in passed] == ["something else"]
    lines = [e for e in logs if e["event"] == "web.connections_refused"]
    assert len(lines) == 2
    assert lines[1]["counts"] == {"too_many_connections": 1000, "accept_failed": 1000}
    assert gate.refused == 1001
    assert gate.accept_errors == 1000


# -- 4, 5. uploads -----------------------------------------------------------------------


class _FileStore:
    """A clip store that takes the uploaded file, as ClipStore.add_file does; it can
    hold uploads until released."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Path, str, int, bytes]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.waiting = 0

    def list(self) -> list[Any]:
        return []

    async def add(self, name: str, data: bytes) -> Any:
        raise AssertionError("the upload went through memory")

    async def add_file(self, name: str, path: Path, *, sha256: str, size: int) -> Any:
        self.received.append((name, path, sha256, size, path.read_bytes()))
        self.waiting += 1
        try:
            await self.release.wait()
        finally:
            self.waiting -= 1
        return _Clip(name)


class _Clip:
    def __init__(self, name: str) -> None:
        self.name = name

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name}


def _form(name: str, data: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("name", name)
    form.add_field("file", data, filename=f"{name}.wav", content_type="audio/wav")
    return form


async def test_an_upload_streams_to_a_file_in_the_state_folder(tmp_path: Path) -> None:
    store = _FileStore()
    data = bytes(range(256)) * 8000  # 2 MB: several pieces
    async with web_rig(tmp_path, clips=store) as rig:
        await rig.login()
        response = await rig.post("/api/v1/clips", data=_form("loa", data))
        assert response.status == 200, await response.text()
    [(name, path, sha256, size, seen)] = store.received
    assert name == "loa"
    assert path.parent == tmp_path / "uploads"
    assert (size, sha256, seen) == (len(data), hashlib.sha256(data).hexdigest(), data)
    assert not path.exists()  # the store took it, or it was removed


async def test_a_third_upload_at_once_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    store = _FileStore()
    store.release.clear()
    async with web_rig(tmp_path, clips=store) as rig:
        await rig.login()
        first = [
            asyncio.create_task(rig.post("/api/v1/clips", data=_form(f"loa{i}", b"RIFF" * 100)))
            for i in range(2)
        ]
        try:
            await wait_for(lambda: store.waiting == 2)
            third = await rig.post("/api/v1/clips", data=_form("loa3", b"RIFF" * 100))
            assert third.status == 429
            assert (await third.json())["error"]["code"] == "busy"
        finally:
            store.release.set()
        assert [r.status for r in await asyncio.gather(*first)] == [200, 200]
        again = await rig.post("/api/v1/clips", data=_form("loa3", b"RIFF" * 100))
        assert again.status == 200
    assert list((tmp_path / "uploads").iterdir()) == []


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"--x\r\nContent-Disposition: form-data; name=file\r\n\r\nabc\r\n--x--\r\n", None),
        (b"abc", "multipart/form-data"),  # no boundary
        (
            b"--x\r\nContent-Disposition: form-data; name=file\r\nbroken header line\r\n"
            b"\r\ndata\r\n--x--\r\n",
            "multipart/form-data; boundary=x",
        ),
        (b"--x\r\n\xff\xfe: \x00\r\n\r\ndata\r\n--x--\r\n", "multipart/form-data; boundary=x"),
        (b"--y\r\ndata", "multipart/form-data; boundary=x"),
        (
            b"--x\r\nContent-Disposition: form-data; name=file\r\n\r\ncut short",
            "multipart/form-data; boundary=x",
        ),
    ],
    ids=[
        "no-content-type",
        "no-boundary",
        "broken-part-header",
        "binary-header",
        "wrong-boundary",
        "cut-short",
    ],
)
async def test_malformed_multipart_is_a_400_json_error(
    tmp_path: Path, body: bytes, content_type: str | None
) -> None:
    store = _FileStore()
    async with web_rig(tmp_path, clips=store) as rig:
        await rig.login()
        headers = {"Content-Type": content_type} if content_type else {}
        skip = [] if content_type else ["Content-Type"]
        response = await rig.post(
            "/api/v1/clips", data=body, headers=headers, skip_auto_headers=skip
        )
        assert response.status == 400, await response.text()
        assert (await response.json())["error"]["code"] == "bad_args"
    assert store.received == []


# -- 7. the WebSocket and the session's idle time ---------------------------------------


async def test_an_open_websocket_closes_when_its_session_idles_out(tmp_path: Path) -> None:
    """A page that only listens makes no request; once session_idle_s passes without
    one, its feed closes (before: it kept receiving until the absolute lifetime)."""
    async with web_rig(tmp_path, session_idle_s=600, session_ttl_s=3600) as rig:
        await rig.login()
        async with rig.client.ws_connect("/api/v1/ws", headers={"Origin": rig.origin}) as ws:
            assert (await ws.receive_json(timeout=10))["kind"] == "hello"
            rig.clock.advance(599)
            await asyncio.sleep(0.2)  # sweeps run meanwhile; still within idle time
            assert not ws.closed
            rig.clock.advance(2)
            message = await ws.receive(timeout=10)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert (await rig.client.get("/api/v1/state")).status == 401


# -- 8. behind a reverse proxy ---------------------------------------------------------


def test_the_client_is_the_rightmost_address_no_trusted_proxy_added() -> None:
    from ipaddress import ip_network  # noqa: PLC0415

    # Documentation ranges (RFC 5737): the parser does not care whether a proxy is private.
    proxies = (ip_network("203.0.113.0/24"), ip_network("127.0.0.1/32"))
    hops = ["6.6.6.6, 198.51.100.7", "203.0.113.2"]
    assert forwarded_client("203.0.113.1", hops, proxies) == "198.51.100.7"
    assert forwarded_client("192.0.2.1", hops, proxies) == "192.0.2.1"  # not a proxy
    assert forwarded_client("127.0.0.1", [], proxies) == "127.0.0.1"
    assert forwarded_client("127.0.0.1", ["junk, 203.0.113.9"], proxies) == "203.0.113.9"
    assert forwarded_client("127.0.0.1", ["[2001:db8::5]"], proxies) == "2001:db8::5"


async def _login_via_proxy(rig: Rig, client: str, password: str, proto: str = "http") -> Any:
    origin = rig.origin.replace("http://", f"{proto}://")
    return await rig.post(
        "/api/v1/login",
        {"password": password},
        origin=origin,
        headers={"X-Forwarded-For": client, "X-Forwarded-Proto": proto},
    )


async def test_behind_a_trusted_proxy_each_client_has_its_own_limit(tmp_path: Path) -> None:
    async with web_rig(tmp_path, trusted_proxies=["127.0.0.1"], login_max_attempts=3) as rig:
        for _ in range(3):
            await _login_via_proxy(rig, "203.0.113.9", WRONG)
        assert rig.server.access.limiter.retry_after("203.0.113.9") is not None
        assert (await _login_via_proxy(rig, "203.0.113.9", PASSWORD)).status == 429
        assert (await _login_via_proxy(rig, "203.0.113.10", PASSWORD)).status == 200
        secure = await _login_via_proxy(rig, "203.0.113.10", PASSWORD, proto="https")
        assert secure.status == 200
        assert "Secure" in secure.headers["Set-Cookie"]
        plain = await _login_via_proxy(rig, "203.0.113.11", PASSWORD)
        assert "Secure" not in plain.headers["Set-Cookie"]


async def test_forwarded_headers_from_anyone_else_mean_nothing(tmp_path: Path) -> None:
    """Without web.trusted_proxies the headers are the client's own words: its lockout
    stays on its real address and the cookie stays as the connection is."""
    async with web_rig(tmp_path, login_max_attempts=3) as rig:
        for n in range(3):
            await _login_via_proxy(rig, f"203.0.113.{n}", WRONG)
        assert rig.server.access.limiter.retry_after("127.0.0.1") is not None
        assert (await _login_via_proxy(rig, "203.0.113.50", PASSWORD)).status == 429
        refused = await _login_via_proxy(rig, "203.0.113.51", PASSWORD, proto="https")
        assert refused.status == 403  # an https Origin does not match a plain connection
