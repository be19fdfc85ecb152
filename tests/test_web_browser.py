"""The web UI in headless Chromium at phone size, against the real daemon and broker.

One daemon per module (a fresh state dir, so the first test sees the first-run setup),
one browser per module; each test opens its own browser context (own cookies and
localStorage) like another phone would. Screenshots of every page in Vietnamese and
English land in build/screenshots/ for review.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.subscribe as mqtt_subscribe
import pytest
from playwright.sync_api import Browser, Dialog, expect

from tests.browser import (
    LIVE_S,
    PAGES,
    PASSWORD,
    SCREENSHOTS,
    XSS_LABEL,
    PhonePage,
    WebRig,
    close_phone,
    go,
    launch,
    log_in,
    phone_page,
    start_rig,
    tone_wav,
    wait_until,
)
from tests.conftest import REPO, Broker

pytestmark = pytest.mark.slow

STATIC = REPO / "gateway" / "web" / "static"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[WebRig]:
    """The daemon with a fresh state dir (no password yet), for the whole module."""
    yield from start_rig(tmp_path_factory.mktemp("webui"), broker)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless."""
    yield from launch()


@pytest.fixture
def phone(browser: Browser, rig: WebRig) -> Iterator[PhonePage]:
    """A new phone (browser context); fails the test on a CSP violation or page error."""
    phone = phone_page(browser, rig.url)
    yield phone
    close_phone(phone)


def retained_state(rig: WebRig, broker: Broker, component: str) -> dict[str, Any]:
    """The daemon's retained ``state/<component>`` on the broker (what the commune sees)."""
    message = mqtt_subscribe.simple(  # type: ignore[no-untyped-call]
        f"vg/v1/test.webui/state/{component}",
        hostname=broker.host,
        port=broker.port,
        retained=True,
        keepalive=10,
    )
    assert message is not None
    payload: dict[str, Any] = json.loads(message.payload)
    return payload


def catalogue(lang: str) -> dict[str, str]:
    """One language's strings."""
    data: dict[str, str] = json.loads((STATIC / "i18n" / f"{lang}.json").read_text("utf-8"))
    return data


# -- first run, login ------------------------------------------------------------------


def test_first_run_needs_the_setup_code_from_the_log(phone: PhonePage, rig: WebRig) -> None:
    """On a fresh gateway the page asks for the setup code from the daemon's log: a wrong
    code is refused, the right one sets the password and opens the app; afterwards a new
    phone sees the login form, a wrong password is refused and the right one works."""
    page = phone.page
    page.goto("/")
    expect(page.locator("#setup-form h1")).to_have_text("Cài đặt lần đầu")
    expect(page.locator("#login-form")).to_be_hidden()
    expect(page.locator("#tabs")).to_be_hidden()
    phone.shot("vi-setup")

    page.fill("#setup-code", "WRONG-CODE-0000")
    page.fill("#setup-password", PASSWORD)
    page.fill("#setup-password2", PASSWORD)
    page.click("#setup-form button[type=submit]")
    expect(page.locator("#setup-form .reply")).to_have_text("Mã cài đặt không đúng.")
    expect(page.locator("#tabs")).to_be_hidden()

    page.fill("#setup-code", rig.setup_code())
    page.click("#setup-form button[type=submit]")
    expect(page.locator("#page-overview")).to_be_visible()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=LIVE_S)

    other = phone_page(page.context.browser, rig.url)  # type: ignore[arg-type]
    try:
        second = other.page
        second.goto("/")
        expect(second.locator("#login-form h1")).to_have_text("Đăng nhập")
        expect(second.locator("#setup-form")).to_be_hidden()
        other.shot("vi-login")
        second.fill("#login-password", "not the password")
        second.click("#login-form button[type=submit]")
        expect(second.locator("#login-form .reply")).to_have_text("Sai mật khẩu.")
        second.fill("#login-password", PASSWORD)
        second.click("#login-form button[type=submit]")
        expect(second.locator("#page-overview")).to_be_visible()
    finally:
        other.page.context.close()


