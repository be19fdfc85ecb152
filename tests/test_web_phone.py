"""The web UI as the village head uses it on a small phone (360x740 and 390x844).

Against the real daemon and broker in headless Chromium, like test_web_browser: the
answer to every action lands next to the control, no English reaches a Vietnamese page,
every tab is reachable, a login survives a restart and a power cut, schedules take
Vietnamese words, clips have names, the amplifier belongs to the loudspeakers, and the
notice-board sheet carries the right QR codes. Screenshots at 360 px in both languages go
to build/screenshots/.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import segno
from playwright.sync_api import Browser, Locator, Page, ViewportSize, WebSocketRoute, expect

from gateway.web.printout import wifi_payload
from tests.browser import (
    HOTSPOT_SSID,
    LIVE_S,
    PAGES,
    PASSWORD,
    PHONE,
    SCREENSHOTS,
    SMALL_PHONE,
    VILLAGE,
    PhonePage,
    WebRig,
    close_phone,
    go,
    launch,
    log_in,
    phone_page,
    restart,
    start_rig,
    tone_wav,
)
from tests.conftest import REPO, Broker

pytestmark = pytest.mark.slow

STATIC = REPO / "gateway" / "web" / "static"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[WebRig]:
    """The daemon with a fresh state dir, for the whole module."""
    yield from start_rig(tmp_path_factory.mktemp("phone"), broker)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless."""
    yield from launch()


def open_phone(browser: Browser, rig: WebRig, viewport: ViewportSize = SMALL_PHONE) -> PhonePage:
    """A new phone of that size."""
    return phone_page(browser, rig.url, viewport)


@pytest.fixture
def phone(browser: Browser, rig: WebRig) -> Iterator[PhonePage]:
    """A 360x740 phone; fails the test on a CSP violation or a page error."""
    phone = open_phone(browser, rig)
    yield phone
    close_phone(phone)


def answered(reply: Locator) -> None:
    """Wait until a status line holds an answer (not empty, not "sending")."""
    expect(reply).not_to_be_empty(timeout=LIVE_S)
    expect(reply).not_to_have_text("Đang gửi…", timeout=LIVE_S)


def assert_near(page: Page, control: Locator, reply: Locator) -> None:
    """The answer is on screen, inside the viewport, close to the control that was used."""
    answered(reply)
    size = page.viewport_size
    assert size is not None
    box, near = reply.bounding_box(), control.bounding_box()
    assert box is not None, "the answer is not shown"
    assert near is not None, "the control is not shown"
    assert box["y"] >= 0, (box, size)
    assert box["y"] + box["height"] <= size["height"], (box, size)
    assert box["x"] >= 0, (box, size)
    assert box["x"] + box["width"] <= size["width"], (box, size)
    gap = min(abs(box["y"] - (near["y"] + near["height"])), abs(near["y"] - box["y"]))
    assert gap <= size["height"] / 3, f"answer {box} is far from its control {near}"


