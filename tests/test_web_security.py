"""Each web security rule, attacked directly; each test fails if its rule is removed.

The attacks are the ones LAN appliances keep falling to: a route someone forgot to
protect, a first visitor claiming the device, a POST from another site, guessing the
password, a session that outlives a password change, a huge or hostile upload, markup
smuggled into a label.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs
from yarl import URL

from gateway.log import configure_logging
from gateway.web.auth import PasswordFile
from gateway.web.live import LOG_TAP
from gateway.web.server import ALLOWLIST, CSP, PUBLIC_STATUS
from tests.webrig import PASSWORD, Rig, set_password, web_rig

EXPECTED_ALLOWLIST = {
    "/",
    "/static/{path}",
    "/healthz",
    "/metrics",
    "/api/v1/session",
    "/api/v1/login",
    "/api/v1/setup",
}


async def _login_token(rig: Rig, password: str = PASSWORD) -> tuple[str, str]:
    """Log in and return (cookie value, csrf), leaving the client's jar empty."""
    response = await rig.login(password)
    assert response.status == 200
    token = response.cookies["vg_session"].value
    rig.client.session.cookie_jar.clear()
    return token, (await response.json())["csrf"]


def _as(token: str, csrf: str | None = None, origin: str | None = None) -> dict[str, str]:
    headers = {"Cookie": f"vg_session={token}"}
    if csrf is not None:
        headers["X-CSRF-Token"] = csrf
    if origin is not None:
        headers["Origin"] = origin
    return headers


async def test_every_route_not_on_the_allowlist_needs_a_session(tmp_path: Path) -> None:
    """Enumerate the app's routes: without a cookie, each one off the allowlist is 401,
    even from the page's own origin; the allowlist itself is exactly the expected one."""
    assert set(ALLOWLIST) == EXPECTED_ALLOWLIST
    assert set(PUBLIC_STATUS) == {"/api/v1/state", "/api/v1/ws"}
    async with web_rig(tmp_path) as rig:
        checked = []
        for resource in rig.server.app.router.resources():
            pattern = resource.canonical
            if pattern in ALLOWLIST:
                continue
            path = re.sub(r"\{[^}]+\}", "x", pattern)  # a value for each placeholder
            for route in resource:
                response = await rig.client.request(
                    route.method, path, headers={"Origin": rig.origin}
                )
                assert response.status == 401, f"{route.method} {pattern}"
                if route.method != "HEAD":
                    body = await response.json()
                    assert body["error"]["code"] == "unauthenticated"
                checked.append((route.method, pattern))
        assert ("POST", "/api/v1/commands") in checked
        assert ("GET", "/api/v1/ws") in checked
        assert len(checked) >= 12


async def test_public_status_opens_reading_only(tmp_path: Path) -> None:
    """With web.public_status the state and the feed are readable without login (no log
    lines), but commands and events still need a session."""
    async with web_rig(tmp_path, public_status=True) as rig:
        assert (await rig.client.get("/api/v1/state")).status == 200
        async with rig.client.ws_connect("/api/v1/ws", headers={"Origin": rig.origin}) as ws:
            hello = await asyncio.wait_for(ws.receive_json(), 10)
            assert hello["kind"] == "hello"
        denied = await rig.post("/api/v1/commands", {"type": "system.ping", "args": {}})
        assert denied.status == 401
        assert (await rig.client.get("/api/v1/events")).status == 401
        assert rig.records == []


