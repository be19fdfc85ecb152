"""The web API, endpoint by endpoint, against a real server on 127.0.0.1.

Each test does what the page does (log in, read the state, send a command, follow the
live feed) and checks what the page would show.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import load_settings
from gateway.daemon.app import App
from gateway.log import configure_logging, get_logger
from gateway.web.auth import PasswordFile
from gateway.web.live import LOG_TAP
from gateway.web.server import CSP
from tests.conftest import ConfigFile
from tests.test_app import running, wait_for
from tests.webrig import PASSWORD, set_password, web_rig


async def _ws_messages(ws: aiohttp.ClientWebSocketResponse, kind: str, count: int = 1) -> list[Any]:
    """The next ``count`` messages of ``kind`` (others skipped), with a generous timeout."""
    found: list[Any] = []
    async with asyncio.timeout(10):
        while len(found) < count:
            message = await ws.receive_json()
            if message["kind"] == kind:
                found.append(message)
    return found


async def _ws_until_schedules(ws: aiohttp.ClientWebSocketResponse) -> list[Any]:
    """Skip other components' state messages until the schedules arrive."""
    while True:
        (message,) = await _ws_messages(ws, "state")
        if message["component"] == "schedules":
            return [message]


async def test_session_tells_the_page_what_to_draw(tmp_path: Path) -> None:
    """Before login: not authenticated, no CSRF token, the gateway's id and name."""
    async with web_rig(tmp_path) as rig:
        response = await rig.client.get("/api/v1/session")
        assert response.status == 200
        assert await response.json() == {
            "authenticated": False,
            "ended": None,
            "csrf": None,
            "setup_required": False,
            "public_status": False,
            "gateway": {"id": "test.gw1", "name": "Nhà văn hóa <b>thử</b>"},
        }


async def test_login_sets_a_strict_cookie_and_gives_a_csrf_token(tmp_path: Path) -> None:
    """The cookie is HttpOnly, SameSite=Strict, Path=/, not Secure over plain HTTP."""
    async with web_rig(tmp_path) as rig:
        response = await rig.login()
        assert response.status == 200
        cookie = response.headers["Set-Cookie"]
        assert cookie.startswith("vg_session=")
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Path=/" in cookie
        assert "Secure" not in cookie
        session = await (await rig.client.get("/api/v1/session")).json()
        assert session["authenticated"] is True
        assert session["csrf"] == rig.csrf


async def test_wrong_password_is_401(tmp_path: Path) -> None:
    """A wrong password answers 401 with the unauthenticated code, and no cookie."""
    async with web_rig(tmp_path) as rig:
        response = await rig.login("sai mật khẩu rồi")
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthenticated"
        assert "Set-Cookie" not in response.headers


async def test_logout_ends_the_session(tmp_path: Path) -> None:
    """After logout the same cookie no longer reads the state."""
    async with web_rig(tmp_path) as rig:
        await rig.login()
        assert (await rig.client.get("/api/v1/state")).status == 200
        cookie = rig.client.session.cookie_jar.filter_cookies(rig.client.make_url("/"))
        response = await rig.post("/api/v1/logout")
        assert response.status == 204
        again = await rig.client.get(
            "/api/v1/state", headers={"Cookie": f"vg_session={cookie['vg_session'].value}"}
        )
        assert again.status == 401


async def test_state_has_identity_link_health_and_each_snapshot(tmp_path: Path) -> None:
    """GET /api/v1/state: gateway, link, health, and exactly what components published."""
    async with web_rig(tmp_path) as rig:
        await rig.login()
        await rig.state.set("relays", {"relays": {"yard": {"on": True, "label": "Đèn sân"}}})
        body = await (await rig.client.get("/api/v1/state")).json()
        assert body["gateway"] == {
            "id": "test.gw1",
            "name": "Nhà văn hóa <b>thử</b>",
            "version": "test",
        }
        assert body["link"] == {"online": False}
        assert body["health"] == {}
        assert body["relays"]["relays"]["yard"] == {"on": True, "label": "Đèn sân"}
        assert "ts" in body["relays"]
        assert "pa" not in body  # no snapshot yet: absent


async def test_command_without_id_runs_through_the_dispatcher(tmp_path: Path) -> None:
    """The id is filled in; the reply is the Dispatcher's; the event says source web."""
    async with web_rig(tmp_path) as rig:
        await rig.login()
        reply = await rig.command({"type": "system.ping", "args": {}})
        assert reply["status"] == "done"
        assert reply["id"].startswith("web-")
        assert reply["result"] == {"pong": True, "source": "web"}
        events = [r for s, r in rig.records if s == "events"]
        assert events[-1]["id"] == reply["id"]
        assert events[-1]["source"] == "web"
        assert not [r for s, r in rig.records if s == "replies"]  # replies go to MQTT only