@pytest.mark.parametrize("viewport", [SMALL_PHONE, PHONE], ids=["360x740", "390x844"])
def test_every_answer_lands_next_to_its_control(
    browser: Browser, rig: WebRig, tmp_path: Path, viewport: ViewportSize
) -> None:
    """Switch, timed switch, play, stop, volume, upload, probe, schedule save and password
    change: each answer is in the viewport next to the button used, at both phone sizes."""
    phone = open_phone(browser, rig, viewport)
    try:
        page = log_in(phone, rig)
        go(page, "lights")
        yard = page.locator("article[data-relay=yard]")
        yard.locator(".relay-toggle").click()
        assert_near(page, yard.locator(".relay-toggle"), yard.locator(".relay-reply"))
        road = page.locator("article[data-relay=road]")
        road.locator("input.minutes").fill("2")
        road.locator(".relay-for").click()
        assert_near(page, road.locator(".relay-for"), road.locator(".relay-reply"))
        expect(road.locator(".relay-reply")).to_have_text("Đã thực hiện")

        go(page, "pa")
        expect(page.locator("#pa-clip option[value=test-tone]")).to_have_count(1, timeout=LIVE_S)
        page.select_option("#pa-clip", "test-tone")
        page.click("#pa-play")
        assert_near(page, page.locator("#pa-play"), page.locator("#pa-reply"))
        page.click("#pa-stop-all")
        assert_near(page, page.locator("#pa-stop-all"), page.locator("#pa-stop-reply"))
        page.click("#pa-master-set")
        assert_near(page, page.locator("#pa-master-set"), page.locator("#pa-volume-reply"))
        page.fill("#pa-upload-name", f"thử {viewport['width']}")
        page.set_input_files("#pa-upload-file", str(tone_wav(tmp_path / "t.wav", 0.4)))
        page.click("#pa-upload")
        expect(page.locator("#pa-upload-reply")).to_have_attribute(
            "data-status", re.compile("done|error"), timeout=LIVE_S
        )
        assert_near(page, page.locator("#pa-upload"), page.locator("#pa-upload-reply"))

        go(page, "wifi")
        page.click("#wifi-probe")
        assert_near(page, page.locator("#wifi-probe"), page.locator("#wifi-reply"))
        expect(page.locator("#wifi-reply")).to_contain_text("Wifi nhà văn hóa: ")

        go(page, "schedules")
        rows = page.locator("#sched-relays article.sched-row")
        expect(rows.first).to_be_visible(timeout=LIVE_S)
        page.click("#sched-add-relay")
        rows.last.locator("input[data-field=off]").fill("25:99")
        page.click("#sched-save")
        assert_near(page, page.locator("#sched-save"), page.locator("#sched-reply"))
        expect(page.locator("#sched-reply")).to_have_attribute("data-status", "rejected")
        page.click("#sched-revert")

        go(page, "overview")
        page.click("#page-overview details > summary")
        page.fill("#pw-current", "not the password")
        page.fill("#pw-new", "whatever-long-enough")
        page.fill("#pw-new2", "whatever-long-enough")
        page.click("#password-form button[type=submit]")
        button = page.locator("#password-form button[type=submit]")
        assert_near(page, button, page.locator("#password-form .reply"))
        expect(page.locator("#password-form .reply")).to_have_text("Mật khẩu hiện tại không đúng.")
    finally:
        phone.page.context.close()


def test_tabs_and_village_name_fit_a_360_px_phone(phone: PhonePage, rig: WebRig) -> None:
    """At 360 px every tab is on screen at once (no hidden scrolling strip) and the long
    village name is shown whole, wrapped, never cut with an ellipsis."""
    page = log_in(phone, rig)
    tabs = page.locator("#tabs a")
    expect(tabs).to_have_count(len(PAGES))
    for index in range(len(PAGES)):
        box = tabs.nth(index).bounding_box()
        assert box is not None
        assert box["x"] >= 0, box
        assert box["x"] + box["width"] <= 360, box
        assert box["y"] + box["height"] <= 740, box
    name = page.locator("#gateway-name")
    expect(name).to_have_text(VILLAGE)
    clipped = name.evaluate(
        "el => el.scrollWidth > el.clientWidth || getComputedStyle(el).textOverflow === 'ellipsis'"
    )
    assert clipped is False
    assert page.evaluate("document.documentElement.scrollWidth") <= 360


def _patterns(catalogue: dict[str, str]) -> list[re.Pattern[str]]:
    """Each catalogue text as a pattern, its {placeholders} matching any text."""
    patterns = []
    for text in catalogue.values():
        if not text.strip():
            continue
        parts = re.split(r"\{\w+\}", text)
        patterns.append(re.compile("^" + ".+".join(map(re.escape, parts)) + "$", re.S))
    return patterns


NEUTRAL = re.compile(r"^[\d\s:.,/%+\-\u2013\u2014()«»…·]*$")
"""Figures, times and punctuation: no words to translate."""


def _explained(text: str, patterns: list[re.Pattern[str]]) -> bool:
    if NEUTRAL.match(text) or any(p.match(text) for p in patterns):
        return True
    pieces = [p.strip() for p in re.split(r" · | — |\n", text) if p.strip()]
    return len(pieces) > 1 and all(_explained(piece, patterns) for piece in pieces)


VISIBLE_TEXT = """() => {
    const out = [];
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {
        const node = walker.currentNode;
        const text = node.textContent.trim();
        const el = node.parentElement;
        if (!text || !el || el.closest('[data-user], script, style, option, datalist')) continue;
        if (!el.getClientRects().length || getComputedStyle(el).visibility === 'hidden') continue;
        out.push((el.innerText ?? "").trim() || text);
    }
    return [...new Set(out)];
}"""