async def test_first_run_needs_the_setup_code_from_the_log(tmp_path: Path) -> None:
    """No password yet: login is refused, a wrong code is 403, the logged code sets the
    password once, and a second setup is 409. Nobody claims the device by being first."""
    with capture_logs() as logs:
        async with web_rig(tmp_path, password=None) as rig:
            session = await (await rig.client.get("/api/v1/session")).json()
            assert session["setup_required"] is True
            assert (await rig.login()).status == 409
            assert (await rig.post("/api/v1/commands", {"type": "system.ping"})).status == 401
            wrong = await rig.setup("AAAA-BBBB-CCCC")
            assert wrong.status == 403
            assert (await wrong.json())["error"]["code"] == "forbidden"
            codes = [e for e in logs if e["event"] == "web.setup_code"]
            assert len(codes) == 1
            assert codes[0]["log_level"] == "warning"
            code = codes[0]["code"]
            short = await rig.setup(code, "ngắn")
            assert short.status == 400
            ok = await rig.setup(code.lower().replace("-", " "))
            assert ok.status == 200
            reply = await rig.command({"type": "system.ping", "args": {}})
            assert reply["status"] == "done"
            again = await rig.setup(code, "another long password")
            assert again.status == 409
            assert PasswordFile(tmp_path).read() is not None


async def test_setup_code_never_reaches_a_page(tmp_path: Path) -> None:
    """The live log feed carries the lines around a new setup code, never the code."""
    configure_logging(level="INFO", fmt="json", sinks=[LOG_TAP])
    async with web_rig(tmp_path, public_status=True) as rig:
        token, _ = await _login_token(rig)
        async with rig.client.ws_connect("/api/v1/ws", headers=_as(token, origin=rig.origin)) as ws:
            assert (await asyncio.wait_for(ws.receive_json(), 10))["kind"] == "hello"
            PasswordFile(tmp_path).path.unlink()  # someone wipes the password
            await rig.client.get("/api/v1/session")  # the next request notices
            seen: list[dict[str, Any]] = []
            async with asyncio.timeout(10):
                while not any(
                    m.get("record", {}).get("event") == "web.password_file_changed" for m in seen
                ):
                    message = await ws.receive()
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break  # the session ended: the page is hung up on
                    seen.append(message.json())
        assert all(m.get("record", {}).get("event") != "web.setup_code" for m in seen)
        assert rig.server.access.setup_required


async def test_state_changes_need_the_pages_own_origin(tmp_path: Path) -> None:
    """With a valid session and CSRF token, another site's Origin (or none) is 403."""
    async with web_rig(tmp_path) as rig:
        token, csrf = await _login_token(rig)
        body = {"type": "system.ping", "args": {}}
        for origin in ("http://evil.example", "null", f"{rig.origin}.evil.example", None):
            response = await rig.client.post(
                "/api/v1/commands", json=body, headers=_as(token, csrf, origin)
            )
            assert response.status == 403, origin
            assert (await response.json())["error"]["code"] == "forbidden"
        cross_login = await rig.post(
            "/api/v1/login", {"password": PASSWORD}, origin="http://evil.example"
        )
        assert cross_login.status == 403
        assert rig.records == []  # nothing ran
        ok = await rig.client.post(
            "/api/v1/commands", json=body, headers=_as(token, csrf, rig.origin)
        )
        assert (await ok.json())["status"] == "done"


async def test_trusted_origin_of_a_reverse_proxy_is_accepted(tmp_path: Path) -> None:
    """web.trusted_origins names the proxy's public origin; others stay refused."""
    proxy = "https://nhavanhoa.example.vn"
    async with web_rig(tmp_path, trusted_origins=[proxy]) as rig:
        assert (await rig.post("/api/v1/login", {"password": PASSWORD}, origin=proxy)).status == 200
        other = await rig.post("/api/v1/login", {"password": PASSWORD}, origin="https://x.example")
        assert other.status == 403