async def test_rejected_commands_still_answer_200_with_the_reply(tmp_path: Path) -> None:
    """Bad JSON, unknown type, bad args and a reused id: the page reads ``status``."""
    async with web_rig(tmp_path) as rig:
        await rig.login()
        raw = await rig.post("/api/v1/commands", data=b"{not json")
        assert raw.status == 200
        assert (await raw.json())["error"]["code"] == "bad_json"
        unknown = await rig.command({"type": "lights.dance", "args": {}})
        assert (unknown["status"], unknown["error"]["code"]) == ("rejected", "unknown_type")
        bad = await rig.command({"type": "log.level", "args": {"level": "LOUD"}})
        assert bad["error"]["code"] == "bad_args"
        first = await rig.command({"id": "web-twice", "type": "system.ping", "args": {}})
        second = await rig.command({"id": "web-twice", "type": "system.ping", "args": {}})
        assert (first["status"], second["status"]) == ("done", "duplicate")


async def test_events_after_seq_with_limit(tmp_path: Path) -> None:
    """Events come with a growing seq, newest last; ``after`` and ``limit`` page them."""
    async with web_rig(tmp_path) as rig:
        await rig.login()
        for _ in range(5):
            await rig.command({"type": "system.ping", "args": {}})
        body = await (await rig.client.get("/api/v1/events")).json()
        seqs = [e["seq"] for e in body["events"]]
        assert seqs == sorted(seqs)
        assert len(seqs) == 5
        assert body["last_seq"] == seqs[-1]
        assert all(e["type"] == "command" and e["ts"] for e in body["events"])
        page = await (await rig.client.get(f"/api/v1/events?after={seqs[1]}&limit=2")).json()
        assert [e["seq"] for e in page["events"]] == seqs[3:]
        for query in ("after=x", "limit=0", "limit=5000", "after=-1"):
            response = await rig.client.get(f"/api/v1/events?{query}")
            assert response.status == 400, query
            assert (await response.json())["error"]["code"] == "bad_args"


async def test_websocket_sends_hello_then_state_events_and_logs(tmp_path: Path) -> None:
    """The live feed: hello with the state, a snapshot change, a command event, a log line."""
    configure_logging(level="INFO", fmt="json", sinks=[LOG_TAP])
    async with web_rig(tmp_path) as rig:
        await rig.login()
        await rig.state.set("relays", {"relays": {"yard": {"on": False}}})
        async with rig.client.ws_connect("/api/v1/ws", headers={"Origin": rig.origin}) as ws:
            (hello,) = await _ws_messages(ws, "hello")
            assert hello["state"]["relays"]["relays"]["yard"]["on"] is False
            assert hello["last_seq"] == 0
            await rig.state.set("relays", {"relays": {"yard": {"on": True}}})
            (change,) = await _ws_messages(ws, "state")
            assert change["component"] == "relays"
            assert change["snapshot"]["relays"]["yard"]["on"] is True
            reply = await rig.command({"type": "system.ping", "args": {}})
            (event,) = await _ws_messages(ws, "event")
            assert event["event"]["id"] == reply["id"]
            assert event["event"]["seq"] >= 1
            get_logger("test").info("test.hello_operator", words="xin chào")
            logs = await _ws_messages(ws, "log", 1)
            while logs[-1]["record"]["event"] != "test.hello_operator":
                logs += await _ws_messages(ws, "log", 1)
            assert logs[-1]["record"]["words"] == "xin chào"
            assert logs[-1]["record"]["level"] == "info"


async def test_metrics_parse_and_count_web_figures(tmp_path: Path) -> None:
    """/metrics is Prometheus text that prometheus-client's own parser accepts."""
    async with web_rig(tmp_path) as rig:
        await rig.login()
        await rig.login("wrong password here")
        text = await (await rig.client.get("/metrics")).text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["vg_web_sessions"].samples[0].value == 1
        logins = {s.labels["result"]: s.value for s in families["vg_web_logins"].samples}
        assert logins["ok"] == 1
        assert logins["wrong"] == 1
        assert "vg_web_requests" in families