@pytest.mark.parametrize("lang", ["vi", "en"])
def test_no_text_outside_the_catalogue(
    phone: PhonePage, rig: WebRig, tmp_path: Path, lang: str
) -> None:
    """Every page in Vietnamese (and, the same way, in English), after actions that leave
    answers on screen (a refused command in the events, a wrong minute value, a refused
    upload, a refused schedule), and the login page: each visible text is a catalogue
    sentence (with its parameters), a figure, or something the operator named
    (data-user). A refused schedule names its row from 1 and shows no pattern."""
    catalogue: dict[str, str] = json.loads((STATIC / "i18n" / f"{lang}.json").read_text("utf-8"))
    patterns = _patterns(catalogue)
    page = log_in(phone, rig)
    if lang == "en":
        page.click("#lang-switch")
        expect(page.locator("html")).to_have_attribute("lang", "en")
    page.evaluate(
        """async () => {
            const session = await (await fetch('/api/v1/session')).json();
            await fetch('/api/v1/commands', {
                method: 'POST',
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': session.csrf},
                body: JSON.stringify({type: 'relay.set', args: {relay: 'nope', on: true}}),
            });
        }"""
    )
    stray: dict[str, list[str]] = {}

    def check(where: str) -> None:
        page.wait_for_timeout(300)
        texts: list[str] = page.evaluate(VISIBLE_TEXT)
        bad = [text for text in texts if not _explained(text, patterns)]
        if bad:
            stray[where] = bad

    for name in PAGES:
        go(page, name)
        if name == "lights":
            card = page.locator("article[data-relay=yard]")
            card.locator("input.minutes").fill("0")
            card.locator(".relay-for").click()
            expect(card.locator(".relay-reply")).to_have_attribute("data-status", "error")
        if name == "pa":
            fake = tmp_path / "not-audio.mp3"
            fake.write_text("this is not audio\n")
            page.fill("#pa-upload-name", "Không phải âm thanh")
            page.set_input_files("#pa-upload-file", str(fake))
            page.click("#pa-upload")
            expect(page.locator("#pa-upload-reply")).to_have_attribute(
                "data-status", "error", timeout=LIVE_S
            )
        if name == "schedules":
            rows = page.locator("#sched-relays article.sched-row")
            expect(rows.first).to_be_visible(timeout=LIVE_S)
            rows.first.locator("input[data-field=on]").fill("hoàng hôn + 999 phút")
            page.click("#sched-save")
            reply = page.locator("#sched-reply")
            expect(reply).to_have_attribute("data-status", "rejected", timeout=LIVE_S)
            said = reply.inner_text()
            assert "Dòng 1:" in said or "Row 1:" in said, said
            assert "pattern" not in said
            assert "^(?:" not in said
        check(name)
        if name == "schedules":
            page.click("#sched-revert")
    page.click("#logout")
    expect(page.locator("#login-form")).to_be_visible()
    check("login")
    assert stray == {}, stray


def test_a_login_survives_a_restart_and_a_power_cut(
    browser: Browser, rig: WebRig, phone: PhonePage
) -> None:
    """With "remember this phone", the daemon restarted (and then killed as by a power
    cut) does not log the phone out: a reload goes straight to the app. A password change
    on another phone then ends it, and the page says that was why."""
    page = log_in(phone, rig, remember=True)
    restart(rig)
    page.reload()
    expect(page.locator("#tabs")).to_be_visible(timeout=LIVE_S)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=LIVE_S)
    restart(rig, power_cut=True)
    page.reload()
    expect(page.locator("#tabs")).to_be_visible(timeout=LIVE_S)
    expect(page.locator("#login-form")).to_be_hidden()

    other_phone = open_phone(browser, rig)
    other = log_in(other_phone, rig)
    new_password = "mật-khẩu-tạm-2026"  # noqa: S105 - a test password
    try:
        go(other, "overview")
        other.click("#page-overview details > summary")
        for current, new in ((PASSWORD, new_password), (new_password, PASSWORD)):
            other.fill("#pw-current", current)
            other.fill("#pw-new", new)
            other.fill("#pw-new2", new)
            other.click("#password-form button[type=submit]")
            expect(other.locator("#password-form .reply")).to_have_attribute("data-status", "info")
            expect(other.locator("#password-form .reply")).to_have_text(
                "Đã đổi mật khẩu. Các máy khác đã bị đăng xuất."
            )
    finally:
        other_phone.page.context.close()
    expect(page.locator("#login-form")).to_be_visible(timeout=LIVE_S)
    expect(page.locator("#login-ended")).to_have_text(
        "Bạn đã bị đăng xuất vì mật khẩu vừa được đổi."
    )