def test_overview_shows_link_clock_outbox_and_components(phone: PhonePage, rig: WebRig) -> None:
    """The overview says the gateway is online to the commune (the test broker runs),
    the clock state, the outbox depth and each component's health."""
    page = log_in(phone, rig)
    expect(page.locator("#ov-link .tile-value")).to_have_text("Đã kết nối", timeout=LIVE_S)
    expect(page.locator("#ov-clock .tile-value")).to_have_text(
        re.compile("Đã đồng bộ|Chưa đồng bộ")
    )
    expect(page.locator("#ov-outbox .tile-value")).to_have_text(re.compile(r"\d+ bản ghi"))
    expect(page.locator("#ov-relays .tile-value")).to_have_text(re.compile(r"\d/3 đang bật"))
    expect(page.locator("#ov-health li[data-component=relays]")).to_be_visible()


# -- lights ----------------------------------------------------------------------------


def test_switching_a_light_changes_the_relay_and_every_open_page(
    phone: PhonePage, browser: Browser, rig: WebRig, broker: Broker
) -> None:
    """Switching the yard light on one phone switches the relay (the state the daemon
    publishes to the broker says on, manual, from the web) and a second phone shows it
    without reloading; "for N minutes" shows an end time; "back to schedule" hands the
    relay back."""
    page = log_in(phone, rig)
    watcher_phone = phone_page(browser, rig.url)
    try:
        watcher = log_in(watcher_phone, rig)
        go(watcher, "lights")
        go(page, "lights")
        card = page.locator("article[data-relay=yard]")
        seen = watcher.locator("article[data-relay=yard]")
        expect(card.locator("h2")).to_have_text("Đèn sân")
        # The rig's schedule lights the yard from sunset+10m to 22:30 (gateway time): in
        # that window the light starts on, and switching it off by hand comes first.
        expect(card).to_have_attribute("data-on", re.compile("^(true|false)$"))
        reply = card.locator(".relay-reply")
        if card.get_attribute("data-on") == "true":
            card.locator(".relay-toggle").click()
            expect(reply).to_have_text("Đã thực hiện")
        expect(card).to_have_attribute("data-on", "false")
        expect(seen).to_have_attribute("data-on", "false", timeout=LIVE_S)

        card.locator(".relay-toggle").click()
        expect(reply).to_have_text("Đã thực hiện")
        expect(card).to_have_attribute("data-on", "true")
        expect(card.locator(".relay-state")).to_have_text("Đang bật")
        expect(card.locator(".relay-mode")).to_have_text("Bật/tắt tay")
        expect(seen).to_have_attribute("data-on", "true", timeout=LIVE_S)
        expect(seen.locator(".relay-state")).to_have_text("Đang bật")

        def published_on() -> bool:
            yard = retained_state(rig, broker, "relays")["relays"]["yard"]
            return bool(yard["on"] is True and yard["mode"] == "manual")

        wait_until(published_on, what="state/relays says yard on, manual")
        assert retained_state(rig, broker, "relays")["relays"]["yard"]["source"] == "web"
        phone.shot("vi-lights")

        card.locator("input.minutes").fill("5")
        expect(card.locator(".relay-for")).to_have_text("Bật tạm 5 phút")
        card.locator(".relay-for").click()
        expect(reply).to_have_text("Đã thực hiện")
        expect(card.locator(".relay-detail")).to_contain_text("tắt lúc ")
        expect(seen.locator(".relay-detail")).to_contain_text("tắt lúc ", timeout=LIVE_S)
        # The retained state follows the change within its linger (the reply goes first).
        wait_until(
            lambda: retained_state(rig, broker, "relays")["relays"]["yard"]["until"] is not None,
            what="state/relays carries the revert time",
        )

        card.locator(".relay-auto").click()
        expect(reply).to_have_text("Đã thực hiện")
        expect(card.locator(".relay-mode")).to_have_text("Theo lịch")
        expect(seen.locator(".relay-mode")).to_have_text("Theo lịch", timeout=LIVE_S)
        wait_until(
            lambda: retained_state(rig, broker, "relays")["relays"]["yard"]["mode"] == "schedule",
            what="state/relays says yard back on schedule",
        )
    finally:
        watcher_phone.page.context.close()


