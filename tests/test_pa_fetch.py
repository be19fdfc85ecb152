"""pa.clip.fetch's download: every way a server can misbehave, against aiohttp on 127.0.0.1.

After every failure the store must look exactly as before: the old clip of that name
intact and no temporary file left in the clips folder. The command is a long job: what
can be judged at once is refused at once, and while a download hangs every other PA
command (an emergency first of all) and other downloads go on.

The address guard (server-side request forgery): loopback is refused unless
``pa.fetch_allow`` opens it, so the stores here allow 127.0.0.1; a redirect from there
to another loopback, link-local or private address, or to a name resolving to one, is
refused before any connection is made. Only 127.0.0.1 is ever connected to: every test
that redirects elsewhere watches the loop's connects to prove it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import soundfile as sf
from aiohttp import web

from gateway.commands import (
    CommandError,
    LongJob,
    PaClipFetchArgs,
    PaPlayArgs,
    PaStopArgs,
    PaVolumeArgs,
)
from gateway.config import load_settings
from gateway.pa import PublicAddress
from gateway.pa.clips import MAX_FETCHES, ClipError, ClipStore
from gateway.pa.decode import AudioFormat, open_clip
from gateway.pa.fetch import AddressGuard, classify
from gateway.state import StateStore
from tests.conftest import ConfigFile

CAP = 300_000
LOOPBACK = AddressGuard(["127.0.0.1"])
"""The tests' own server may be reached: pa.fetch_allow = ["127.0.0.1"]."""


