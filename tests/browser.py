"""Playwright helpers for the web UI tests: Debian's Chromium, a phone-sized page, a real
daemon with a real broker, and a hotspot the test can switch off.

``playwright install`` cannot download browsers on this closed network, so the tests
drive ``/usr/bin/chromium`` (the Debian package ``make test`` installs). Without the
background-networking flags Chromium keeps dialling out, and those connections are
refused here.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)

from tests.conftest import REPO, Broker, Daemon, clean_env, free_port, terminate

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE: ViewportSize = {"width": 390, "height": 844}
SMALL_PHONE: ViewportSize = {"width": 360, "height": 740}
SCREENSHOTS = REPO / "build" / "screenshots"
PASSWORD = "mật-khẩu-thôn-2026"  # noqa: S105 - a test password, non-ASCII on purpose
LIVE_S = 30_000  # ms: generous, other engineers load the same 2 cores
PAGES = ["overview", "lights", "pa", "wifi", "schedules", "events"]
XSS_LABEL = "<img src=x onerror=alert(1)>"
"""A relay label that must render as text, never as an element."""


def launch() -> Iterator[Browser]:
    """Headless Debian Chromium; the tests skip (with the reason) when it is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium; `make test`)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PhonePage:
    """A page at phone size that records console errors and CSP violations."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def shot(self, name: str) -> Path:
        """Save a full-page screenshot under build/screenshots/ for review."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def phone_page(browser: Browser, base_url: str, viewport: ViewportSize = PHONE) -> PhonePage:
    """A fresh browser context (own cookies and localStorage) at 390x844 (or ``viewport``)."""
    context = browser.new_context(
        viewport=viewport,
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        locale="vi-VN",
        base_url=base_url,
    )
    context.set_default_timeout(15_000)
    page = context.new_page()
    phone = PhonePage(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            phone.errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: phone.errors.append(f"pageerror: {error}"))
    return phone


def close_phone(phone: PhonePage) -> None:
    """Close the phone's context; fail on a CSP violation or a page error it saw."""
    phone.page.context.close()
    blocked = [e for e in phone.errors if "Content Security Policy" in e or "pageerror" in e]
    assert not blocked, blocked


def log_in(phone: PhonePage, rig: WebRig, *, remember: bool = False) -> Page:
    """Open the UI and log in with :data:`PASSWORD` (doing the first-run setup if no
    test of the module did it yet); ``remember`` ticks "remember this phone"."""
    page = phone.page
    page.goto("/")
    expect(page.locator("#page-login")).to_be_visible()
    expect(page.locator("#setup-form:visible, #login-form:visible")).to_have_count(1)
    if page.locator("#setup-form").is_visible():
        page.fill("#setup-code", rig.setup_code())
        page.fill("#setup-password", PASSWORD)
        page.fill("#setup-password2", PASSWORD)
        page.click("#setup-form button[type=submit]")
    else:
        page.fill("#login-password", PASSWORD)
        page.locator("#login-remember").set_checked(remember)
        page.click("#login-form button[type=submit]")
    expect(page.locator("#tabs")).to_be_visible()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=LIVE_S)
    return page


def go(page: Page, name: str) -> None:
    """Open a page through the tab bar, as a finger would."""
    page.click(f"#tabs a[data-page={name}]")
    expect(page.locator(f"#page-{name}")).to_be_visible()


def tone_wav(path: Path, seconds: float) -> Path:
    """A 440 Hz tone of ``seconds`` as 16-bit mono WAV, made by the test."""
    rate = 16_000
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * n / rate)))
        for n in range(int(rate * seconds))
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return path


class HotspotServer:
    """A tiny HTTP server on 127.0.0.1 standing in for a wifi access point's admin page.

    It runs its own event loop in a thread so the synchronous Playwright tests can stop
    it (an outage) and start it again on the same port.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """What the hotspot's http probe fetches."""
        return f"http://127.0.0.1:{self.port}/"

    async def _start(self) -> None:
        async def index(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/", index)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> None:
        """Start answering (again)."""
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    def stop(self) -> None:
        """Stop answering: the port refuses connections, as a dead access point would."""
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)

    def close(self) -> None:
        """Stop and end the thread."""
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