def test_script_in_a_label_renders_as_text(phone: PhonePage, rig: WebRig) -> None:
    """A relay labelled ``<img src=x onerror=alert(1)>`` shows exactly that text: no
    element is created, no script runs, on the lights page and in the schedule editor."""
    page = log_in(phone, rig)
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    go(page, "lights")
    road = page.locator("article[data-relay=road]")
    expect(road.locator("h2")).to_have_text(XSS_LABEL)
    assert page.locator("#relay-list img").count() == 0
    go(page, "schedules")
    page.click("#sched-add-relay")  # a new row lists every relay by its label
    expect(page.locator("#sched-relays select option", has_text=XSS_LABEL).first).to_be_attached()
    assert page.locator("#page-schedules img").count() == 0
    page.wait_for_timeout(300)
    assert dialogs == []


# -- loudspeakers ----------------------------------------------------------------------


def test_playing_a_clip_shows_it_in_now_playing(phone: PhonePage, rig: WebRig) -> None:
    """Playing the bundled "test-tone" shows it under "now playing"; the emergency button
    asks first and cancelling sends nothing."""
    page = log_in(phone, rig)
    go(page, "pa")
    expect(page.locator("#pa-clip option[value=test-tone]")).to_have_count(1, timeout=LIVE_S)
    page.select_option("#pa-clip", "test-tone")

    page.locator("#pa-emergency").click()
    expect(page.locator("#confirm-dialog")).to_be_visible()
    expect(page.locator("#confirm-text")).to_contain_text("Âm thử loa")
    page.locator("#confirm-cancel").click()
    expect(page.locator("#pa-emergency-reply")).to_have_text("Đã hủy phát khẩn cấp.")

    page.select_option("#pa-clip", "test-tone")
    page.select_option("#pa-priority", "announcement")
    page.fill("#pa-repeat", "3")
    page.click("#pa-play")
    expect(page.locator("#pa-reply")).to_have_text(re.compile("Đã thực hiện|Đã nhận"))
    expect(page.locator("#pa-now")).to_have_attribute("data-playing", "test-tone", timeout=LIVE_S)
    expect(page.locator("#pa-now .now-clip")).to_have_text("Âm thử loa")
    phone.shot("vi-pa")
    page.click("#pa-stop-all")
    expect(page.locator("#pa-now")).not_to_have_attribute("data-playing", "test-tone")


# -- wifi ------------------------------------------------------------------------------


def test_hotspot_going_down_shows_live_on_the_wifi_page(phone: PhonePage, rig: WebRig) -> None:
    """With the hotspot's web server stopped, the wifi page turns it "down" by itself
    (no reload) and its history chart marks the outage; started again it comes back up."""
    page = log_in(phone, rig)
    go(page, "wifi")
    card = page.locator("article[data-hotspot=hall]")
    expect(card).to_have_attribute("data-state", "up", timeout=LIVE_S)
    expect(card.locator(".badge")).to_have_text("Hoạt động")
    expect(card.locator("svg.chart")).to_be_visible()
    rig.hotspot.stop()
    try:
        expect(card).to_have_attribute("data-state", "down", timeout=LIVE_S)
        expect(card.locator(".badge")).to_have_text("Không hoạt động")
        expect(card.locator(".facts")).to_contain_text("thiết bị từ chối kết nối")
        expect(card.locator("svg.chart rect.chart-down").first).to_be_attached()
        phone.shot("vi-wifi")
    finally:
        rig.hotspot.start()
    expect(card).to_have_attribute("data-state", "up", timeout=LIVE_S)


# -- schedules -------------------------------------------------------------------------