def tone_mp3(tmp_path: Path, seconds: float = 3.0) -> bytes:
    path = tmp_path / "tone.mp3"
    t = np.arange(int(44_100 * seconds)) / 44_100
    sf.write(str(path), 0.5 * np.sin(2 * np.pi * 440 * t), 44_100, format="MP3")
    return path.read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ClipServer:
    """Serves a clip at /clip and every kind of misbehaviour at its own path."""

    clip: bytes
    base: str = ""
    release: asyncio.Event = field(default_factory=asyncio.Event)
    sent: dict[str, int] = field(default_factory=dict)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    """Opens /slow."""
    files: dict[str, bytes] = field(default_factory=dict)
    """Served at /file/NAME."""
    requests: list[str] = field(default_factory=list)
    """Every path asked for, in order."""

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.count])
        app.router.add_get("/clip", self.good)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_get("/hop/{n}", self.hop)
        app.router.add_get("/loop", self.loop)
        app.router.add_get("/hang", self.hang)
        app.router.add_get("/huge-announced", self.huge_announced)
        app.router.add_get("/endless", self.endless)
        app.router.add_get("/more-than-announced", self.more_than_announced)
        app.router.add_get("/text", self.text)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/file/{name}", self.file)
        return app

    @web.middleware
    async def count(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        self.requests.append(request.path)
        response: web.StreamResponse = await handler(request)
        return response

    async def redirect(self, request: web.Request) -> web.Response:
        """Redirects to ``?to=``."""
        raise web.HTTPFound(request.query["to"])

    async def slow(self, request: web.Request) -> web.Response:
        """The clip, once the test opens the gate."""
        await self.gate.wait()
        return web.Response(body=self.clip, content_type="audio/mpeg")

    async def file(self, request: web.Request) -> web.Response:
        return web.Response(body=self.files[request.match_info["name"]])

    async def good(self, request: web.Request) -> web.Response:
        return web.Response(body=self.clip, content_type="audio/mpeg")

    async def hop(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        raise web.HTTPFound("/clip" if n == 0 else f"/hop/{n - 1}")

    async def loop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def hang(self, request: web.Request) -> web.Response:
        await self.release.wait()
        return web.Response(status=503)

    async def huge_announced(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = CAP * 100
        await response.prepare(request)
        self.sent["huge-announced"] = 0
        for _ in range(CAP * 100 // 10_000):
            await response.write(bytes(10_000))
            self.sent["huge-announced"] += 10_000
            await asyncio.sleep(0.01)
        return response

    async def endless(self, request: web.Request) -> web.StreamResponse:
        """No Content-Length (chunked): the body just goes on past the cap."""
        response = web.StreamResponse()
        await response.prepare(request)
        while not self.release.is_set():
            await response.write(self.clip)
            await asyncio.sleep(0)
        return response

    async def more_than_announced(self, request: web.Request) -> web.StreamResponse:
        """Announces the clip's length, then sends the clip and CAP more bytes."""
        response = web.StreamResponse()
        response.content_length = len(self.clip)
        await response.prepare(request)
        await response.write(self.clip)
        assert request.transport is not None
        request.transport.write(bytes(CAP))  # bypasses aiohttp's own length check
        return response

    async def text(self, request: web.Request) -> web.Response:
        return web.Response(body=b"<html>not a sound</html>" * 50, content_type="audio/mpeg")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ClipServer]:
    clip_server = ClipServer(tone_mp3(tmp_path))
    runner = web.AppRunner(clip_server.app(), shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    clip_server.base = f"http://{host}:{port}"
    yield clip_server
    clip_server.release.set()
    await runner.cleanup()


@pytest.fixture
def store(tmp_path: Path) -> ClipStore:
    return ClipStore(tmp_path / "clips", max_bytes=CAP, guard=LOOPBACK)


async def test_good_fetch_lands_in_the_store(server: ClipServer, store: ClipStore) -> None:
    info = await store.fetch("News", f"{server.base}/clip", sha(server.clip).upper())
    assert (info.name, info.format, info.sha256) == ("news", "mp3", sha(server.clip))
    assert info.duration_s == pytest.approx(3.0, abs=0.05)
    assert store.path("news").read_bytes() == server.clip
    assert sorted(p.name for p in store.root.iterdir()) == ["index.json", "news.label", "news.mp3"]
    source = open_clip(store.path("news"), AudioFormat())
    assert source.read(1000)
    source.close()


async def test_fetch_follows_up_to_five_redirects(server: ClipServer, store: ClipStore) -> None:
    info = await store.fetch("hopped", f"{server.base}/hop/4", sha(server.clip))
    assert info.sha256 == sha(server.clip)


@pytest.mark.parametrize(
    ("path", "digest", "key"),
    [
        ("/clip", "0" * 64, "bad_checksum"),
        ("/missing", None, "fetch_failed"),  # 404
        ("/hang", None, "fetch_failed"),  # timeout
        ("/loop", None, "fetch_failed"),  # redirect loop
        ("/hop/5", None, "fetch_failed"),  # six redirects: one too many
        ("/huge-announced", None, "too_large"),
        ("/endless", None, "too_large"),
        # aiohttp reads no more than announced and sees the rest as a broken next response
        # (fetch_failed), or the announced part fails the checksum of the whole.
        ("/more-than-announced", "whole", "fetch_failed|bad_checksum"),
        ("/text", "text", "bad_audio"),  # right checksum, not audio
    ],
)
async def test_failed_fetch_changes_nothing(
    server: ClipServer,
    store: ClipStore,
    tmp_path: Path,
    *,
    path: str,
    digest: str | None,
    key: str,
) -> None:
    """Each misbehaving server gets its error code; the clip stored before stays, no temp file."""
    old = tone_mp3(tmp_path, seconds=1.0)
    before = await store.add("news", old)
    expected = {
        None: sha(server.clip),
        "whole": sha(server.clip + bytes(CAP)),
        "text": sha(b"<html>not a sound</html>" * 50),
    }.get(digest, digest)
    assert expected is not None
    started = time.monotonic()
    with pytest.raises(ClipError) as caught:
        await store.fetch("news", f"{server.base}{path}", expected, timeout_s=2.0)
    assert caught.value.key in key.split("|"), caught.value
    assert_says_nothing_of_the_socket_or_body(caught.value)
    assert time.monotonic() - started < 30  # nothing waits for a hung server's whole body
    assert store.info("news") == before
    assert store.path("news").read_bytes() == old
    assert sorted(p.name for p in store.root.iterdir()) == ["index.json", "news.label", "news.mp3"]


async def test_announced_oversize_is_refused_before_reading(
    server: ClipServer, store: ClipStore
) -> None:
    """Content-Length over the cap: refused on the headers, long before the body could end."""
    with pytest.raises(ClipError) as caught:
        await store.fetch("big", f"{server.base}/huge-announced", "0" * 64, timeout_s=20)
    assert caught.value.key == "too_large"
    assert "announces" in str(caught.value)
    assert server.sent.get("huge-announced", 0) < CAP * 10


@pytest.mark.parametrize(
    ("name", "url", "digest"),
    [
        ("../../etc/passwd", "http://127.0.0.1:9/x", "0" * 64),
        ("chime", "http://127.0.0.1:9/x", "0" * 64),  # bundled, reserved
        ("ok", "ftp://127.0.0.1/x", "0" * 64),
        ("ok", "http://127.0.0.1:9/x", "not-hex"),
        ("ok", "http://127.0.0.1:9/x", "0" * 63),
    ],
)
async def test_bad_fetch_arguments(store: ClipStore, name: str, url: str, digest: str) -> None:
    with pytest.raises(ClipError) as caught:
        await store.fetch(name, url, digest)
    assert caught.value.key == "bad_args"


async def test_connection_refused_is_fetch_failed(store: ClipStore) -> None:
    """A closed port and a hung server read alike: no port scanner in the replies."""
    with pytest.raises(ClipError) as caught:
        await store.fetch("x", "http://127.0.0.1:9/clip", "0" * 64, timeout_s=5)
    assert caught.value.key == "fetch_failed"
    assert_says_nothing_of_the_socket_or_body(caught.value)


def assert_says_nothing_of_the_socket_or_body(error: ClipError) -> None:
    """A reply names at most the HTTP status: no errno, no socket error, no digest of
    what was read (which would confirm the content of a file the asker cannot read)."""
    message = str(error)
    for leak in ("Errno", "errno", "Connect call", "Cannot connect", "onnection refused", "111"):
        assert leak not in message, message
    if error.key == "bad_checksum":
        assert message == "the download does not match the given sha256"
    if error.key == "fetch_failed":
        assert message.startswith(("the download failed", "the server answered", "more than"))


@pytest.mark.parametrize(
    ("path", "digest", "key", "message"),
    [
        ("/missing", None, "fetch_failed", "the server answered 404"),
        ("/clip", "0" * 64, "bad_checksum", "the download does not match the given sha256"),
    ],
)
async def test_error_replies_name_the_status_at_most(
    server: ClipServer,
    store: ClipStore,
    *,
    path: str,
    digest: str | None,
    key: str,
    message: str,
) -> None:
    """Not the digest of what was read: that would confirm a file the asker cannot read."""
    with pytest.raises(ClipError) as caught:
        await store.fetch("x", f"{server.base}{path}", digest or sha(server.clip), timeout_s=5)
    assert (caught.value.key, str(caught.value)) == (key, message)
    assert sha(server.clip) not in str(caught.value)


async def test_fetches_of_one_name_keep_their_order(server: ClipServer, store: ClipStore) -> None:
    """Two fetches of one name: the later waits for the earlier and wins, however much
    faster its own server is; a fetch of another name does not wait."""
    folder = store.root.parent / "later"
    folder.mkdir()
    later = tone_mp3(folder, seconds=1.0)
    server.files["later.mp3"] = later
    done: list[str] = []

    async def fetch(name: str, path: str, data: bytes) -> None:
        await store.fetch(name, f"{server.base}{path}", sha(data), timeout_s=10)
        done.append(f"{name}{path}")

    first = asyncio.create_task(fetch("news", "/slow", server.clip))
    await asyncio.sleep(0.1)
    second = asyncio.create_task(fetch("news", "/file/later.mp3", later))
    await asyncio.wait_for(fetch("weather", "/file/later.mp3", later), 5)
    await asyncio.sleep(0.2)
    assert done == ["weather/file/later.mp3"]
    server.gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert done[1:] == ["news/slow", "news/file/later.mp3"]
    assert store.info("news").sha256 == sha(later)


async def test_a_fetched_bomb_is_refused(server: ClipServer, store: ClipStore) -> None:
    """A decoding bomb from the commune's server is refused like an uploaded one."""
    path = store.root.parent / "bomb.flac"
    sf.write(str(path), np.zeros((384_000 * 2, 8), dtype=np.int16), 384_000, format="FLAC")
    server.files["bomb.flac"] = path.read_bytes()
    with pytest.raises(ClipError) as caught:
        await store.fetch("bomb", f"{server.base}/file/bomb.flac", sha(path.read_bytes()))
    assert caught.value.key == "bad_audio"
    assert "384000 Hz" in str(caught.value)
    assert sorted(p.name for p in store.root.iterdir()) == []


@pytest.fixture
async def pa(config_file: ConfigFile) -> AsyncIterator[PublicAddress]:
    """The PA component as the daemon builds it (null backend), without the daemon;
    ``pa.fetch_allow`` opens the test server's 127.0.0.1."""
    config_file.write(replace={"[pa]\n": '[pa]\nfetch_allow = ["127.0.0.1"]\n'})
    component = PublicAddress(
        load_settings(config_file.path), state=StateStore(), on_event=lambda event: None
    )
    component.open()
    try:
        yield component
    finally:
        component.close()


def fetch_args(name: str, url: str, data: bytes) -> PaClipFetchArgs:
    return PaClipFetchArgs(name=name, url=url, sha256=sha(data))


async def test_fetch_command_is_a_long_job_that_holds_up_nothing(
    server: ClipServer, pa: PublicAddress
) -> None:
    """pa.clip.fetch answers a LongJob at once; while its download hangs, an emergency
    pa.play, pa.volume and pa.stop answer at once, and another fetch runs to its end."""
    handlers = pa.handlers()
    fetch = handlers["pa.clip.fetch"]
    job = await asyncio.wait_for(
        fetch(fetch_args("slow", f"{server.base}/slow", server.clip), "mqtt"), 0.5
    )
    assert isinstance(job, LongJob)
    assert job.accepted == {"name": "slow", "label": "slow", "url": f"{server.base}/slow"}
    work = asyncio.ensure_future(job.work)
    await asyncio.sleep(0.1)  # the download has started and waits for the server

    started = time.monotonic()
    play = await handlers["pa.play"](PaPlayArgs(clip="test-tone", priority="emergency"), "mqtt")
    volume = await handlers["pa.volume"](PaVolumeArgs(volume=40), "web")
    stop = await handlers["pa.stop"](PaStopArgs(scope="all"), "web")
    assert time.monotonic() - started < 0.5
    assert isinstance(play, dict)
    assert play["status"] == "playing"
    assert volume == {"volume": 40}
    assert isinstance(stop, dict)
    assert stop["stopped"] == play["item"]

    other = await fetch(fetch_args("other", f"{server.base}/clip", server.clip), "mqtt")
    assert isinstance(other, LongJob)
    assert (await asyncio.wait_for(other.work, 10))["name"] == "other"
    assert not work.done()

    server.gate.set()
    result = await asyncio.wait_for(work, 10)
    assert (result["name"], result["sha256"]) == ("slow", sha(server.clip))
    assert pa.clips.info("slow").format == "mp3"


@pytest.mark.parametrize(("name", "key"), [("chime", "bad_args"), ("../../etc/passwd", "bad_args")])
async def test_fetch_command_refuses_at_once(
    server: ClipServer, pa: PublicAddress, name: str, key: str
) -> None:
    """What can be judged before downloading is a CommandError from the handler itself
    (an immediate ``rejected``), not an accepted job that fails later."""
    with pytest.raises(CommandError) as caught:
        await pa.handlers()["pa.clip.fetch"](
            fetch_args(name, f"{server.base}/clip", server.clip), "mqtt"
        )
    assert caught.value.key == key


async def test_too_many_fetches_at_once_are_busy(server: ClipServer, pa: PublicAddress) -> None:
    """Past MAX_FETCHES downloads at once the next is refused at once (busy); once one
    ends there is room again. A job that fails ends in its CommandError."""
    fetch = pa.handlers()["pa.clip.fetch"]
    jobs = []
    for n in range(MAX_FETCHES):
        job = await fetch(fetch_args(f"slow{n}", f"{server.base}/slow", server.clip), "mqtt")
        assert isinstance(job, LongJob)
        jobs.append(asyncio.ensure_future(job.work))
    await asyncio.sleep(0.1)
    with pytest.raises(CommandError) as caught:
        await fetch(fetch_args("one-more", f"{server.base}/clip", server.clip), "mqtt")
    assert caught.value.key == "busy"
    server.gate.set()
    await asyncio.wait_for(asyncio.gather(*jobs), 10)
    failing = await fetch(fetch_args("gone", f"{server.base}/missing", server.clip), "mqtt")
    assert isinstance(failing, LongJob)
    with pytest.raises(CommandError) as caught:
        await failing.work
    assert caught.value.key == "fetch_failed"


# The address guard.


@pytest.fixture
async def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address the event loop connects a socket to (aiohttp's connections). A
    connect outside 127.0.0.1 is refused here, so a broken guard cannot reach out."""
    loop = asyncio.get_running_loop()
    real = loop.sock_connect
    seen: list[str] = []

    async def sock_connect(sock: socket.socket, address: Any) -> None:
        seen.append(str(address[0]))
        if address[0] != "127.0.0.1":
            raise ConnectionRefusedError(f"the test refused a connection to {address[0]}")
        await real(sock, address)

    monkeypatch.setattr(loop, "sock_connect", sock_connect)
    return seen


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Host names the test resolves itself (name -> address), no DNS involved."""
    table: dict[str, str] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host in table:
            return real(table[host], port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


def _dotted(*octets: int) -> str:
    return ".".join(str(octet) for octet in octets)


# The private ranges are built from their numbers, not written out: this project's
# tests name no LAN address (nothing they run may reach one). These are only judged by
# the guard, never connected to; the ``connects`` spy checks that.
LAN_A = _dotted(10, 1, 2, 3)
LAN_A_OTHER = _dotted(10, 9, 9, 9)
LAN_A_RANGE = f"{_dotted(10, 0, 0, 0)}/8"
LAN_B = _dotted(172, 16, 0, 1)
ROUTER = _dotted(192, 168, 1, 1)
NAT64_OF_LAN_A = str(
    ipaddress.IPv6Address(
        int(ipaddress.IPv6Address("64:ff9b::")) | int(ipaddress.IPv4Address(LAN_A))
    )
)
SIXTO4_OF_ROUTER = str(
    ipaddress.IPv6Address((0x2002 << 112) | (int(ipaddress.IPv4Address(ROUTER)) << 80) | 1)
)


def port_of(server: ClipServer) -> int:
    return int(server.base.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("8.8.8.8", "public"),
        ("2001:4860:4860::8888", "public"),
        ("127.0.0.1", "loopback"),
        ("127.0.0.2", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        (LAN_A, "private"),
        (LAN_B, "private"),
        (ROUTER, "private"),
        ("100.64.0.1", "private"),
        ("fd00::1", "private"),
        (NAT64_OF_LAN_A, "private"),
        (SIXTO4_OF_ROUTER, "private"),
        ("0.0.0.0", "unspecified"),  # noqa: S104
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
    ],
)
def test_address_kinds(address: str, kind: str) -> None:
    assert classify(ipaddress.ip_address(address)) == kind


def test_fetch_allow_opens_private_ranges_but_never_the_rest() -> None:
    def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(text)

    guard = AddressGuard([LAN_A_RANGE, "fd00::/8", "Files.Lan", "127.0.0.1"])
    assert guard.refusal("x", ip("8.8.8.8")) is None
    assert guard.refusal("x", ip(LAN_A_OTHER)) is None
    assert guard.refusal("x", ip("fd00::5")) is None
    assert guard.refusal("x", ip("::ffff:127.0.0.1")) is None
    assert guard.refusal("x", ip("127.0.0.2")) == "loopback address, not in pa.fetch_allow"
    assert guard.refusal("x", ip(ROUTER)) == "private address, not in pa.fetch_allow"
    assert guard.refusal("files.lan.", ip(ROUTER)) is None
    assert AddressGuard().refusal("x", ip("127.0.0.1")) is not None
    wide = AddressGuard(["0.0.0.0/0", "::/0", "anything"])
    assert wide.refusal("x", ip("169.254.1.1")) is None
    never_reached = ("0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "::", "ff02::1")  # noqa: S104
    for never in never_reached:
        assert wide.refusal("anything", ip(never)) is not None, never


async def test_loopback_is_refused_unless_allowed(
    server: ClipServer, tmp_path: Path, connects: list[str]
) -> None:
    """Without pa.fetch_allow the test server is out of reach, by address (refused before
    the download starts) and by name (refused once resolved); with it, it is not."""
    strict = ClipStore(tmp_path / "strict", max_bytes=CAP)
    for url in (f"{server.base}/clip", f"http://localhost:{port_of(server)}/clip"):
        with pytest.raises(ClipError) as caught:
            await strict.fetch("x", url, sha(server.clip), timeout_s=5)
        assert caught.value.key == "forbidden", caught.value
        assert "loopback address, not in pa.fetch_allow" in str(caught.value)
    assert (server.requests, connects) == ([], [])
    assert sorted(p.name for p in strict.root.iterdir()) == []

    allowed = ClipStore(tmp_path / "allowed", max_bytes=CAP, guard=AddressGuard(["127.0.0.0/8"]))
    assert (await allowed.fetch("x", f"{server.base}/clip", sha(server.clip))).name == "x"
    assert (server.requests, connects) == (["/clip"], ["127.0.0.1"])


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/clip",  # loopback, but not the allowed address
        "http://[::1]:{port}/clip",
        "http://[::ffff:127.0.0.2]:{port}/clip",
        "http://169.254.169.254/latest/meta-data/",  # a cloud's metadata service
        "http://[fe80::1%25eth0]/clip",
        f"http://{LAN_A}/clip",
        f"http://{LAN_B}/clip",
        f"http://{ROUTER}/cgi-bin/luci",  # the village router
        "http://100.64.0.1/clip",
        "http://[fd00::1]/clip",
        "http://0.0.0.0:{port}/clip",
        "http://224.0.0.1/clip",
        "http://2130706434:{port}/clip",  # 127.0.0.2 as one number
        "http://127.2:{port}/clip",
        "http://0x7f.2:{port}/clip",
        "http://rebound.test:{port}/clip",  # a name that resolves into the LAN
        "http://metadata.test/latest/",  # and one that resolves to link-local
    ],
)
async def test_a_redirect_into_the_lan_is_refused_before_connecting(
    server: ClipServer,
    store: ClipStore,
    names: dict[str, str],
    connects: list[str],
    target: str,
) -> None:
    """From the allowed server, a redirect to anywhere else that is not public is
    ``forbidden``, and nothing but the allowed server was ever connected to."""
    names.update({"rebound.test": ROUTER, "metadata.test": "169.254.169.254"})
    url = target.format(port=port_of(server))
    with pytest.raises(ClipError) as caught:
        await store.fetch(
            "x", f"{server.base}/redirect?to={quote(url, safe='')}", sha(server.clip), timeout_s=5
        )
    assert caught.value.key == "forbidden", caught.value
    assert server.requests == ["/redirect"]
    assert connects == ["127.0.0.1"]
    assert sorted(p.name for p in store.root.iterdir()) == []


async def test_a_host_named_in_fetch_allow_is_reached_by_that_name_only(
    server: ClipServer, tmp_path: Path, names: dict[str, str], connects: list[str]
) -> None:
    """pa.fetch_allow = ["clips.commune.test"]: that name may resolve into the LAN (the
    commune's file server); a redirect from it to its address by number is another host."""
    names["clips.commune.test"] = "127.0.0.1"
    store = ClipStore(tmp_path / "clips", max_bytes=CAP, guard=AddressGuard(["clips.commune.test"]))
    base = f"http://clips.commune.test:{port_of(server)}"
    assert (await store.fetch("x", f"{base}/clip", sha(server.clip))).name == "x"
    with pytest.raises(ClipError) as caught:
        await store.fetch(
            "y", f"{base}/redirect?to={server.base}/clip", sha(server.clip), timeout_s=5
        )
    assert caught.value.key == "forbidden"
    assert server.requests == ["/clip", "/redirect"]
    assert connects == ["127.0.0.1", "127.0.0.1"]


async def test_fetch_and_play_without_fetch_allow_refuse_loopback(
    server: ClipServer, config_file: ConfigFile
) -> None:
    """The daemon's PA with no pa.fetch_allow: a fetch or a stream by address is
    refused at once (``forbidden``); a stream by a name that resolves to loopback fails
    with ``forbidden`` as soon as it is resolved, and is not tried again."""
    events: list[dict[str, Any]] = []
    failed = asyncio.Event()

    def on_event(event: dict[str, Any]) -> None:
        events.append(event)
        if event["type"] == "pa.failed":
            failed.set()

    settings = load_settings(config_file.path)
    component = PublicAddress(settings, state=StateStore(), on_event=on_event)
    component.open()
    handlers = component.handlers()
    try:
        with pytest.raises(CommandError) as caught:
            await handlers["pa.clip.fetch"](
                fetch_args("x", f"{server.base}/clip", server.clip), "mqtt"
            )
        assert caught.value.key == "forbidden"
        with pytest.raises(CommandError) as caught:
            await handlers["pa.play"](PaPlayArgs(url=f"{server.base}/live"), "mqtt")
        assert caught.value.key == "forbidden"

        by_name = f"http://localhost:{port_of(server)}/live?token=1"
        play = await handlers["pa.play"](PaPlayArgs(url=by_name), "mqtt")
        assert isinstance(play, dict)
        await asyncio.wait_for(failed.wait(), 5)
        reasons = [e["reason"] for e in events if e["type"] == "pa.failed"]
        assert reasons == ["forbidden"], events
        await asyncio.sleep(1.5)  # a dropped stream would have tried again after 1 s
    finally:
        component.close()
    assert server.requests == []


async def test_an_uploaded_file_is_moved_into_place_not_read(
    tmp_path: Path, store: ClipStore
) -> None:
    """add_file takes an upload already on the card: a good one is moved into the store
    (the upload's file is gone, the clip plays back the same bytes); a bad one is refused
    with its code and the store keeps what it had."""
    data = tone_mp3(tmp_path)
    upload = tmp_path / "uploads" / "upload-1"
    upload.parent.mkdir()
    upload.write_bytes(data)
    info = await store.add_file("ban-tin", upload, sha256=sha(data), size=len(data))
    assert (info.bytes, info.sha256) == (len(data), sha(data))
    assert not upload.exists()
    assert store.path(info.name).read_bytes() == data
    junk = tmp_path / "uploads" / "upload-2"
    junk.write_bytes(b"not audio at all" * 100)
    with pytest.raises(ClipError) as refused:
        await store.add_file("ban-tin", junk, sha256=sha(junk.read_bytes()), size=1600)
    assert refused.value.key == "bad_audio"
    assert store.path(info.name).read_bytes() == data
    with pytest.raises(ClipError) as empty:
        await store.add_file("other", junk, sha256=sha(b""), size=0)
    assert empty.value.key == "bad_audio"