def test_the_amplifier_relay_belongs_to_the_loudspeakers(phone: PhonePage, rig: WebRig) -> None:
    """The amplifier's relay (pa.amp_relay) is not a plain switch on the lights page: it
    shows its state and that the loudspeakers run it; the PA page names it."""
    page = log_in(phone, rig)
    go(page, "lights")
    amp = page.locator("article[data-relay=amplifier]")
    expect(amp).to_have_attribute("data-owner", "pa")
    expect(amp.locator(".relay-toggle")).to_be_hidden()
    expect(amp.locator(".relay-mode")).to_have_text("Loa truyền thanh")
    expect(amp.locator(".relay-owned")).to_contain_text("Do loa truyền thanh điều khiển")
    expect(page.locator("article[data-relay=yard] .relay-toggle")).to_be_visible()
    go(page, "pa")
    expect(page.locator("#pa-amp")).to_contain_text("Nguồn amply")
    go(page, "schedules")
    options = page.locator("#sched-relays select[data-field=relay] option[value=amplifier]")
    expect(options).to_have_count(0)


def test_icon_and_manifest_for_the_home_screen(phone: PhonePage, rig: WebRig) -> None:
    """The page links its own icon and a web app manifest; both are served, and the page
    loads without a single failed request."""
    failed: list[str] = []
    phone.page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    page = log_in(phone, rig)
    assert page.locator("link[rel=icon]").first.get_attribute("href") == "/static/icon.svg"
    href = page.locator("link[rel=manifest]").get_attribute("href")
    assert href == "/static/manifest.webmanifest"
    with urllib.request.urlopen(rig.url + href, timeout=5) as response:  # noqa: S310
        assert response.headers["Content-Type"] == "application/manifest+json"
        manifest = json.loads(response.read())
    assert manifest["name"] == "Bộ điều khiển nhà văn hóa"
    assert manifest["start_url"] == "/"
    for icon in manifest["icons"]:
        with urllib.request.urlopen(rig.url + icon["src"], timeout=5) as response:  # noqa: S310
            assert response.status == 200
            assert response.headers["Content-Type"] == icon["type"]
    assert failed == []