def test_schedules_are_saved_as_one_command_with_validation_messages(
    phone: PhonePage, rig: WebRig
) -> None:
    """A bad time is refused with the gateway's own message and nothing changes; a good
    set is saved (one schedule.set) and is what a newly opened page shows."""
    page = log_in(phone, rig)
    go(page, "schedules")
    rows = page.locator("#sched-relays article.sched-row")
    expect(rows).to_have_count(1, timeout=LIVE_S)
    expect(rows.first.locator("input[data-field=on]")).to_have_value("hoàng hôn + 10 phút")
    rows.first.locator("input[data-field=off]").fill("25:99")
    page.click("#sched-save")
    reply = page.locator("#sched-reply")
    expect(reply).to_have_text(re.compile("^Bị từ chối: .+"))
    expect(reply).to_have_attribute("data-status", "rejected")

    rows.first.locator("input[data-field=off]").fill("22:45")
    page.click("#sched-add-relay")
    expect(rows).to_have_count(2)
    rows.nth(1).locator("select[data-field=relay]").select_option("road")
    rows.nth(1).locator("input[data-field=on]").fill("04:45")
    rows.nth(1).locator("input[data-field=off]").fill("sunrise-15m")
    rows.nth(1).locator(".days input[value=sun]").uncheck()
    page.click("#sched-save")
    expect(reply).to_have_text("Đã thực hiện")
    phone.shot("vi-schedules")

    fresh = phone_page(page.context.browser, rig.url)  # type: ignore[arg-type]
    try:
        other = log_in(fresh, rig)
        go(other, "schedules")
        other_rows = other.locator("#sched-relays article.sched-row")
        expect(other_rows).to_have_count(2, timeout=LIVE_S)
        expect(other_rows.first.locator("input[data-field=off]")).to_have_value("22:45")
        expect(other_rows.nth(1).locator(".days input[value=sun]")).not_to_be_checked()
        expect(other_rows.nth(1).locator(".days input[value=mon]")).to_be_checked()
    finally:
        fresh.page.context.close()


# -- events ----------------------------------------------------------------------------


def test_events_arrive_live_and_can_be_filtered(phone: PhonePage, rig: WebRig) -> None:
    """The events page shows a command sent from another page as it happens, as one
        sentence per action ("Đèn sân bật — từ điện thoại — 19:02"): the switch, not also the
        command that caused it. A refused command reads as a sentence with its reason, a missing
    argument named in the command's words. Log
        lines stay behind their own filter; the filters narrow the list by kind and text."""
    page = log_in(phone, rig)
    go(page, "events")
    sent = page.evaluate(
        """async () => {
            const session = await (await fetch('/api/v1/session')).json();
            const send = async (id, args) => (await (await fetch('/api/v1/commands', {
                method: 'POST',
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': session.csrf},
                body: JSON.stringify({id, type: 'relay.set', args}),
            })).json()).status;
            return [
                await send('ui-events-0', {relay: 'yard', on: false}),
                await send('ui-events-1', {relay: 'yard', on: true}),
                await send('ui-events-2', {relay: 'nope', on: true}),
                await send('ui-events-3', {relay: 'yard'}),
            ];
        }"""
    )
    assert sent == ["done", "done", "rejected", "rejected"]
    items = page.locator("#ev-list li.ev")
    switched = items.filter(has_text=re.compile(r"^Đèn sân bật — từ điện thoại — \d\d:\d\d$"))
    expect(switched.first).to_be_visible(timeout=LIVE_S)
    expect(switched.first).to_have_attribute("data-type", "relay.switched")
    refused = items.filter(has_text="Bật/tắt đèn: bị từ chối — ")
    no_such = refused.filter(has_text="Không tìm thấy thứ được chọn")
    expect(no_such).to_have_count(1, timeout=LIVE_S)
    expect(no_such).to_contain_text("— từ điện thoại — ")
    # A missing argument is named as the command calls it (relay.set's "on" is on-or-off,
    # not a schedule row's on time, "giờ bật"), and the line names the command.
    expect(refused.filter(has_text="bị từ chối — Thiếu bật hay tắt")).to_have_count(1)
    expect(items.filter(has_text="giờ bật")).to_have_count(0)
    expect(items.filter(has_text="Một lệnh")).to_have_count(0)
    # One line per tap: the successful relay.set is not listed beside its switch.
    expect(items.filter(has_text="Bật/tắt đèn: đã thực hiện")).to_have_count(0)
    expect(page.locator("#ev-list li[data-category=log]")).to_have_count(0)
    for text in page.locator("#ev-list li.ev").all_inner_texts():
        assert "=" not in text, text
        assert "relay.set" not in text, text

    page.select_option("#ev-kind", "log")
    expect(page.locator("#ev-list li[data-category=log]").first).to_be_visible(timeout=LIVE_S)
    page.select_option("#ev-kind", "relay")
    expect(page.locator("#ev-list li[data-category=command]")).to_have_count(0)
    expect(switched.first).to_be_visible()
    page.select_option("#ev-kind", "command")
    page.fill("#ev-text", "ui-events-1")
    expect(items).to_have_count(1)
    expect(items.first).to_have_attribute("data-category", "command")
    expect(items.first).to_contain_text("Bật/tắt đèn: đã thực hiện — từ điện thoại")
    page.select_option("#ev-kind", "")
    page.fill("#ev-text", "")
    phone.shot("vi-events")