async def test_only_the_pis_addresses_and_names_are_served(tmp_path: Path) -> None:
    """DNS rebinding: a hostile name pointed at the Pi is refused (421) before login is
    even tried; an address, localhost, the Pi's own name and web.hostnames are served.
    /healthz and /metrics obey the same check: a rebinding page must not read relay state,
    what the PA plays or login counters from them either."""
    own = socket.gethostname()
    async with web_rig(tmp_path, hostnames=["nhavanhoa.lan"]) as rig:
        for host in ("rebind.evil.example", "evil.example:8080", "nhavanhoa.lan.evil.example"):
            refused = await rig.client.post(
                "/api/v1/login",
                json={"password": PASSWORD},
                headers={"Host": host, "Origin": f"http://{host}"},
            )
            assert refused.status == 421, host
            assert (await refused.json())["error"]["code"] == "unknown_host"
            page = await rig.client.get("/", headers={"Host": host})
            assert page.status == 421
            for probe in ("/healthz", "/metrics"):
                assert (await rig.client.get(probe, headers={"Host": host})).status == 421
        for host in (
            "127.0.0.1:8080",
            "[::1]:8080",
            "localhost",
            "nhavanhoa.lan",
            own,
            f"{own}.local",
        ):
            for path in ("/api/v1/session", "/healthz", "/metrics"):
                answer = await rig.client.get(path, headers={"Host": host})
                assert answer.status == 200, (host, path)


async def test_cross_site_websocket_is_refused(tmp_path: Path) -> None:
    """A page on another site cannot open the feed with the operator's cookie."""
    async with web_rig(tmp_path, public_status=True) as rig:
        token, _ = await _login_token(rig)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await rig.client.ws_connect(
                "/api/v1/ws", headers=_as(token, origin="http://evil.example")
            )
        assert refused.value.status == 403


async def test_state_changes_need_the_sessions_csrf_token(tmp_path: Path) -> None:
    """Missing, wrong, or another session's token: 403, and nothing runs. GET never acts."""
    async with web_rig(tmp_path) as rig:
        token_a, _ = await _login_token(rig)
        token_b, csrf_b = await _login_token(rig)
        body = {"type": "system.ping", "args": {}}
        for csrf in (None, "", "x" * 43, csrf_b):
            response = await rig.client.post(
                "/api/v1/commands", json=body, headers=_as(token_a, csrf, rig.origin)
            )
            assert response.status == 403, csrf
        logout = await rig.client.post("/api/v1/logout", headers=_as(token_a, None, rig.origin))
        assert logout.status == 403
        img = await rig.client.get(
            "/api/v1/commands?type=system.ping", headers=_as(token_a, origin=rig.origin)
        )
        assert img.status == 405
        assert rig.records == []
        ok = await rig.client.post(
            "/api/v1/commands", json=body, headers=_as(token_b, csrf_b, rig.origin)
        )
        assert (await ok.json())["status"] == "done"


async def test_twenty_wrong_passwords_lock_out_with_a_growing_wait(tmp_path: Path) -> None:
    """5 wrong tries lock the address for 30 s; during the lockout even the right password
    is refused; the next wrong try after it locks for 60 s; then the right one works."""
    async with web_rig(tmp_path, login_max_attempts=5, login_lockout_s=30) as rig:
        answers = [await rig.login(f"đoán sai số {i}") for i in range(20)]
        statuses = [r.status for r in answers]
        assert statuses == [401] * 4 + [429] * 16
        assert answers[4].headers["Retry-After"] == "30"
        assert all(0 < int(r.headers["Retry-After"]) <= 30 for r in answers[4:])
        assert (await rig.login()).status == 429  # right password, still locked
        rig.clock.advance(31)
        again = await rig.login("vẫn sai")
        assert again.status == 429
        assert again.headers["Retry-After"] == "60"
        rig.clock.advance(61)
        assert (await rig.login()).status == 200


async def test_sessions_expire_when_idle_and_at_their_lifetime(tmp_path: Path) -> None:
    """An idle session ends after session_idle_s; a busy one still ends at session_ttl_s."""
    async with web_rig(tmp_path, session_idle_s=600, session_ttl_s=3600) as rig:
        token, _ = await _login_token(rig)
        rig.clock.advance(601)
        assert (await rig.client.get("/api/v1/state", headers=_as(token))).status == 401
        token, _ = await _login_token(rig)
        for _ in range(7):
            rig.clock.advance(500)
            assert (await rig.client.get("/api/v1/state", headers=_as(token))).status == 200
        rig.clock.advance(200)
        assert (await rig.client.get("/api/v1/state", headers=_as(token))).status == 401


