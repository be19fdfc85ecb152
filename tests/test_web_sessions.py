"""Logins that survive a daemon restart and a power cut, and say why they ended.

Each "restart" serves a new WebServer over the same state folder (what a restarted daemon
does); the phone keeps its cookie, as a browser would.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from gateway.web.sessions import REMEMBER_S, SESSIONS_FILE
from tests.webrig import PASSWORD, Rig, web_rig


def _cookie(rig: Rig) -> str:
    """The session cookie the phone holds."""
    for morsel in rig.client.session.cookie_jar:
        if morsel.key == "vg_session":
            return morsel.value
    raise AssertionError("no session cookie")


async def _as_phone(rig: Rig, cookie: str, path: str = "/api/v1/session") -> Any:
    """GET ``path`` with ``cookie``, as the phone would after the restart."""
    response = await rig.client.get(path, headers={"Cookie": f"vg_session={cookie}"})
    return response.status, await response.json()


async def test_a_login_survives_a_restart_and_only_a_hash_is_stored(tmp_path: Path) -> None:
    """Logged in before a restart, the phone's cookie and CSRF token still work after it;
    the sessions file holds no cookie value, only its hash, with mode 0600."""
    async with web_rig(tmp_path) as first:
        assert (await first.login()).status == 200
        cookie, csrf = _cookie(first), first.csrf
    stored = tmp_path / SESSIONS_FILE
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert cookie not in stored.read_text("utf-8")
    async with web_rig(tmp_path, password=None) as second:
        status, body = await _as_phone(second, cookie)
        assert status == 200
        assert body["authenticated"] is True
        assert body["csrf"] == csrf
        response = await second.post(
            "/api/v1/commands",
            {"type": "system.ping", "args": {}},
            csrf=csrf,
            headers={"Cookie": f"vg_session={cookie}"},
        )
        assert response.status == 200
        assert (await response.json())["status"] == "done"


async def test_remember_this_phone_keeps_the_login_for_30_days(tmp_path: Path) -> None:
    """Without "remember" the idle limit (2 h) ends the login and the page is told why;
    with it the login lasts 30 days, and its cookie says so."""
    async with web_rig(tmp_path) as rig:
        response = await rig.post("/api/v1/login", {"password": PASSWORD, "remember": True})
        assert response.status == 200
        assert f"Max-Age={int(REMEMBER_S)}" in response.headers["Set-Cookie"]
        remembered = _cookie(rig)
        rig.client.session.cookie_jar.clear()
        assert (await rig.login()).status == 200
        plain = _cookie(rig)
        rig.client.session.cookie_jar.clear()

        rig.clock.advance(3 * 3600)
        status, body = await _as_phone(rig, plain)
        assert (status, body["authenticated"], body["ended"]) == (200, False, "idle")
        status, body = await _as_phone(rig, remembered)
        assert body["authenticated"] is True

        rig.clock.advance(REMEMBER_S)
        status, body = await _as_phone(rig, remembered)
        assert (body["authenticated"], body["ended"]) == (False, "expired")


async def test_a_forced_logout_says_why(tmp_path: Path) -> None:
    """A password change ends the other phones' logins; they are told it was that, and a
    logout says "logged out" (both remembered across a restart)."""
    async with web_rig(tmp_path) as rig:
        assert (await rig.login()).status == 200
        other = _cookie(rig)
        rig.client.session.cookie_jar.clear()
        assert (await rig.login()).status == 200
        new = "một mật khẩu mới dài"
        response = await rig.post("/api/v1/password", {"current": PASSWORD, "new": new})
        assert response.status == 200
        rig.csrf = (await response.json())["csrf"]
        mine = _cookie(rig)
        assert (await rig.post("/api/v1/logout")).status == 204
    async with web_rig(tmp_path, password=None) as after:
        _status, body = await _as_phone(after, other)
        assert (body["authenticated"], body["ended"]) == (False, "password_changed")
        _status, body = await _as_phone(after, mine)
        assert (body["authenticated"], body["ended"]) == (False, "logged_out")
        _status, body = await _as_phone(after, "never-issued")
        assert (body["authenticated"], body["ended"]) == (False, None)


async def test_a_garbage_sessions_file_is_set_aside_with_a_clear_line(tmp_path: Path) -> None:
    """A sessions file that is not ours (a torn write, a hand edit) is moved aside with an
    error line naming it; the daemon serves, the password is untouched, a login works."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / SESSIONS_FILE).write_text("{ this is not json", "utf-8")
    with capture_logs() as logs:
        async with web_rig(tmp_path) as rig:
            assert (await rig.login()).status == 200
            _status, body = await _as_phone(rig, _cookie(rig))
            assert body["authenticated"] is True
    unreadable = [line for line in logs if line["event"] == "web.sessions_file_unreadable"]
    assert len(unreadable) == 1
    assert unreadable[0]["path"] == str(tmp_path / SESSIONS_FILE)
    assert (tmp_path / f"{SESSIONS_FILE}.bad").read_text("utf-8") == "{ this is not json"


async def test_a_tampered_session_entry_is_refused_whole(tmp_path: Path) -> None:
    """An entry whose key is not a hash (someone wrote a cookie value in) makes the file
    untrusted: set aside, logged, nobody logged in by it; the password still works."""
    async with web_rig(tmp_path) as rig:
        assert (await rig.login()).status == 200
        cookie = _cookie(rig)
    path = tmp_path / SESSIONS_FILE
    document = json.loads(path.read_text("utf-8"))
    document["sessions"][0]["key"] = cookie
    path.write_text(json.dumps(document), "utf-8")
    with capture_logs() as logs:
        async with web_rig(tmp_path, password=None) as after:
            _status, body = await _as_phone(after, cookie)
            assert body["authenticated"] is False
            assert (await after.login()).status == 200
    assert any(line["event"] == "web.sessions_file_unreadable" for line in logs)