# -- languages and screenshots ---------------------------------------------------------


def test_english_switch_is_remembered(phone: PhonePage, rig: WebRig) -> None:
    """The language button turns the whole page English; a reload keeps English (the
    choice lives in localStorage); switching back gives Vietnamese again."""
    page = log_in(phone, rig)
    expect(page.locator("#tabs a[data-page=lights]")).to_have_text("Đèn và điện")
    expect(page.locator("html")).to_have_attribute("lang", "vi")
    page.click("#lang-switch")
    expect(page.locator("#tabs a[data-page=lights]")).to_have_text("Lights and power")
    expect(page.locator("#tabs a[data-page=pa]")).to_have_text("Loudspeakers")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    assert page.evaluate("localStorage.getItem('vg.lang')") == "en"
    go(page, "lights")
    expect(page.locator("article[data-relay=yard] .relay-mode")).to_have_text(
        re.compile("^(Schedule|Manual)$")
    )
    page.reload()
    expect(page.locator("#tabs a[data-page=lights]")).to_have_text("Lights and power")
    expect(page.locator("#conn")).to_have_text("Connected", timeout=LIVE_S)
    page.click("#lang-switch")
    expect(page.locator("#tabs a[data-page=lights]")).to_have_text("Đèn và điện")
    assert page.evaluate("localStorage.getItem('vg.lang')") == "vi"


@pytest.mark.parametrize("lang", ["vi", "en"])
def test_every_page_renders_at_phone_size(phone: PhonePage, rig: WebRig, lang: str) -> None:
    """Each page fits a 390 px wide phone (nothing wider than the screen) in both
    languages, and its screenshot is saved for review."""
    page = log_in(phone, rig)
    if lang == "en":
        page.click("#lang-switch")
        expect(page.locator("html")).to_have_attribute("lang", "en")
    for name in PAGES:
        go(page, name)
        page.wait_for_timeout(200)  # let the live snapshot settle before the picture
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{name} is {width} px wide in {lang}"
        phone.shot(f"{lang}-{name}")
    assert (SCREENSHOTS / f"{lang}-overview.png").stat().st_size > 0


# -- catalogues and markup (no browser) -------------------------------------------------


def _markup_text(html: str) -> list[str]:
    """Visible text in index.html, outside tags and comments."""
    without_comments = re.sub(r"<!--.*?-->", "", html, flags=re.S)
    return [t.strip() for t in re.findall(r">([^<]*)<", without_comments) if t.strip()]