def test_the_notice_board_sheet_has_the_right_qr_codes(phone: PhonePage, rig: WebRig) -> None:
    """/print is an A4 page in Vietnamese: the village name, a QR code of this page's
    address and, for the hotspot with an ssid, a WIFI: QR code (its ';' escaped) with the
    hotspot's name. It needs a login, like everything but the login page."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(rig.url + "/print", timeout=5)  # noqa: S310
    assert refused.value.code == 401
    page = log_in(phone, rig)
    go(page, "overview")
    assert page.locator("#ov-print").get_attribute("href") == "/print"
    assert page.locator("#ov-backup").get_attribute("href") == "/api/v1/backup"
    # The backup link shows exactly when this build has the backup route.
    has_backup = page.evaluate("async () => (await (await fetch('/api/v1/state')).json()).features")
    block = page.locator("#ov-backup-block")
    if has_backup["backup"]:
        expect(block).to_be_visible()
    else:
        expect(block).to_be_hidden()
    page.goto("/print")
    expect(page.locator("h1")).to_have_text(VILLAGE)
    expect(page.locator("html")).to_have_attribute("lang", "vi")
    address = f"{rig.url}/"
    expect(page.locator(".web .address")).to_have_text(address)
    wifi = page.locator(".qr-card.wifi")
    expect(wifi).to_have_count(1)
    expect(wifi).to_have_attribute("data-ssid", HOTSPOT_SSID)
    expect(wifi.locator("h2")).to_have_text("Wifi nhà văn hóa")
    assert wifi_payload(HOTSPOT_SSID) == "WIFI:S:Wifi NVH\\;Thử;T:nopass;;"

    def drawn(data: str) -> str:
        return str(segno.make(data, error="m", micro=False).svg_data_uri(scale=8, border=4))

    assert page.locator(".web img").get_attribute("src") == drawn(address)
    assert wifi.locator("img").get_attribute("src") == drawn(wifi_payload(HOTSPOT_SSID))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pdf = page.pdf(path=str(SCREENSHOTS / "vi-print.pdf"), format="A4")
    assert len(re.findall(rb"/Type\s*/Page[^s]", pdf)) == 1, "the sheet is one A4 page"
    phone.shot("vi-360-print")


def test_wifi_payload_escapes_what_the_format_reserves() -> None:
    """Backslash, semicolon, comma, double quote and colon in a name are escaped."""
    assert wifi_payload('a\\b;c,d"e:f') == 'WIFI:S:a\\\\b\\;c\\,d\\"e\\:f;T:nopass;;'
    assert wifi_payload("Wifi xã") == "WIFI:S:Wifi xã;T:nopass;;"


def test_schedules_take_vietnamese_words_and_mark_the_wrong_row(
    browser: Browser, phone: PhonePage, rig: WebRig
) -> None:
    """ "Bật lúc hoàng hôn, tắt lúc 05:00" is one row that ends the next morning and is
    saved as typed; a wrong time marks its own row in red with the reason in words (rows
    counted from 1, never a pattern), and the answer is next to the save button."""
    page = log_in(phone, rig)
    go(page, "schedules")
    rows = page.locator("#sched-relays article.sched-row")
    expect(rows.first).to_be_visible(timeout=LIVE_S)
    before = rows.count()
    page.click("#sched-add-relay")
    night = rows.nth(before)
    night.locator("select[data-field=relay]").select_option("road")
    night.locator("input[data-field=on]").fill("hoàng hôn")
    night.locator("input[data-field=off]").fill("05:00")
    expect(night.locator(".overnight")).to_have_text("tắt vào sáng hôm sau")
    page.click("#sched-save")
    expect(page.locator("#sched-reply")).to_have_text("Đã thực hiện", timeout=LIVE_S)
    phone.shot("vi-360-schedules-saved")

    fresh = open_phone(browser, rig)
    try:
        other = log_in(fresh, rig)
        go(other, "schedules")
        saved = other.locator("#sched-relays article.sched-row")
        expect(saved).to_have_count(before + 1, timeout=LIVE_S)
        expect(saved.nth(before).locator("input[data-field=on]")).to_have_value("hoàng hôn")
        expect(saved.nth(before).locator("input[data-field=off]")).to_have_value("05:00")
        expect(saved.nth(before).locator(".overnight")).to_be_visible()
    finally:
        fresh.page.context.close()

    page.click("#sched-add-relay")
    wrong = rows.nth(before + 1)
    wrong.locator("select[data-field=relay]").select_option("yard")
    wrong.locator("input[data-field=on]").fill("06:00")
    wrong.locator("input[data-field=off]").fill("25:99")
    page.click("#sched-save")
    reply = page.locator("#sched-reply")
    expect(reply).to_have_attribute("data-status", "rejected", timeout=LIVE_S)
    expect(reply).to_have_text(f"Bị từ chối: Dòng {before + 2}: giờ tắt: " + _TIME_RULE)
    expect(wrong).to_have_class(re.compile(r"\binvalid\b"))
    expect(wrong.locator(".row-error")).to_have_text("Dòng này có lỗi: giờ tắt: " + _TIME_RULE)
    expect(wrong.locator("input[data-field=off]")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#sched-relays .sched-row.invalid")).to_have_count(1)
    assert_near(page, page.locator("#sched-save"), reply)
    phone.shot("vi-360-schedules-refused")
    page.click("#sched-revert")
    expect(page.locator("#sched-relays .sched-row.invalid")).to_have_count(0)

    # The events page says why as well, from the refusal's detail: the row and the rule.
    go(page, "events")
    refused = page.locator("#ev-list li.ev").filter(has_text="bị từ chối — ")
    expect(refused.first).to_contain_text(
        f"bị từ chối — Dòng {before + 2}: giờ tắt: " + _TIME_RULE, timeout=LIVE_S
    )


_TIME_RULE = "giờ phải dạng 18:30, hoặc hoàng hôn / bình minh ± phút"


def test_clip_library_names_listening_progress_and_delete(
    phone: PhonePage, rig: WebRig, tmp_path: Path
) -> None:
    """A clip uploaded as "Bản tin sáng" is listed and offered by that name (its id is
    ban-tin-sang), with a progress bar while it goes up; the phone can listen to it (the
    audio route needs the login), free space is shown, and it can be deleted (bundled
    clips cannot)."""
    page = log_in(phone, rig)
    go(page, "pa")
    page.evaluate(  # remember the highest value the progress bar was given
        """() => {
            window.progressSeen = 0;
            const bar = document.getElementById('pa-upload-progress');
            const own = Object.getOwnPropertyDescriptor(HTMLProgressElement.prototype, 'value');
            Object.defineProperty(bar, 'value', {
                get() { return own.get.call(this); },
                set(v) {
                    window.progressSeen = Math.max(window.progressSeen, v);
                    own.set.call(this, v);
                },
            });
        }"""
    )
    page.fill("#pa-upload-name", "Bản tin sáng")
    page.set_input_files("#pa-upload-file", str(tone_wav(tmp_path / "sang.wav", 2.0)))
    expect(page.locator("#pa-upload-chosen")).to_have_text("sang.wav")
    page.click("#pa-upload")
    reply = page.locator("#pa-upload-reply")
    expect(reply).to_have_text("Đã lưu bản tin «Bản tin sáng».", timeout=LIVE_S)
    assert page.evaluate("window.progressSeen") == 100
    item = page.locator("#pa-clips li[data-clip=ban-tin-sang]")
    expect(item.locator(".clip-label")).to_have_text("Bản tin sáng")
    expect(page.locator("#pa-clip option[value=ban-tin-sang]")).to_have_text("Bản tin sáng")
    expect(page.locator("#pa-free")).to_have_text(re.compile(r"^Còn trống .+ trên thẻ nhớ\.$"))

    src = item.locator("audio").get_attribute("src")
    assert src == "/api/v1/clips/ban-tin-sang/audio"
    heard = page.evaluate(
        """async (src) => {
            const response = await fetch(src);
            const body = await response.arrayBuffer();
            return [response.status, response.headers.get('content-type'), body.byteLength];
        }""",
        src,
    )
    assert heard[0] == 200
    assert heard[1] == "audio/wav"
    assert heard[2] > 60_000
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(rig.url + src, timeout=5)  # noqa: S310
    assert refused.value.code == 401
    expect(page.locator("#pa-clips li[data-clip=test-tone] .clip-delete")).to_have_count(0)
    phone.shot("vi-360-pa-library")

    item.locator(".clip-delete").click()
    expect(page.locator("#confirm-text")).to_contain_text("Bản tin sáng")
    page.click("#confirm-ok")
    expect(reply).to_have_text("Đã xóa bản tin «Bản tin sáng».", timeout=LIVE_S)
    expect(item).to_have_count(0)
    expect(page.locator("#pa-clip option[value=ban-tin-sang]")).to_have_count(0)


def _last_good(text: str | bytes) -> str | bytes:
    """A live message as a daemon on its last good configuration would send it."""
    message = json.loads(text)
    system = None
    if message.get("kind") == "hello":
        system = message["state"].setdefault("system", {})
    elif message.get("kind") == "state" and message.get("component") == "system":
        system = message["snapshot"]
    if system is None:
        return text
    system["config_status"] = "last_good"
    system["config_problems"] = [{"key": "relays.yard.pin", "message": "pin 99 does not exist"}]
    return json.dumps(message)


def test_a_banner_on_every_page_when_the_config_fell_back(phone: PhonePage, rig: WebRig) -> None:
    """When the system state says config_status = last_good (the new configuration had
    errors), every page shows the red banner with the wrong key, never the English text.
    The daemon's live feed is passed through with that key added."""
    page = phone.page

    def through(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        server.on_message(lambda text: ws.send(_last_good(text)))

    page.route_web_socket(re.compile(r"/api/v1/ws$"), through)
    log_in(phone, rig)
    banner = page.locator("#banner")
    for name in PAGES:
        go(page, name)
        expect(banner).to_be_visible(timeout=LIVE_S)
        expect(banner).to_contain_text("Cấu hình mới có lỗi")
        expect(banner).to_contain_text("Mục lỗi: relays.yard.pin")
        expect(banner).not_to_contain_text("does not exist")
    phone.shot("vi-360-banner")


@pytest.mark.parametrize("lang", ["vi", "en"])
def test_screenshots_of_every_page_at_360_px(phone: PhonePage, rig: WebRig, lang: str) -> None:
    """Every page at 360x740 in both languages, nothing wider than the screen; the
    pictures are kept in build/screenshots/ for review."""
    page = log_in(phone, rig)
    if lang == "en":
        page.click("#lang-switch")
        expect(page.locator("html")).to_have_attribute("lang", "en")
    for name in PAGES:
        go(page, name)
        page.wait_for_timeout(300)
        assert page.evaluate("document.documentElement.scrollWidth") <= 360, name
        phone.shot(f"{lang}-360-{name}")
    page.click("#logout")
    expect(page.locator("#login-form")).to_be_visible()
    phone.shot(f"{lang}-360-login")
