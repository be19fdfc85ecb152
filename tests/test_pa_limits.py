"""The decode check of a stored clip is bounded: rate, channels, duration and time.

A few kilobytes of FLAC can hold hours of 8-channel silence at 384 kHz; decoding that
to check it would keep a Pi busy for many minutes. These files are generated here
(silence compresses to almost nothing) and must be refused quickly, each with its own
error code, leaving nothing behind in the store.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from gateway.pa.clips import ClipError, ClipStore
from gateway.pa.decode import MAX_CHANNELS, MAX_RATE, AudioFormat, DecodeError, open_clip, probe

_TOTAL_SAMPLES_AT = 18
"""Byte offset of the 64-bit word ending in STREAMINFO's 36-bit total sample count
(``fLaC``, a 4-byte block header, then 10 bytes of STREAMINFO before it)."""


def silence_flac(path: Path, *, rate: int, channels: int, seconds: float) -> Path:
    """Silence as 16-bit FLAC, written a second at a time."""
    second = np.zeros((rate, channels), dtype=np.int16)
    whole, rest = divmod(round(seconds * rate), rate)
    with sf.SoundFile(
        str(path), "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16"
    ) as handle:
        for _ in range(whole):
            handle.write(second)
        handle.write(second[:rest])
    return path


def declare_frames(path: Path, total: int) -> Path:
    """Rewrite the FLAC's STREAMINFO to announce ``total`` frames (0: unknown)."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC"
    word = int.from_bytes(data[_TOTAL_SAMPLES_AT : _TOTAL_SAMPLES_AT + 8], "big")
    word = (word & ~((1 << 36) - 1)) | total
    data[_TOTAL_SAMPLES_AT : _TOTAL_SAMPLES_AT + 8] = word.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def refused(path: Path, **limits: float) -> tuple[str, str, float]:
    """(error code, message, seconds taken) of probe() refusing ``path``."""
    started = time.monotonic()
    with pytest.raises(DecodeError) as caught:
        probe(path, **limits)  # type: ignore[arg-type]
    return caught.value.key, str(caught.value), time.monotonic() - started


def test_a_384_khz_8_channel_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    """The issue's bomb: 384 kHz by 8 channels of silence, 30 s in 100 KB (half an hour
    would be 6 MB and minutes of decoding on a Pi). Refused before decoding, as
    bad_audio naming the rate, both when stored and if it is ever played."""
    bomb = silence_flac(tmp_path / "bomb.flac", rate=384_000, channels=8, seconds=30)
    assert bomb.stat().st_size < 200_000
    key, message, took = refused(bomb)
    assert key == "bad_audio"
    assert "384000 Hz" in message
    assert f"{MAX_RATE // 1000} kHz" in message
    assert took < 0.5
    with pytest.raises(DecodeError, match="384000 Hz"):
        open_clip(bomb, AudioFormat())


def test_more_than_8_channels_are_refused_from_the_header(tmp_path: Path) -> None:
    """Nine channels at an ordinary rate (a WAV: FLAC stops at 8): refused before
    decoding (bad_audio)."""
    wide = tmp_path / "wide.wav"
    sf.write(str(wide), np.zeros((48_000, MAX_CHANNELS + 1)), 48_000, subtype="PCM_16")
    key, message, _ = refused(wide)
    assert key == "bad_audio"
    assert "9 channels" in message


def test_hours_announced_in_the_header_are_too_long_at_once(tmp_path: Path) -> None:
    """A 2-second FLAC whose STREAMINFO announces 10 hours: too_long, nothing decoded."""
    liar = declare_frames(
        silence_flac(tmp_path / "liar.flac", rate=48_000, channels=2, seconds=2),
        48_000 * 3600 * 10,
    )
    key, message, took = refused(liar)
    assert key == "too_long"
    assert "36000 s" in message
    assert took < 0.5


@pytest.mark.parametrize("kind", ["flac-without-a-count", "mp3"])
def test_a_clip_that_decodes_past_the_cap_is_too_long(tmp_path: Path, kind: str) -> None:
    """Without an exact count in the header (a FLAC with 0 = unknown, an MP3 whose count
    is a guess) the cap is checked while decoding: the check stops just past it."""
    if kind == "mp3":
        path = tmp_path / "long.mp3"
        sf.write(str(path), np.zeros((48_000 * 4, 1)), 48_000, format="MP3")
    else:
        path = declare_frames(
            silence_flac(tmp_path / "long.flac", rate=48_000, channels=2, seconds=4), 0
        )
    key, message, _ = refused(path, max_duration_s=2.5)
    assert key == "too_long"
    assert "at most 2.5 s" in message
    assert probe(path, max_duration_s=5)[1] == pytest.approx(4, abs=0.1)


def test_decoding_stops_at_its_deadline(tmp_path: Path) -> None:
    """Within the rate, channel and duration limits but slow to decode (192 kHz by 8
    channels, no count in the header): decode_timeout, promptly after the deadline."""
    slow = declare_frames(
        silence_flac(tmp_path / "slow.flac", rate=MAX_RATE, channels=MAX_CHANNELS, seconds=120),
        0,
    )
    key, message, took = refused(slow, timeout_s=0.1)
    assert key == "decode_timeout"
    assert "0.1 s" in message
    assert took < 0.6


def test_a_called_off_check_stops_its_thread(tmp_path: Path) -> None:
    """``stop`` (set when the command waiting for the check is cancelled) ends the
    decoding in its thread at the next block."""
    slow = declare_frames(
        silence_flac(tmp_path / "slow.flac", rate=MAX_RATE, channels=MAX_CHANNELS, seconds=120),
        0,
    )
    stop = threading.Event()
    errors: list[str] = []

    def check() -> None:
        try:
            probe(slow, stop=stop)
        except DecodeError as exc:
            errors.append(exc.key)

    thread = threading.Thread(target=check)
    thread.start()
    time.sleep(0.05)
    stopped = time.monotonic()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - stopped < 0.5
    assert errors == ["cancelled"]


async def test_the_store_refuses_them_and_keeps_the_old_clip(tmp_path: Path) -> None:
    """Uploads over the limits get their codes; the clip of that name stays as it was
    and no temporary file is left."""
    root = tmp_path / "clips"
    store = ClipStore(root, max_duration_s=100, probe_timeout_s=0.1)
    good = silence_flac(tmp_path / "good.flac", rate=48_000, channels=1, seconds=1)
    before = await store.add("news", good.read_bytes())
    cases = {
        "bad_audio": silence_flac(tmp_path / "b.flac", rate=384_000, channels=8, seconds=2),
        "too_long": silence_flac(tmp_path / "l.flac", rate=8_000, channels=1, seconds=101),
        "decode_timeout": declare_frames(
            silence_flac(tmp_path / "s.flac", rate=MAX_RATE, channels=8, seconds=99), 0
        ),
    }
    for code, path in cases.items():
        with pytest.raises(ClipError) as caught:
            await store.add("news", path.read_bytes())
        assert caught.value.key == code
        assert "news" in str(caught.value)
        assert store.info("news") == before
        assert sorted(p.name for p in root.iterdir()) == ["index.json", "news.flac", "news.label"]


async def test_a_cancelled_upload_leaves_nothing(tmp_path: Path) -> None:
    """The web request goes away mid-check: the temporary file is removed."""
    root = tmp_path / "clips"
    store = ClipStore(root)
    slow = declare_frames(
        silence_flac(tmp_path / "s.flac", rate=MAX_RATE, channels=8, seconds=60), 0
    ).read_bytes()
    task = asyncio.create_task(store.add("news", slow))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(p.name for p in root.iterdir()) == []