def _code(source: str) -> str:
    """A module without its comments (which may name what the code avoids)."""
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    return "\n".join(line for line in source.splitlines() if not line.strip().startswith("//"))


def test_markup_has_no_hard_coded_strings_and_catalogues_match() -> None:
    """index.html carries only keys (no visible text, no inline script or style); every
    key the markup and the modules use exists in both catalogues, which have the same
    keys; no module builds HTML from strings or evaluates code."""
    html = (STATIC / "index.html").read_text("utf-8")
    assert _markup_text(html) == []
    assert "style=" not in html
    assert re.search(r"<script(?![^>]*\bsrc=)", html) is None
    assert re.search(r"\son[a-z]+=", html) is None
    vi, en = catalogue("vi"), catalogue("en")
    assert set(vi) == set(en)
    used = set(re.findall(r'data-i18n(?:-[a-z-]+)?="([^"]+)"', html))
    sources = [_code(p.read_text("utf-8")) for p in sorted((STATIC / "js").rglob("*.js"))]
    namespaces = {key.split(".")[0] for key in vi}
    alternatives = "|".join(map(re.escape, namespaces))
    pattern = re.compile(rf'(?<!case )"((?:{alternatives})\.[a-z0-9_]+)"')
    for source in sources:
        used |= set(pattern.findall(source))
        assert "innerHTML" not in source
        assert "outerHTML" not in source
        assert "insertAdjacentHTML" not in source
        assert "eval(" not in source
        assert "new Function" not in source
        assert "document.write" not in source
    missing = sorted(key for key in used if key not in vi)
    assert missing == [], missing
    for key, text in vi.items():
        if key.startswith("conn.stopped"):
            continue
        assert text.strip(), f"vi: {key} is empty"
        assert en[key].strip(), f"en: {key} is empty"
    # Vietnamese with its diacritics, not stripped ASCII.
    assert vi["nav.lights"] == "Đèn và điện"
    assert vi["nav.pa"] == "Loa truyền thanh"
    assert vi["auth.login"] == "Đăng nhập"


def test_static_files_are_plain_modules_from_this_origin() -> None:
    """Nothing is loaded from the internet: every URL in the UI files is same-origin."""
    for path in sorted(STATIC.rglob("*")):
        if path.suffix not in {".html", ".js", ".css"}:
            continue
        text = path.read_text("utf-8")
        external = [
            url for url in re.findall(r"https?://[^\s\"'`)]+", text) if "www.w3.org" not in url
        ]
        assert external == [], f"{path.relative_to(REPO)}: {external}"


def test_page_reconnects_by_itself_and_says_so(phone: PhonePage, rig: WebRig) -> None:
    """When the phone loses the network the header says "reconnecting"; once it is back
    the page reconnects on its own and live updates flow again, without a reload."""
    page = log_in(phone, rig)
    go(page, "lights")
    conn = page.locator("#conn")
    page.context.set_offline(True)
    try:
        expect(conn).to_have_attribute("data-state", "reconnecting", timeout=LIVE_S)
        expect(conn).to_have_text("Đang kết nối lại…")
        phone.shot("vi-reconnecting")
    finally:
        page.context.set_offline(False)
    expect(conn).to_have_attribute("data-state", "live", timeout=LIVE_S)
    card = page.locator("article[data-relay=road]")
    was_on = card.get_attribute("data-on") == "true"
    card.locator(".relay-toggle").click()
    expect(card).to_have_attribute("data-on", "false" if was_on else "true", timeout=LIVE_S)


