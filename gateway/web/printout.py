"""The notice-board sheet: one A4 page in Vietnamese with QR codes, printed from a phone.

A QR code opens this web page (at the address the phone that asked used, the one known to
work on the cultural house's network), and each free wifi point with an ``ssid`` in its
configuration gets a wifi QR code (the ``WIFI:`` text phone cameras understand) beside its
name. The codes are drawn here by segno (pure Python, maintained, no network) as inline
SVG data URIs, which the page's Content-Security-Policy allows (``img-src 'self' data:``);
the page's only style sheet is ``/static/print.css``.

Everything that comes from the configuration is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from html import escape

__all__ = ["WifiPoint", "render_sheet", "wifi_payload"]

_WIFI_SPECIALS = '\\;,":'
"""Characters the WIFI: format escapes with a backslash inside a field."""


@dataclass(frozen=True, slots=True)
class WifiPoint:
    """A free wifi point on the sheet: its network name and how the village calls it."""

    ssid: str
    label: str


def _escape_field(value: str) -> str:
    return "".join(f"\\{char}" if char in _WIFI_SPECIALS else char for char in value)


def wifi_payload(ssid: str) -> str:
    """The ``WIFI:`` text of an open network (no password): ``WIFI:S:<ssid>;T:nopass;;``,
    with ``\\ ; , " :`` in the name escaped by a backslash as the format requires."""
    return f"WIFI:S:{_escape_field(ssid)};T:nopass;;"


def _qr(data: str) -> str:
    """An SVG data URI of ``data`` as a QR code (medium error correction, quiet zone 4)."""
    # Imported here: the sheet is printed once in a while, and segno need not sit in the
    # daemon's memory the rest of the time (docs/development.md, footprint).
    import segno  # noqa: PLC0415

    code = segno.make(data, error="m", micro=False)
    return str(code.svg_data_uri(scale=8, border=4))


def render_sheet(*, village: str, address: str, wifi: Iterable[WifiPoint]) -> str:
    """The whole HTML page of the sheet."""
    points = list(wifi)
    cards = "\n".join(
        f"""    <section class="qr-card wifi" data-ssid="{escape(point.ssid)}">
      <img src="{_qr(wifi_payload(point.ssid))}" alt="Mã QR wifi {escape(point.ssid)}">
      <h2>{escape(point.label or point.ssid)}</h2>
      <p>Wifi miễn phí: <strong>{escape(point.ssid)}</strong></p>
      <p class="how">Mở máy ảnh điện thoại, hướng vào mã để vào wifi (không cần mật khẩu).</p>
    </section>"""
        for point in points
    )
    return f"""<!doctype html>
<html lang="vi">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{escape(village)} — bảng tin</title>
  <link rel="icon" href="/static/icon.svg" type="image/svg+xml">
  <link rel="stylesheet" href="/static/print.css">
  <script type="module" src="/static/js/print.js"></script>
</head>
<body>
  <main class="sheet">
    <button type="button" class="print-button" id="print">In trang này</button>
    <h1>{escape(village)}</h1>
    <section class="qr-card web">
      <img src="{_qr(address)}" alt="Mã QR trang điều khiển">
      <h2>Trang điều khiển đèn, loa và wifi</h2>
      <p class="address">{escape(address)}</p>
      <p class="how">Dành cho trưởng thôn và người được giao: quét mã, rồi đăng nhập bằng mật
        khẩu.</p>
    </section>
{cards}
    <p class="foot">In trang này trên giấy A4 và dán lên bảng tin của nhà văn hóa.</p>
  </main>
</body>
</html>
"""