async def test_password_change_ends_every_other_session_and_its_feed(tmp_path: Path) -> None:
    """Changing the password logs out the other phone (HTTP and its open WebSocket); the
    changer gets a fresh cookie; the old password stops working."""
    async with web_rig(tmp_path) as rig:
        token_a, csrf_a = await _login_token(rig)
        token_b, _ = await _login_token(rig)
        async with rig.client.ws_connect(
            "/api/v1/ws", headers=_as(token_b, origin=rig.origin)
        ) as ws:
            assert (await asyncio.wait_for(ws.receive_json(), 10))["kind"] == "hello"
            change = await rig.client.post(
                "/api/v1/password",
                json={"current": PASSWORD, "new": "mật khẩu mới hơn"},
                headers=_as(token_a, csrf_a, rig.origin),
            )
            assert change.status == 200
            new_token = change.cookies["vg_session"].value
            closed = await asyncio.wait_for(ws.receive(), 10)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        rig.client.session.cookie_jar.clear()
        assert (await rig.client.get("/api/v1/state", headers=_as(token_b))).status == 401
        assert (await rig.client.get("/api/v1/state", headers=_as(token_a))).status == 401
        assert (await rig.client.get("/api/v1/state", headers=_as(new_token))).status == 200
        assert (await rig.login()).status == 401
        assert (await rig.login("mật khẩu mới hơn")).status == 200


async def test_set_password_on_the_command_line_logs_everyone_out(tmp_path: Path) -> None:
    """`village-gateway set-password` while the daemon runs: its sessions end on the next
    request, and only the new password logs in."""
    state_dir = tmp_path / "state"
    config = tmp_path / "config.toml"
    config.write_text(f'[gateway]\nid = "test.gw1"\nstate_dir = "{state_dir}"\n')
    async with web_rig(state_dir) as rig:
        token, _ = await _login_token(rig)
        result = await asyncio.to_thread(set_password, config, "mật khẩu từ dòng lệnh\n")
        assert result.returncode == 0, result.stderr
        assert (await rig.client.get("/api/v1/state", headers=_as(token))).status == 401
        assert (await rig.login()).status == 401
        assert (await rig.login("mật khẩu từ dòng lệnh")).status == 200


class _SizeProbe:
    """Stands where the clip store goes, to show a refused upload never reaches it."""

    def __init__(self) -> None:
        self.added = 0

    def list(self) -> list[Any]:
        return []

    async def add(self, name: str, data: bytes) -> Any:
        self.added += 1
        raise AssertionError("an oversized upload reached the clip store")