def test_uploading_a_clip_adds_it_to_the_library(
    phone: PhonePage, rig: WebRig, tmp_path: Path
) -> None:
    """A WAV uploaded from the phone appears in the clip library and the play list; a
    text file named .mp3 is refused with the server's reason and is not listed."""
    page = log_in(phone, rig)
    go(page, "pa")
    reply = page.locator("#pa-upload-reply")
    page.fill("#pa-upload-name", "hop-thon")
    page.set_input_files("#pa-upload-file", str(tone_wav(tmp_path / "hop.wav", 0.5)))
    page.click("#pa-upload")
    expect(reply).to_have_text("Đã lưu bản tin «hop-thon».", timeout=LIVE_S)
    expect(page.locator("#pa-clips li[data-clip=hop-thon]")).to_be_visible()
    expect(page.locator("#pa-clip option[value=hop-thon]")).to_have_count(1)

    fake = tmp_path / "fake.mp3"
    fake.write_text("this is not audio\n")
    page.fill("#pa-upload-name", "fake")
    page.set_input_files("#pa-upload-file", str(fake))
    page.click("#pa-upload")
    expect(reply).to_have_attribute("data-status", "error", timeout=LIVE_S)
    expect(reply).to_have_text("Tệp không phải âm thanh đọc được (dùng WAV, MP3, OGG hoặc FLAC)")
    expect(page.locator("#pa-clips li[data-clip=fake]")).to_have_count(0)


def test_password_change_logs_other_phones_out_by_themselves(
    phone: PhonePage, browser: Browser, rig: WebRig
) -> None:
    """Changing the password on one phone ends the other phones' sessions: their pages
    fall back to the login form without a reload, and the old password no longer works."""
    page = log_in(phone, rig)
    other_phone = phone_page(browser, rig.url)
    new_password = "mật-khẩu-mới-2026"  # noqa: S105 - a test password
    try:
        other = log_in(other_phone, rig)
        go(other, "lights")
        go(page, "overview")
        page.click("#password-form summary, #page-overview details > summary")
        page.fill("#pw-current", "wrong")
        page.fill("#pw-new", new_password)
        page.fill("#pw-new2", new_password)
        page.click("#password-form button[type=submit]")
        expect(page.locator("#password-form .reply")).to_have_text("Mật khẩu hiện tại không đúng.")
        page.fill("#pw-current", PASSWORD)
        page.click("#password-form button[type=submit]")
        expect(page.locator("#password-form .reply")).to_have_attribute("data-status", "info")
        expect(other.locator("#login-form")).to_be_visible(timeout=LIVE_S)
        expect(other.locator("#tabs")).to_be_hidden()
        other.fill("#login-password", PASSWORD)
        other.click("#login-form button[type=submit]")
        expect(other.locator("#login-form .reply")).to_have_text("Sai mật khẩu.")
    finally:
        other_phone.page.context.close()
        # Put the module's password back for the tests that follow.
        page.fill("#pw-current", new_password)
        page.fill("#pw-new", PASSWORD)
        page.fill("#pw-new2", PASSWORD)
        page.click("#password-form button[type=submit]")
        expect(page.locator("#password-form .reply")).to_have_attribute("data-status", "info")


def test_the_page_works_with_the_broker_down(phone: PhonePage, rig: WebRig, broker: Broker) -> None:
    """With the commune's broker gone the overview turns "offline" by itself, and a light
    still switches at once: actions run on the gateway, the outbox keeps the events."""
    page = log_in(phone, rig)
    expect(page.locator("#ov-link .tile-value")).to_have_text("Đã kết nối", timeout=LIVE_S)
    broker.stop()
    try:
        expect(page.locator("#ov-link .tile-value")).to_have_text("Mất kết nối", timeout=60_000)
        expect(page.locator("#ov-link")).to_have_attribute("data-tone", "bad")
        phone.shot("vi-overview-offline")
        go(page, "lights")
        card = page.locator("article[data-relay=road]")
        was_on = card.get_attribute("data-on") == "true"
        card.locator(".relay-toggle").click()
        expect(card.locator(".relay-reply")).to_have_text("Đã thực hiện")
        expect(card).to_have_attribute("data-on", "false" if was_on else "true")
        go(page, "overview")
        expect(page.locator("#ov-outbox .tile-value")).not_to_have_text("0 bản ghi", timeout=60_000)
    finally:
        broker.start()
    expect(page.locator("#ov-link .tile-value")).to_have_text("Đã kết nối", timeout=60_000)
