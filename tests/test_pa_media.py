"""PA media: decoding files and live streams to the output format, and the clip store.

Test audio is generated here with soundfile itself (the decoder library), never
downloaded; live streams come from aiohttp servers on 127.0.0.1 started by the tests,
which the streams may reach because their guard allows that address (``pa.fetch_allow``).
Frequency is measured by interpolated zero crossings, level as RMS relative to a full
scale sine, both on the middle of the signal so fades and codec delay do not count.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf
from aiohttp import web

from gateway.pa.clips import BUNDLED, ClipError, ClipStore, normalise_name
from gateway.pa.decode import (
    AudioFormat,
    DecodeError,
    PcmSource,
    mpeg_sync,
    open_clip,
    open_stream,
    probe,
)
from gateway.pa.fetch import AddressGuard

OUT = AudioFormat(48_000, 2)
LOOPBACK = AddressGuard(["127.0.0.1"])
TONE_HZ = 440.0
TONE_AMP = 0.5  # -6.02 dBFS
Wave = npt.NDArray[np.float64]

FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "ogg": ("OGG", "VORBIS"),
    "flac": ("FLAC", "PCM_16"),
}


def sine(rate: int, seconds: float, freq: float = TONE_HZ, amp: float = TONE_AMP) -> Wave:
    t = np.arange(int(rate * seconds)) / rate
    wave: Wave = amp * np.sin(2 * np.pi * freq * t)
    return wave


def write_tone(path: Path, ext: str, *, rate: int = 44_100, seconds: float = 3.0) -> Path:
    container, subtype = FORMATS[ext]
    sf.write(str(path), sine(rate, seconds), rate, format=container, subtype=subtype)
    return path


def read_all(source: PcmSource, block: int = 4096) -> bytes:
    out = bytearray()
    while chunk := source.read(block):
        out += chunk
    source.close()
    return bytes(out)


def channels(pcm: bytes, fmt: AudioFormat = OUT) -> Wave:
    """(frames, channels) floats from 16-bit PCM."""
    data: Wave = np.frombuffer(pcm, dtype="<i2").reshape(-1, fmt.channels) / 32767.0
    return data


def frequency(x: Wave, rate: int) -> float:
    """Rising zero crossings, interpolated between samples, over the span they cover."""
    rising = np.nonzero((x[:-1] < 0) & (x[1:] >= 0))[0]
    exact = rising + (-x[rising]) / (x[rising + 1] - x[rising])
    return float((len(exact) - 1) / ((exact[-1] - exact[0]) / rate))


def level_db(x: Wave, amp: float = TONE_AMP) -> float:
    """Level of a sine relative to the generated amplitude, in dB."""
    return 20 * math.log10(float(np.sqrt(np.mean(x**2))) * math.sqrt(2) / amp)


def middle(x: Wave) -> Wave:
    quarter = len(x) // 4
    return x[quarter : len(x) - quarter]


def assert_tone(pcm: bytes, fmt: AudioFormat = OUT, *, seconds: float | None = None) -> None:
    data = channels(pcm, fmt)
    assert len(data) > fmt.rate // 2, "less than half a second of audio"
    if seconds is not None:
        assert abs(len(data) / fmt.rate - seconds) < 0.05 * seconds
    for c in range(fmt.channels):
        x = middle(data[:, c])
        assert frequency(x, fmt.rate) == pytest.approx(TONE_HZ, rel=0.01)
        assert abs(level_db(x)) < 1.0


# --- files --------------------------------------------------------------------------


@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_tone_comes_out_at_440_hz_and_its_level(tmp_path: Path, ext: str) -> None:
    """A 44.1 kHz mono 440 Hz tone in each format becomes 48 kHz stereo at 440 Hz, same level."""
    path = write_tone(tmp_path / f"tone.{ext}", ext)
    assert_tone(read_all(open_clip(path, OUT)), seconds=3.0)


def test_file_is_recognised_by_content_not_by_name(tmp_path: Path) -> None:
    """An OGG named .wav and an MP3 without extension still decode."""
    ogg = write_tone(tmp_path / "really-ogg.wav", "ogg")
    mp3 = tmp_path / "noext"
    mp3.write_bytes(write_tone(tmp_path / "t.mp3", "mp3").read_bytes())
    assert_tone(read_all(open_clip(ogg, OUT)))
    assert_tone(read_all(open_clip(mp3, OUT)))


def test_stereo_96k_to_mono_48k_keeps_tone_and_removes_ultrasound(tmp_path: Path) -> None:
    """Downsampling filters what would fold back: 30 kHz must not come out as 18 kHz."""
    rate = 96_000
    wave = sine(rate, 2.0) + sine(rate, 2.0, freq=30_000, amp=0.3)
    path = tmp_path / "hi.wav"
    sf.write(str(path), np.stack([wave, wave], axis=1) * 0.6, rate, subtype="FLOAT")
    mono = AudioFormat(48_000, 1)
    x = middle(channels(read_all(open_clip(path, mono)), mono)[:, 0])
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    bins = np.fft.rfftfreq(len(x), 1 / mono.rate)
    tone = spectrum[np.argmin(np.abs(bins - TONE_HZ))]
    alias = spectrum[np.argmin(np.abs(bins - 18_000))]
    assert bins[np.argmax(spectrum)] == pytest.approx(TONE_HZ, rel=0.01)
    assert 20 * math.log10(alias / tone) < -30


def test_bundled_sounds_are_short_48k_mono_16bit() -> None:
    """The committed chime and test tone are what audio/make_sounds.py promises."""
    store_dir = Path(__file__).parent.parent / "gateway" / "pa" / "sounds"
    for name in BUNDLED:
        info = sf.info(str(store_dir / f"{name}.wav"))
        assert (info.samplerate, info.channels, info.subtype) == (48_000, 1, "PCM_16")
        assert 0.5 < info.duration <= 5.0
    tone = channels(read_all(open_clip(store_dir / "test-tone.wav", OUT)))
    assert frequency(middle(tone[:, 0]), OUT.rate) == pytest.approx(440, rel=0.01)


def wav_header(tag: int, bits: int, data: bytes, rate: int = 8000, chans: int = 1) -> bytes:
    fmt = struct.pack(
        "<HHIIHH", tag, chans, rate, rate * chans * bits // 8, chans * bits // 8, bits
    )
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def bad_files(tmp_path: Path) -> dict[str, Path]:
    """Each bad input of the issue that a file can be, by a short name."""
    files = {}
    files["text-renamed-mp3"] = tmp_path / "notes.mp3"
    files["text-renamed-mp3"].write_text("Meeting at the cultural house at 7 pm.\n" * 200)
    files["64-bit-int-wav"] = tmp_path / "int64.wav"
    files["64-bit-int-wav"].write_bytes(wav_header(1, 64, bytes(8 * 8000)))
    files["zero-seconds-wav"] = tmp_path / "empty.wav"
    sf.write(str(files["zero-seconds-wav"]), np.zeros(0), 48_000, subtype="PCM_16")
    mp3 = write_tone(tmp_path / "whole.mp3", "mp3").read_bytes()
    files["mp3-cut-in-its-first-frame"] = tmp_path / "stub.mp3"
    files["mp3-cut-in-its-first-frame"].write_bytes(mp3[:200])
    files["empty-file"] = tmp_path / "nothing.ogg"
    files["empty-file"].write_bytes(b"")
    return files


@pytest.mark.parametrize(
    "case",
    [
        "text-renamed-mp3",
        "64-bit-int-wav",
        "zero-seconds-wav",
        "mp3-cut-in-its-first-frame",
        "empty-file",
    ],
)
def test_bad_file_is_refused_at_open(tmp_path: Path, case: str) -> None:
    """Not audio, an unsupported sample format (64-bit integer PCM), or no audio: bad_audio."""
    path = bad_files(tmp_path)[case]
    with pytest.raises(DecodeError) as caught:
        open_clip(path, OUT)
    assert caught.value.key == "bad_audio"
    assert path.name in str(caught.value)
    with pytest.raises(DecodeError):
        probe(path)


def test_truncated_mp3_ends_early_on_play_and_is_refused_when_stored(tmp_path: Path) -> None:
    """Cut in the middle: playing stops at the cut (no crash, no noise); the store says no."""
    whole = write_tone(tmp_path / "whole.mp3", "mp3").read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(whole[: len(whole) // 2])
    pcm = read_all(open_clip(cut, OUT))
    assert len(pcm) // OUT.frame_bytes < 2.0 * OUT.rate
    assert_tone(pcm)
    with pytest.raises(DecodeError, match="truncated") as caught:
        probe(cut)
    assert caught.value.key == "bad_audio"


def test_close_from_another_thread_ends_reads(tmp_path: Path) -> None:
    """A preemption closes the source from another thread: the next read returns b""."""
    source = open_clip(write_tone(tmp_path / "t.flac", "flac"), OUT)
    assert source.read(100)
    closer = threading.Thread(target=source.close)
    closer.start()
    closer.join(timeout=5)
    assert source.read(100) == b""
    source.close()  # idempotent


# --- clip store ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "", "a" * 65, "<img src=x>", "hello world", "x.mp3", "-x"]
)
def test_bad_clip_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ClipError) as caught:
        normalise_name(name)
    assert caught.value.key == "bad_args"


def test_names_are_lowercased_and_64_chars_allowed() -> None:
    assert normalise_name("Morning_News-2") == "morning_news-2"
    assert normalise_name("a" * 64) == "a" * 64


async def test_store_adds_checks_and_remembers_clips(tmp_path: Path) -> None:
    """An MP3 uploaded under any name is stored by content, with sha256 and duration."""
    root = tmp_path / "clips"
    store = ClipStore(root)
    data = write_tone(tmp_path / "upload.bin", "mp3").read_bytes()
    info = await store.add("Welcome", data)
    assert (info.name, info.format, info.bytes) == ("welcome", "mp3", len(data))
    assert info.duration_s == pytest.approx(3.0, abs=0.05)
    assert store.path("WELCOME") == root / "welcome.mp3"
    assert (root / "welcome.mp3").read_bytes() == data
    index = json.loads((root / "index.json").read_text())
    assert index["welcome"]["sha256"] == info.sha256
    assert [c.name for c in store.list()] == [*BUNDLED, "welcome"]
    assert_tone(read_all(open_clip(store.path("welcome"), OUT)))
    # A restart reads the index back; a lost index is rebuilt from the files.
    assert ClipStore(root).info("welcome") == info
    (root / "index.json").unlink()
    assert ClipStore(root).info("welcome") == info
    assert info.label == "Welcome"
    assert sorted(p.name for p in root.iterdir()) == ["index.json", "welcome.label", "welcome.mp3"]


async def test_store_replaces_a_clip_in_another_format(tmp_path: Path) -> None:
    store = ClipStore(tmp_path / "clips")
    await store.add("news", write_tone(tmp_path / "a", "mp3").read_bytes())
    info = await store.add("news", write_tone(tmp_path / "b", "flac").read_bytes())
    assert info.format == "flac"
    assert store.path("news").name == "news.flac"
    assert not (tmp_path / "clips" / "news.mp3").exists()


async def test_bundled_clips_are_present_and_reserved(tmp_path: Path) -> None:
    store = ClipStore(tmp_path / "clips")
    for name in BUNDLED:
        info = store.info(name)
        assert info.bundled
        assert info.format == "wav"
        assert store.path(name).exists()
    with pytest.raises(ClipError) as caught:
        await store.add("chime", write_tone(tmp_path / "a", "wav").read_bytes())
    assert caught.value.key == "bad_args"


async def test_store_refuses_bad_clips_and_loses_nothing(tmp_path: Path) -> None:
    """Each bad upload gets its error code; the clip already stored under the name stays."""
    root = tmp_path / "clips"
    store = ClipStore(root, max_bytes=200_000)
    good = write_tone(tmp_path / "good", "mp3").read_bytes()
    before = await store.add("news", good)
    whole = write_tone(tmp_path / "whole.mp3", "mp3").read_bytes()
    cases: list[tuple[bytes, str]] = [
        (data.read_bytes(), "bad_audio")
        for data in bad_files(tmp_path).values()
        if data.stat().st_size > 0
    ]
    cases += [
        (b"", "bad_audio"),
        (whole[: len(whole) // 2], "bad_audio"),  # truncated MP3
        (bytes(200_001), "too_large"),  # bigger than the cap
    ]
    for data, key in cases:
        with pytest.raises(ClipError) as caught:
            await store.add("news", data)
        assert caught.value.key == key, caught.value
    with pytest.raises(ClipError) as unknown:
        store.path("no-such-clip")
    assert unknown.value.key == "unknown_target"
    assert store.info("news") == before
    assert store.path("news").read_bytes() == good
    assert sorted(p.name for p in root.iterdir()) == ["index.json", "news.label", "news.mp3"]


# --- live streams -------------------------------------------------------------------


@dataclass
class StreamServer:
    """An aiohttp server on 127.0.0.1 whose behaviour each test scripts per connection."""

    behaviours: list[str]
    """One per connection (the last repeats): good, stall, garbage, close, 404, hang,
    or ``redirect:URL``."""
    payload: bytes
    chunk_s: float = 0.05
    url: str = ""
    connections: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        behaviour = self.behaviours[min(self.connections, len(self.behaviours) - 1)]
        self.connections += 1
        if behaviour == "404":
            return web.Response(status=404, text="no such mount")
        if behaviour.startswith("redirect:"):
            raise web.HTTPFound(behaviour.removeprefix("redirect:"))
        if behaviour == "hang":  # accepts, never answers
            await self.release.wait()
            return web.Response(status=503)
        response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await response.prepare(request)
        data = self.payload
        if behaviour == "garbage":
            data = np.random.default_rng(1).integers(0, 256, 400_000, dtype=np.uint8).tobytes()
        step = 4000
        limit = len(data) if behaviour == "good" else len(data) // 3
        for start in range(0, limit, step):
            await response.write(data[start : start + step])
            await asyncio.sleep(self.chunk_s)
        if behaviour == "stall":  # connected, sends nothing more
            await self.release.wait()
        return response  # "close" and "good" end the body here


ServeFn = Callable[..., Awaitable[StreamServer]]


@pytest.fixture
async def serve() -> AsyncIterator[ServeFn]:
    runners: list[tuple[web.AppRunner, StreamServer]] = []

    async def start(behaviours: list[str], payload: bytes, **kw: float) -> StreamServer:
        server = StreamServer(behaviours, payload, **kw)  # type: ignore[arg-type]
        app = web.Application()
        app.router.add_get("/live", server.handle)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        server.url = f"http://{host}:{port}/live"
        runners.append((runner, server))
        return server

    yield start
    for runner, server in runners:
        server.release.set()
        await runner.cleanup()


def long_tone(tmp_path: Path, ext: str, seconds: float = 20.0) -> bytes:
    return write_tone(tmp_path / f"live.{ext}", ext, seconds=seconds).read_bytes()


def collect(source: PcmSource, seconds: float) -> bytes:
    out = bytearray()
    want = int(seconds * OUT.rate) * OUT.frame_bytes
    while len(out) < want:
        out += source.read(4800)
    return bytes(out)


@pytest.mark.parametrize("ext", ["mp3", "ogg"])
async def test_live_stream_decodes_to_the_tone(tmp_path: Path, serve: ServeFn, ext: str) -> None:
    payload = long_tone(tmp_path, ext)
    if ext == "mp3":
        payload = payload[1001:]  # an Icecast listener joins mid-frame
        assert mpeg_sync(payload) is not None
    server = await serve(["good"], payload, chunk_s=0.01)
    source = open_stream(server.url, OUT, guard=LOOPBACK, connect_timeout_s=5, give_up_after_s=30)
    try:
        pcm = await asyncio.to_thread(collect, source, 4.0)
    finally:
        source.close()
    assert_tone(pcm[OUT.rate * OUT.frame_bytes // 2 :])
    assert source.reconnects == 0


async def test_live_stream_reconnects_after_a_drop(tmp_path: Path, serve: ServeFn) -> None:
    """The server closes mid-stream, then serves again: audio goes on, one reconnect."""
    server = await serve(["close", "good"], long_tone(tmp_path, "mp3"), chunk_s=0.01)
    source = open_stream(server.url, OUT, guard=LOOPBACK, give_up_after_s=30)
    try:
        pcm = await asyncio.to_thread(collect, source, 10.0)
    finally:
        source.close()
    assert server.connections == 2
    assert source.reconnects == 1
    assert_tone(pcm)


@pytest.mark.parametrize("behaviours", [["stall"], ["close", "404"], ["garbage"], ["hang"]])
async def test_dead_stream_fails_clearly(
    tmp_path: Path, serve: ServeFn, behaviours: list[str]
) -> None:
    """Stops sending, closes for good, sends garbage, never answers: stream_failed, not silence.

    Between attempts the source retries (backoff starts at 1 s), so more than one
    connection is seen before it gives up.
    """
    server = await serve(behaviours, long_tone(tmp_path, "mp3"), chunk_s=0.01)
    source = open_stream(
        server.url,
        OUT,
        connect_timeout_s=1.0,
        give_up_after_s=4.0,
        max_buffer_s=1.0,
        guard=LOOPBACK,
    )

    def drain() -> tuple[int, DecodeError]:
        got = 0
        try:
            while True:
                got += len(source.read(4800))
        except DecodeError as exc:
            return got, exc

    try:
        _, error = await asyncio.wait_for(asyncio.to_thread(drain), timeout=60)
        with pytest.raises(DecodeError):
            source.read(10)  # stays failed
    finally:
        source.close()
    assert error.key == "stream_failed"
    assert "stream gone" in str(error)
    assert server.connections >= 2
    assert source.read(10) == b""  # closed now


async def test_close_aborts_a_blocked_read_promptly(tmp_path: Path, serve: ServeFn) -> None:
    """The player preempts a stream that is waiting for data: read() returns within 1 s."""
    server = await serve(["hang"], b"")
    source = open_stream(server.url, OUT, guard=LOOPBACK, connect_timeout_s=10, give_up_after_s=60)
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(source.read(4800)))
    reader.start()
    await asyncio.sleep(0.5)
    started = time.monotonic()
    source.close()
    await asyncio.to_thread(reader.join, 5)
    assert result == [b""]
    assert time.monotonic() - started < 1.0


async def test_stream_buffer_stays_bounded(tmp_path: Path, serve: ServeFn) -> None:
    """A fast server and a player that does not read: at most max_buffer_s is held."""
    server = await serve(["good"], long_tone(tmp_path, "ogg", seconds=30), chunk_s=0.0)
    source = open_stream(server.url, OUT, guard=LOOPBACK, max_buffer_s=2.0)
    try:
        assert await asyncio.to_thread(source.read, 10)
        await asyncio.sleep(2.0)
        assert 1.0 < source.buffered_s <= 2.0
    finally:
        source.close()


def test_stream_url_must_be_http() -> None:
    with pytest.raises(DecodeError) as caught:
        open_stream("file:///etc/passwd", OUT)
    assert caught.value.key == "stream_failed"


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address a stream connects to; anything but 127.0.0.1 is refused here, so a
    broken guard cannot reach out of the machine."""
    real = socket.create_connection
    seen: list[str] = []

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        seen.append(address[0])
        if address[0] != "127.0.0.1":
            raise ConnectionRefusedError(f"the test refused a connection to {address[0]}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return seen


def drain_error(source: PcmSource) -> DecodeError:
    try:
        while True:
            source.read(4800)
    except DecodeError as exc:
        return exc


async def test_stream_to_loopback_is_refused_without_fetch_allow(
    tmp_path: Path, serve: ServeFn, connections: list[str]
) -> None:
    """No guard given: public addresses only. By address the stream is refused at
    open; by a name that resolves to loopback it fails with ``forbidden`` as soon as it
    is resolved, and does not try again (no GET repeated for a minute)."""
    server = await serve(["good"], long_tone(tmp_path, "mp3"), chunk_s=0.01)
    with pytest.raises(DecodeError) as caught:
        open_stream(server.url, OUT)
    assert caught.value.key == "forbidden"
    started = time.monotonic()
    source = open_stream(server.url.replace("127.0.0.1", "localhost"), OUT, give_up_after_s=60)
    try:
        error = await asyncio.wait_for(asyncio.to_thread(drain_error, source), 10)
        await asyncio.sleep(1.5)  # a drop would be retried after 1 s
    finally:
        source.close()
    assert error.key == "forbidden"
    assert "loopback address, not in pa.fetch_allow" in str(error)
    assert time.monotonic() - started < 5
    assert (server.connections, source.reconnects, connections) == (0, 0, [])


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.2:{port}/live", "http://169.254.169.254/live", "http://[fd00::1]/live"],
)
async def test_stream_redirect_into_the_lan_is_refused(
    tmp_path: Path, serve: ServeFn, connections: list[str], target: str
) -> None:
    """The allowed server redirects elsewhere: ``forbidden`` before connecting there."""
    server = await serve([], b"")
    port = int(server.url.split(":")[2].split("/")[0])
    server.behaviours.append(f"redirect:{target.format(port=port)}")
    source = open_stream(server.url, OUT, give_up_after_s=60, guard=LOOPBACK)
    try:
        error = await asyncio.wait_for(asyncio.to_thread(drain_error, source), 10)
        await asyncio.sleep(1.5)
    finally:
        source.close()
    assert error.key == "forbidden", error
    assert (server.connections, source.reconnects) == (1, 0)
    assert connections == ["127.0.0.1"]


async def test_stream_errors_do_not_name_socket_errors(serve: ServeFn) -> None:
    """A stream that cannot connect ends with a reason that is not a socket error."""
    server = await serve(["404"], b"")
    closed = server.url.rsplit(":", 1)[0] + ":9/live"
    source = open_stream(closed, OUT, give_up_after_s=1.5, guard=LOOPBACK)
    try:
        error = await asyncio.wait_for(asyncio.to_thread(drain_error, source), 10)
    finally:
        source.close()
    assert error.key == "stream_failed"
    assert "no connection or no answer" in str(error)
    assert "Errno" not in str(error)
    assert "refused" not in str(error).lower()