async def test_a_100_mb_upload_is_refused_while_it_streams(tmp_path: Path) -> None:
    """A 100 MB clip (chunked, no length announced) is answered 413 once it passes the
    cap, before the client has sent it all; a declared oversize is refused unread."""
    probe = _SizeProbe()
    async with web_rig(tmp_path, clips=probe, max_upload_mb=50) as rig:
        await rig.login()
        sent = 0

        async def hundred_megabytes() -> Any:
            nonlocal sent
            chunk = b"\0" * 65_536
            for _ in range(100_000_000 // len(chunk)):
                sent += len(chunk)
                yield chunk

        form = aiohttp.FormData()
        form.add_field("name", "to")
        form.add_field("file", hundred_megabytes(), filename="to.wav", content_type="audio/wav")
        response = await rig.post("/api/v1/clips", data=form)
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "too_large"
        assert sent < 90_000_000
        declared = await rig.post(
            "/api/v1/clips",
            data=b"x" * 1000,
            headers={
                "Content-Type": "multipart/form-data; boundary=x",
                "Content-Length": "100000000",
            },
        )
        assert declared.status == 413
        assert probe.added == 0


@pytest.fixture
def clip_store(tmp_path: Path) -> Any:
    """The real clip store (gateway.pa.clips), once it exists."""
    clips = pytest.importorskip("gateway.pa.clips")
    return clips.ClipStore(tmp_path / "clips")


async def test_upload_names_cannot_leave_the_clip_folder(tmp_path: Path, clip_store: Any) -> None:
    """A name like ../../etc/passwd is refused (or normalised) and nothing lands outside."""
    soundfile = pytest.importorskip("soundfile")
    np = pytest.importorskip("numpy")

    wav = tmp_path / "tone.wav"
    soundfile.write(wav, np.zeros(4800, dtype="int16"), 48_000)
    async with web_rig(tmp_path / "state", clips=clip_store) as rig:
        await rig.login()
        before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
        form = aiohttp.FormData()
        form.add_field("name", "../../etc/passwd")
        form.add_field("file", wav.read_bytes(), filename="../../passwd.wav")
        response = await rig.post("/api/v1/clips", data=form)
        body = await response.json()
        if response.status == 200:
            assert "/" not in body["clip"]["name"]
            assert ".." not in body["clip"]["name"]
        else:
            assert (response.status, body["error"]["code"]) == (400, "bad_args")
        after = sorted(p for p in tmp_path.rglob("*") if p.is_file())
        new = [p for p in after if p not in before]
        assert all((tmp_path / "clips") in p.parents for p in new)


async def test_a_text_file_named_mp3_is_refused_by_decoding(
    tmp_path: Path, clip_store: Any
) -> None:
    """The content decides, not the extension: text called .mp3 is bad_audio, not stored."""
    async with web_rig(tmp_path / "state", clips=clip_store) as rig:
        await rig.login()
        form = aiohttp.FormData()
        form.add_field("name", "thong-bao")
        form.add_field("file", b"this is not audio\n" * 100, filename="thong-bao.mp3")
        response = await rig.post("/api/v1/clips", data=form)
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "bad_audio"
        listing = await (await rig.client.get("/api/v1/clips")).json()
        assert "thong-bao" not in [c["name"] for c in listing["clips"]]


async def test_markup_in_labels_comes_back_as_json_data(tmp_path: Path) -> None:
    """A relay label with an <img onerror> is returned verbatim inside JSON, typed JSON and
    nosniff, so no browser treats it as HTML (the page sets it as text)."""
    label = "<img src=x onerror=alert(1)>"
    async with web_rig(tmp_path) as rig:
        await rig.login()
        await rig.state.set("relays", {"relays": {"yard": {"on": False, "label": label}}})
        response = await rig.client.get("/api/v1/state")
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert (await response.json())["relays"]["relays"]["yard"]["label"] == label


async def test_every_answer_carries_the_strict_headers(tmp_path: Path) -> None:
    """CSP, nosniff, no referrer, no framing on pages, API answers, errors and assets."""
    async with web_rig(tmp_path) as rig:
        for path in ("/", "/api/v1/state", "/api/v1/session", "/static/missing.js", "/healthz"):
            response = await rig.client.get(path)
            assert response.headers["Content-Security-Policy"] == CSP, path
            assert response.headers["X-Content-Type-Options"] == "nosniff", path
            assert response.headers["Referrer-Policy"] == "no-referrer", path
            assert response.headers["X-Frame-Options"] == "DENY", path
        assert "'unsafe-inline'" not in CSP
        assert "'unsafe-eval'" not in CSP


async def test_static_files_cannot_be_escaped(tmp_path: Path) -> None:
    """Dot segments (encoded or not), hidden files and unknown types are 404."""
    async with web_rig(tmp_path) as rig:
        for raw in (
            "/static/%2e%2e/auth.py",
            "/static/%2E%2E/%2E%2E/config.py",
            "/static/js/%2e%2e/%2e%2e/server.py",
            "/static/..%2fserver.py",
            "/static/.hidden",
            "/static/index.html%00.js",
        ):
            response = await rig.client.get(URL(raw, encoded=True))
            assert response.status == 404, raw


def test_no_web_input_can_reach_a_shell_or_eval() -> None:
    """The web package imports no process runner and calls no eval/exec."""
    forbidden = re.compile(r"\b(subprocess|os\.system|os\.popen|eval\(|exec\(|pickle)\b")
    for source in Path("gateway/web").glob("*.py"):
        assert not forbidden.search(source.read_text(encoding="utf-8")), source