async def test_index_static_and_healthz_need_no_login(tmp_path: Path) -> None:
    """The page and its assets load without a session (the page shows the login)."""
    async with web_rig(tmp_path) as rig:
        index = await rig.client.get("/")
        assert index.status == 200
        assert index.headers["Content-Type"].startswith("text/html")
        assert index.headers["Content-Security-Policy"] == CSP
        scripts = [p for p in (Path("gateway/web/static")).rglob("*.js")]
        if scripts:
            relative = scripts[0].relative_to("gateway/web/static").as_posix()
            asset = await rig.client.get(f"/static/{relative}")
            assert asset.status == 200
            assert asset.headers["Content-Type"].startswith("text/javascript")
        assert (await rig.client.get("/static/nope.js")).status == 404
        assert (await rig.client.get("/healthz")).status == 200


async def test_clip_endpoints_answer_not_available_without_a_clip_store(tmp_path: Path) -> None:
    """Before the loudspeakers exist, clips answer 503 not_available, not a crash."""
    async with web_rig(tmp_path) as rig:
        rig.server.api.clips = None
        await rig.login()
        listing = await rig.client.get("/api/v1/clips")
        assert listing.status == 503
        assert (await listing.json())["error"]["code"] == "not_available"
        form = aiohttp.FormData()
        form.add_field("name", "loa")
        form.add_field("file", b"RIFF", filename="loa.wav")
        upload = await rig.post("/api/v1/clips", data=form)
        assert upload.status == 503


def test_set_password_from_a_pipe_writes_a_private_hash(config_file: ConfigFile) -> None:
    """``village-gateway set-password`` reads stdin, stores an scrypt hash with mode 0600."""
    config_file.state_dir.mkdir()
    result = set_password(config_file.path, "mật khẩu mới 2024\n")
    assert result.returncode == 0, result.stderr
    stored = PasswordFile(config_file.state_dir)
    assert stat.S_IMODE(os.stat(stored.path).st_mode) == 0o600
    encoded = stored.read()
    assert encoded is not None
    assert encoded.startswith("scrypt$")
    assert "mật khẩu" not in encoded
    short = set_password(config_file.path, "ngắn\n")
    assert short.returncode == 4  # refused, as send's "not done"; 1 is a crash
    assert "at least 8 characters" in short.stderr
    assert stored.read() == encoded  # nothing changed


async def test_ui_works_with_the_broker_down(config_file: ConfigFile) -> None:
    """No broker at all: a light switched from the web is done, the pin follows, and the
    events wait in the outbox for the uplink."""
    config_file.state_dir.mkdir()
    PasswordFile(config_file.state_dir).write(PASSWORD)
    app = App(load_settings(config_file.path))
    async with running(app):
        base = f"http://127.0.0.1:{config_file.web_port}"
        origin = {"Origin": base}
        # unsafe=True: aiohttp's jar otherwise ignores cookies from an IP address.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            login = await http.post(
                f"{base}/api/v1/login", json={"password": PASSWORD}, headers=origin
            )
            assert login.status == 200
            csrf = (await login.json())["csrf"]
            response = await http.post(
                f"{base}/api/v1/commands",
                json={"type": "relay.set", "args": {"relay": "yard", "on": True}},
                headers={**origin, "X-CSRF-Token": csrf},
            )
            reply = await response.json()
            assert reply["status"] == "done", reply
            state = await (await http.get(f"{base}/api/v1/state")).json()
            assert state["link"]["online"] is False
            await wait_for(lambda: app.state.snapshot("relays") is not None)
            yard = app.state.snapshot("relays")
            assert yard is not None
            assert yard["relays"]["yard"]["on"] is True
            events = (await (await http.get(f"{base}/api/v1/events")).json())["events"]
            types = [e["type"] for e in events]
            assert "relay.switched" in types
            assert "command" in types
            command = next(e for e in events if e["type"] == "command")
            assert (command["source"], command["status"]) == ("web", "done")
            assert state["schedules"]["schedules"] == []
            wanted = {"relay": "yard", "on": "sunset+10m", "off": "22:30"}
            async with http.ws_connect(f"{base}/api/v1/ws", headers=origin) as ws:
                assert (await ws.receive_json())["kind"] == "hello"
                saved = await http.post(
                    f"{base}/api/v1/commands",
                    json={"type": "schedule.set", "args": {"schedules": [wanted]}},
                    headers={**origin, "X-CSRF-Token": csrf},
                )
                assert (await saved.json())["status"] == "done"
                (pushed,) = await _ws_until_schedules(ws)
                assert pushed["snapshot"]["schedules"][0]["on"] == "sunset+10m"
            await asyncio.sleep(0.6)  # the state body is reused for at most 0.5 s
            state = await (await http.get(f"{base}/api/v1/state")).json()
            assert state["schedules"]["schedules"][0]["off"] == "22:30"
        assert app.outbox is not None
        await wait_for(lambda: app.outbox is not None and app.outbox.stats().depth["events"] >= 2)