CONFIG = """\
[gateway]
id = "test.webui"
name = "Nhà văn hóa thôn Đông Trung Thượng, xã Thử Nghiệm"
groups = ["commune.test"]
timezone = "Asia/Ho_Chi_Minh"
latitude = 18.25
longitude = 106.05
state_dir = "{state_dir}"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}

[relays.yard]
pin = 17
label = "Đèn sân"
power_on = "off"

[relays.road]
pin = 27
label = {xss_label}
power_on = "off"

[relays.amplifier]
pin = 22
label = "Nguồn amply"

[pa]
backend = "null"
amp_relay = "amplifier"
amp_warmup_s = 0

[hotspots.hall]
host = "127.0.0.1"
label = "Wifi nhà văn hóa"
ssid = "Wifi NVH;Thử"
interval_s = 1
fail_threshold = 2
recover_threshold = 1
probes = [{{ kind = "http", url = "{hotspot_url}", timeout_s = 0.5 }}]

[web]
host = "127.0.0.1"
port = {web_port}
login_max_attempts = 20

[schedules]
relays = [{{ relay = "yard", on = "sunset+10m", off = "22:30" }}]

[log]
level = "INFO"
format = "json"
"""


@dataclass
class WebRig:
    """The daemon under test with its broker, hotspot stand-in and log."""

    daemon: Daemon
    hotspot: HotspotServer
    state_dir: Path
    workdir: Path

    @property
    def url(self) -> str:
        """Base URL of the web UI."""
        return self.daemon.url

    def setup_code(self, within_s: float = 20.0) -> str:
        """The one-time code the daemon logged as ``web.setup_code``."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for line in self.daemon.log_lines():
                if line.get("event") == "web.setup_code" and line.get("code"):
                    return str(line["code"])
            time.sleep(0.1)
        pytest.fail(f"no web.setup_code in the log:\n{self.daemon.output()}")


VILLAGE = "Nhà văn hóa thôn Đông Trung Thượng, xã Thử Nghiệm"
"""The rig's gateway.name: long enough to need two lines on a phone."""
HOTSPOT_SSID = "Wifi NVH;Thử"
"""The rig's hotspot ssid, with a character the WIFI: format must escape."""


def start_rig(workdir: Path, broker: Broker) -> Iterator[WebRig]:
    """Start the daemon on free ports with a fresh state dir; kill it at the end."""
    hotspot = HotspotServer()
    hotspot.start()
    web_port = free_port()
    state_dir = workdir / "state"
    config = workdir / "config.toml"
    config.write_text(
        CONFIG.format(
            state_dir=state_dir,
            mqtt_port=broker.port,
            web_port=web_port,
            hotspot_url=hotspot.url,
            xss_label=json.dumps(XSS_LABEL),
        ),
        encoding="utf-8",
    )
    rig = WebRig(_spawn(workdir, web_port), hotspot, state_dir, workdir)
    try:
        rig.daemon.wait_healthy(within_s=30)
        yield rig
    finally:
        terminate(rig.daemon.process)
        hotspot.close()


def _spawn(workdir: Path, web_port: int) -> Daemon:
    """``village-gateway run`` with the rig's config, its output appended to daemon.log."""
    output_path = workdir / "daemon.log"
    with output_path.open("a") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(workdir / "config.toml")],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            text=True,
            cwd=workdir,
        )
    return Daemon(process, web_port, output_path)


def restart(rig: WebRig, *, power_cut: bool = False) -> None:
    """Stop the daemon (SIGTERM, as systemd does; SIGKILL for a power cut: nothing gets
    to run on the way out) and start it again on the same port and state folder; returns
    once it is healthy."""
    if power_cut:
        rig.daemon.process.kill()
        rig.daemon.process.wait()
    terminate(rig.daemon.process)
    rig.daemon = _spawn(rig.workdir, rig.daemon.web_port)
    rig.daemon.wait_healthy(within_s=30)


def wait_until(predicate: Callable[[], Any], within_s: float = 20.0, what: str = "") -> Any:
    """Poll a plain-Python condition (e.g. the daemon's published state)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"not reached within {within_s} s: {what}")
