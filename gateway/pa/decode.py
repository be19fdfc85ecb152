"""Audio files and live HTTP streams turned into the output's PCM format.

Everything is decoded by libsndfile through ``soundfile`` (WAV, MP3, OGG Vorbis, FLAC):
it is the one decoder that installs from a small binary wheel on 64-bit Raspberry Pi OS
(docs/audio.md records the check). What the player gets is always signed 16-bit
little-endian, interleaved, at the output's rate and channel count, so the output thread
never converts anything.

Sources are *blocking* readers on purpose: the player calls them from a worker thread that
decodes ahead, never from the event loop. ``close()`` may come from any thread (a
preemption) and must never crash a read in progress, so each source serialises the two
with a lock (files) or makes ``read()`` wait on a condition that ``close()`` signals
(streams).

Live streams arrive as bytes that cannot be seeked. libsndfile reads OGG from a pipe, but
its MP3 reader seeks backwards a little while it finds frame boundaries and asks for the
file's length once; :class:`_LiveReader` keeps a window of the latest bytes for the
former and pretends the stream is very long for the latter.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import numpy as np
import numpy.typing as npt
import soundfile as sf

from gateway.log import get_logger
from gateway.pa.fetch import AddressGuard, RefusedAddressError
from gateway.pa.pcm import (
    MAX_CHANNELS,
    MAX_CLIP_S,
    MAX_RATE,
    MIN_RATE,
    PROBE_TIMEOUT_S,
    AudioFormat,
    DecodeError,
    PcmSource,
)

__all__ = [
    "MAX_CHANNELS",
    "MAX_CLIP_S",
    "MAX_RATE",
    "PROBE_TIMEOUT_S",
    "AudioFormat",
    "DecodeError",
    "PcmSource",
    "open_clip",
    "open_stream",
]

_log = get_logger("pa.decode")

Samples = npt.NDArray[np.float32]
"""Decoded audio as ``(frames, channels)`` floats in [-1, 1]."""

_BLOCK_S = 0.1
"""How much input one decode step reads: small enough for a prompt close()."""
_MAX_REDIRECTS = 5
_UNKNOWN_LENGTH = 1 << 62
"""libsndfile reports a length it cannot know as INT64_MAX."""
_FORMAT_NAMES = {"wavex": "wav", "rf64": "wav", "w64": "wav"}
"""libsndfile's container names that are still plain WAV to a user."""
_USER_AGENT = "village-gateway (PA)"


# --- conversion ---------------------------------------------------------------------


def _lowpass_taps(cutoff: float, taps: int = 63) -> Samples:
    """A Blackman-windowed sinc low-pass; ``cutoff`` as a fraction of the input rate."""
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(taps)
    normalised: Samples = (h / h.sum()).astype(np.float32)
    return normalised


class Converter:
    """Channel mapping, resampling and 16-bit conversion, one block at a time.

    Resampling is linear interpolation, which is plenty for speech and music on horn
    loudspeakers (the tests hold a tone to 1 % in frequency and 1 dB in level). Going
    down in rate (96 kHz files) first runs a windowed-sinc low-pass so that what is above
    the new Nyquist frequency does not fold back as audible whistles. The state (the last
    input frame, the fractional read position, the filter's history) carries across
    blocks, so block boundaries leave no clicks.
    """

    def __init__(self, in_rate: int, in_channels: int, fmt: AudioFormat) -> None:
        self.fmt = fmt
        self._in_channels = in_channels
        self._step = in_rate / fmt.rate
        self._pos = 0.0
        self._prev: Samples = np.zeros((0, fmt.channels), dtype=np.float32)
        self._taps: Samples | None = None
        self._history: Samples = np.zeros((0, fmt.channels), dtype=np.float32)
        if in_rate > fmt.rate:
            self._taps = _lowpass_taps(0.45 * fmt.rate / in_rate)
            self._history = np.zeros((len(self._taps) - 1, fmt.channels), dtype=np.float32)

    def convert(self, block: Samples) -> bytes:
        """PCM bytes for ``block`` (``(frames, in_channels)`` floats)."""
        mapped = self._map_channels(block)
        if self._taps is not None:
            mapped = self._filter(mapped, self._taps)
        if self._step != 1.0:
            mapped = self._resample(mapped)
        pcm = np.clip(np.rint(mapped * 32767.0), -32768, 32767).astype("<i2")
        return bytes(pcm.tobytes())

    def _map_channels(self, block: Samples) -> Samples:
        out = self.fmt.channels
        if block.ndim == 1:
            block = block[:, np.newaxis]
        if block.shape[1] == out:
            return block
        if out == 1:
            mixed: Samples = block.mean(axis=1, keepdims=True, dtype=np.float32)
            return mixed
        index = [i % block.shape[1] for i in range(out)]  # mono is copied to every channel
        return block[:, index]

    def _filter(self, block: Samples, taps: Samples) -> Samples:
        joined = np.concatenate([self._history, block])
        self._history = joined[len(joined) - (len(taps) - 1) :]
        columns = [np.convolve(joined[:, c], taps, mode="valid") for c in range(joined.shape[1])]
        return np.stack(columns, axis=1).astype(np.float32)

    def _resample(self, block: Samples) -> Samples:
        joined = np.concatenate([self._prev, block])
        last = len(joined) - 1
        if last < 0 or self._pos > last:
            self._pos -= len(block)
            self._prev = joined[-1:] if len(joined) else self._prev
            return np.zeros((0, self.fmt.channels), dtype=np.float32)
        count = int((last - self._pos) // self._step) + 1
        at = self._pos + np.arange(count) * self._step
        left = np.minimum(at.astype(np.int64), last)
        right = np.minimum(left + 1, last)
        frac = (at - left).astype(np.float32)[:, np.newaxis]
        out: Samples = (joined[left] * (1.0 - frac) + joined[right] * frac).astype(np.float32)
        # The next block starts with this block's last frame at index 0.
        self._pos = self._pos + count * self._step - last
        self._prev = joined[-1:]
        return out


# --- files --------------------------------------------------------------------------


class _SequentialFile(sf.SoundFile):  # type: ignore[misc]  # soundfile is untyped
    """A SoundFile read front to back, never seeked.

    soundfile asks libsndfile for the position before every read and seeks to where it
    thinks the read ended. libsndfile's MP3 seek is not sample-exact, so MP3s read in
    blocks came out garbled (a 440 Hz tone measured 250 Hz at -10 dB) although the same
    file read in one go was right. Declaring the file unseekable skips those seeks; it
    also stops soundfile trimming reads to the header's frame count, which is only an
    estimate for MP3.
    """

    def seekable(self) -> bool:
        return False


def _reason(exc: Exception) -> str:
    """libsndfile's own words, without the file path soundfile puts in front."""
    return str(getattr(exc, "error_string", None) or exc)


def _check_info(handle: sf.SoundFile, name: str) -> None:
    """Refuse what the player cannot use even though libsndfile opened it."""
    if not MIN_RATE <= handle.samplerate <= MAX_RATE:
        raise DecodeError(
            "bad_audio",
            f"{name}: sample rate {handle.samplerate} Hz unsupported"
            f" ({MIN_RATE // 1000}-{MAX_RATE // 1000} kHz)",
        )
    if not 1 <= handle.channels <= MAX_CHANNELS:
        raise DecodeError(
            "bad_audio", f"{name}: {handle.channels} channels unsupported (1-{MAX_CHANNELS})"
        )


class ClipSource:
    """A decoded file; ``duration_s`` is what libsndfile reports (MP3: an estimate)."""

    def __init__(self, path: Path, fmt: AudioFormat) -> None:
        self.fmt = fmt
        self._lock = threading.Lock()
        self._closed = False
        self._pending = bytearray()
        self._done = False
        try:
            self._file = _SequentialFile(str(path))
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            message = f"{path.name}: not audio we can decode ({_reason(exc)})"
            raise DecodeError("bad_audio", message) from exc
        try:
            self._start(path.name)
        except BaseException:
            self._file.close()
            raise

    def _start(self, name: str) -> None:
        _check_info(self._file, name)
        self.in_rate: int = self._file.samplerate
        self.in_channels: int = self._file.channels
        self.duration_s: float = self._file.frames / self._file.samplerate
        self._converter = Converter(self.in_rate, self.in_channels, self.fmt)
        self._block = max(1, int(self.in_rate * _BLOCK_S))
        # Decode the first block now: a file that opens but holds no audio (a 0-second
        # clip, a header with nothing after it) fails here, at open.
        if not self._decode_block():
            raise DecodeError("bad_audio", f"{name}: no audio in the file (0 seconds)")

    def _decode_block(self) -> bool:
        """Append one converted block to the pending bytes; False at the end."""
        try:
            block = self._file.read(self._block, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            message = f"audio is truncated or corrupt ({_reason(exc)})"
            raise DecodeError("bad_audio", message) from exc
        if len(block) == 0:
            self._done = True
            return False
        self._pending += self._converter.convert(block)
        return True

    def read(self, frames: int) -> bytes:
        """Up to ``frames`` frames of PCM; b"" at the end or after close()."""
        want = max(0, frames) * self.fmt.frame_bytes
        with self._lock:
            while not self._closed and not self._done and len(self._pending) < want:
                self._decode_block()
            if self._closed:
                return b""
            out = bytes(self._pending[:want])
            del self._pending[:want]
            return out

    def close(self) -> None:
        """Idempotent; waits for at most one decode step of a read in another thread."""
        self._closed = True
        with self._lock:
            if not self._file.closed:
                self._file.close()
            self._pending.clear()


def open_clip(path: Path, fmt: AudioFormat) -> ClipSource:
    """Open a WAV/MP3/OGG/FLAC file, converted to ``fmt``.

    Raises DecodeError("bad_audio") at open for a non-audio file, a sample format
    libsndfile cannot decode, an unusable rate or channel count, or a 0-second clip;
    a file truncated mid-way ends early or raises on read().
    """
    return ClipSource(path, fmt)


def probe(
    path: Path,
    *,
    max_duration_s: float = MAX_CLIP_S,
    timeout_s: float = PROBE_TIMEOUT_S,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[str, float]:
    """Decode a whole file to check it and measure it: (format, exact duration in s).

    Used when a clip is stored: reading to the end catches a truncated or corrupt file
    there rather than during a broadcast, and counts the frames exactly (the header's
    count of an MP3 is only an estimate). A file that decodes to clearly fewer frames than
    its header promises (FLAC's STREAMINFO, an MP3's Xing/Info frame count) was cut off
    and is refused; an MP3 without such a header cannot tell and simply is shorter.

    Bounded, because a few kilobytes of FLAC can declare hours of 8-channel silence:
    the rate and channels are judged from the header before anything is decoded
    (``bad_audio``); a header announcing more than ``max_duration_s`` is refused at
    once, and so is a file that decodes past it (``too_long``); the decoding stops with
    ``decode_timeout`` once it has taken ``timeout_s``, or quietly when ``stop`` is set
    (its caller went away). Meant to run in a worker thread.
    """
    deadline = clock() + timeout_s
    try:
        with _SequentialFile(str(path)) as handle:
            _check_info(handle, path.name)
            fmt = str(handle.format).lower()
            rate = handle.samplerate
            promised = handle.frames
            limit = int(max_duration_s * rate)
            # An MP3's count without a Xing/Info frame is a guess from its size: judged
            # only by what it decodes to.
            if fmt != "mp3" and 0 < promised < _UNKNOWN_LENGTH and promised > limit:
                raise _too_long(path.name, promised / rate, max_duration_s)
            frames = 0
            block = max(1, rate // 4)
            while True:
                if stop is not None and stop.is_set():
                    raise DecodeError("cancelled", f"{path.name}: the check was called off")
                if clock() > deadline:
                    raise DecodeError(
                        "decode_timeout",
                        f"{path.name}: decoding took over {timeout_s:g} s"
                        f" ({frames / rate:.0f} s of audio checked)",
                    )
                data = handle.read(block, dtype="float32", always_2d=True)
                if len(data) == 0:
                    break
                frames += len(data)
                if frames > limit:
                    raise _too_long(path.name, frames / rate, max_duration_s, more=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        message = f"{path.name}: not audio we can decode ({_reason(exc)})"
        raise DecodeError("bad_audio", message) from exc
    if frames == 0:
        raise DecodeError("bad_audio", f"{path.name}: no audio in the file (0 seconds)")
    if 0 < promised < _UNKNOWN_LENGTH and frames < promised * 0.98:
        raise DecodeError(
            "bad_audio",
            f"{path.name}: truncated ({frames / rate:.1f} s of {promised / rate:.1f} s decode)",
        )
    return _FORMAT_NAMES.get(fmt, fmt), frames / rate


def _too_long(name: str, seconds: float, cap: float, *, more: bool = False) -> DecodeError:
    at_least = "over " if more else ""
    return DecodeError(
        "too_long", f"{name}: {at_least}{seconds:.0f} s of audio; clips are at most {cap:g} s"
    )


# --- live streams -------------------------------------------------------------------


class _ClosedError(Exception):
    """The source was closed while a worker waited."""


class _LiveReader(io.RawIOBase):
    """A file-like view of a byte pipe that libsndfile's MP3 reader accepts.

    It reports a length of 2**40 bytes (libsndfile asks once, then looks for an ID3v1 tag
    in the last 128 bytes: that region reads as zeros) and keeps the latest ``window``
    bytes so the small backward seeks of frame synchronisation work.
    """

    _FAKE_END = 1 << 40

    def __init__(self, fd: int, window: int = 256 * 1024) -> None:
        super().__init__()
        self._fd = fd
        self._window = bytearray()
        self._start = 0  # stream offset of _window[0]
        self._limit = window
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._FAKE_END}[whence]
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:  # noqa: ANN401  (io's buffer protocol type)
        view = memoryview(buffer).cast("B")
        want = len(view)
        if self._pos >= self._FAKE_END // 2:
            view[:want] = bytes(want)
            self._pos += want
            return want
        if self._pos < self._start:
            raise OSError("stream seeked back further than the window")
        end = self._start + len(self._window)
        while self._pos + want > end:
            chunk = os.read(self._fd, max(4096, self._pos + want - end))
            if not chunk:
                break
            self._window += chunk
            end += len(chunk)
        if len(self._window) > self._limit:
            drop = len(self._window) - self._limit
            del self._window[:drop]
            self._start += drop
        offset = self._pos - self._start
        data = self._window[offset : offset + want]
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


_MPEG_KBPS = {
    (1, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (1, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (1, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (2, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {1: (44100, 48000, 32000), 2: (22050, 24000, 16000), 25: (11025, 12000, 8000)}
_SYNC_SEARCH = 64 * 1024
"""Bytes searched for the first MPEG frame before a stream counts as not MP3."""


def _mpeg_frame(data: bytes, at: int) -> tuple[int, int] | None:
    """(frame length, header key) of an MPEG audio frame header at ``at``, else None."""
    if at + 4 > len(data) or data[at] != 0xFF or data[at + 1] & 0xE0 != 0xE0:
        return None
    version = {3: 1, 2: 2, 0: 25}.get((data[at + 1] >> 3) & 3)
    layer = {3: 1, 2: 2, 1: 3}.get((data[at + 1] >> 1) & 3)
    rate_index = (data[at + 2] >> 2) & 3
    kbps_index = data[at + 2] >> 4
    if version is None or layer is None or rate_index == 3 or kbps_index in (0, 15):
        return None
    kbps = _MPEG_KBPS[(min(version, 2), layer)][kbps_index]
    rate = _MPEG_RATES[version][rate_index]
    padding = (data[at + 2] >> 1) & 1
    if layer == 1:
        length = (12 * kbps * 1000 // rate + padding) * 4
    elif layer == 3 and version != 1:
        length = 72 * kbps * 1000 // rate + padding
    else:
        length = 144 * kbps * 1000 // rate + padding
    return length, (data[at + 1] & 0xFE) << 8 | (data[at + 2] & 0x0C)


def mpeg_sync(data: bytes) -> int | None:
    """Offset of the first of three consecutive, consistent MPEG audio frames, else None.

    An Icecast server starts a listener wherever its buffer happens to begin, often in
    the middle of a frame, and libsndfile only recognises MP3 that starts at a frame (or
    an ID3 tag). Three frames in a row rule out a chance 0xFFE in the data.
    """
    if data.startswith(b"ID3"):
        return 0
    for start in range(len(data) - 3):
        at, key = start, None
        for _ in range(3):
            frame = _mpeg_frame(data, at)
            if frame is None or (key is not None and frame[1] != key):
                break
            key = frame[1]
            at += frame[0]
        else:
            return start
    return None


class StreamSource:
    """A live HTTP/Icecast MP3 or OGG stream, reconnected after drops.

    A connection thread fetches the bytes and pipes them to a decoder thread, which puts
    converted PCM into a buffer bounded to ``max_buffer_s``; when it is full the decoder
    waits and TCP slows the server down. A drop (closed connection, nothing received for
    ``stall_timeout_s``, undecodable bytes) means a new connection after 1, 2, 4 … up to
    ``max_retry_s`` seconds. read() raises DecodeError("stream_failed") once no audio has
    arrived for ``give_up_after_s``, so a dead stream never plays silence forever.

    Every connection, the first and one per redirect, goes through ``guard``
    (:class:`gateway.pa.fetch.AddressGuard`: public addresses, plus what
    ``pa.fetch_allow`` opens): a refused address fails the stream at once with
    ``forbidden``, without a retry.
    """

    def __init__(
        self,
        url: str,
        fmt: AudioFormat,
        *,
        connect_timeout_s: float,
        max_buffer_s: float,
        max_retry_s: float,
        give_up_after_s: float,
        stall_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        guard: AddressGuard | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DecodeError("stream_failed", f"not an http(s) stream URL: {url!r}")
        self._guard = guard if guard is not None else AddressGuard()
        _check_address(self._guard, parts.hostname)
        self.fmt = fmt
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.stall_timeout_s = stall_timeout_s if stall_timeout_s is not None else connect_timeout_s
        self.max_retry_s = max_retry_s
        self.give_up_after_s = give_up_after_s
        self.reconnects = 0
        """Connections made after the first one: drops the stream recovered from."""
        self.last_error: str | None = None
        self._clock = clock
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._limit = max(fmt.frame_bytes, int(max_buffer_s * fmt.rate) * fmt.frame_bytes)
        self._closed = False
        self._failed: DecodeError | None = None
        self._last_audio = clock()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="pa-stream", daemon=True)
        self._thread.start()

    @property
    def buffered_s(self) -> float:
        """Seconds of decoded audio waiting for read(); never above ``max_buffer_s``."""
        with self._cond:
            return self._buffered / self.fmt.frame_bytes / self.fmt.rate

    # The player's side.

    def read(self, frames: int) -> bytes:
        """Block until PCM is there; b"" after close(); raises when the stream is gone."""
        want = max(1, frames) * self.fmt.frame_bytes
        with self._cond:
            while not self._chunks and not self._closed and self._failed is None:
                silent = self._clock() - self._last_audio
                if silent >= self.give_up_after_s:
                    reason = self.last_error or "no audio"
                    self._failed = DecodeError(
                        "stream_failed",
                        f"stream gone: no audio for {silent:.0f} s ({reason})",
                    )
                    break
                self._cond.wait(min(0.1, self.give_up_after_s - silent))
            if self._closed:
                return b""
            if not self._chunks:
                assert self._failed is not None  # noqa: S101  (the loop's only other exit)
                failed = self._failed
                self._stop_locked()
                raise failed
            out = bytearray()
            while self._chunks and len(out) < want:
                chunk = self._chunks.popleft()
                take = want - len(out)
                if len(chunk) > take:
                    self._chunks.appendleft(chunk[take:])
                    chunk = chunk[:take]
                out += chunk
                self._buffered -= len(chunk)
            self._cond.notify_all()
            return bytes(out)

    def close(self) -> None:
        """Idempotent and prompt from any thread: read() returns b"" at once."""
        with self._cond:
            self._closed = True
            self._stop_locked()

    def _stop_locked(self) -> None:
        """Wake every waiting thread and cut the connection (closed or failed)."""
        self._chunks.clear()
        self._buffered = 0
        self._cond.notify_all()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already gone
                sock.shutdown(socket.SHUT_RDWR)

    def _stopped(self) -> bool:
        with self._cond:
            return self._closed or self._failed is not None

    # The connection thread.

    def _run(self) -> None:
        backoff = 1.0
        attempt = 0
        while not self._stopped():
            if attempt:
                self.reconnects += 1
            attempt += 1
            started = self._clock()
            heard = self._last_audio
            try:
                self._connect_once()
                self.last_error = "the server closed the stream"
                detail = self.last_error
            except _ClosedError:
                return
            except RefusedAddressError as exc:  # no retry: the answer would be the same
                _log.warning("pa.stream_refused", url=self.url, reason=str(exc))
                with self._cond:
                    self._failed = DecodeError("forbidden", f"refused to connect: {exc}")
                    self._stop_locked()
                return
            except Exception as exc:  # any failure is a drop; read() gives up in time
                self.last_error = _public_reason(exc)
                detail = f"{type(exc).__name__}: {exc}"
            if self._stopped():
                return
            if self._last_audio > heard and self._clock() - started > backoff:
                backoff = 1.0  # the connection played for a while: a fresh drop
            _log.warning("pa.stream_dropped", url=self.url, reason=detail, retry_s=backoff)
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._failed is not None, backoff)
            backoff = min(backoff * 2, self.max_retry_s)

    def _connect_once(self) -> None:
        response, conn = self._open()
        try:
            first = self._first_bytes(response)
            read_fd, write_fd = os.pipe()
            errors: list[BaseException] = []
            decoder = threading.Thread(
                target=self._decode,
                args=(read_fd, first.startswith(b"OggS"), errors),
                name="pa-stream-decode",
                daemon=True,
            )
            decoder.start()
            try:
                self._pump(response, first, write_fd)
            finally:
                os.close(write_fd)
                decoder.join()
            if errors:
                raise errors[0]
        finally:
            with self._cond:
                self._sock = None
            conn.close()

    def _open(self) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        url = self.url
        for _ in range(_MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            host = parts.hostname or ""
            conn_class = (
                http.client.HTTPSConnection
                if parts.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = conn_class(host, parts.port, timeout=self.connect_timeout_s)
            # connect() opens its socket through this: only to addresses the guard allows.
            conn._create_connection = self._guard.create_connection  # type: ignore[attr-defined]
            conn.connect()
            assert conn.sock is not None  # noqa: S101  (connect() sets it or raises)
            conn.sock.settimeout(self.stall_timeout_s)
            with self._cond:
                if self._closed or self._failed is not None:
                    conn.close()
                    raise _ClosedError
                self._sock = conn.sock
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            conn.request("GET", path, headers={"User-Agent": _USER_AGENT, "Accept": "*/*"})
            response = conn.getresponse()
            location = response.getheader("Location")
            if response.status in (301, 302, 303, 307, 308) and location:
                conn.close()
                url = urljoin(url, location)
                if urlsplit(url).scheme not in ("http", "https"):
                    raise OSError(f"redirect to a non-http URL: {url}")
                continue
            if response.status != 200:
                conn.close()
                raise _HttpStatusError(f"HTTP {response.status} {response.reason}"[:80])
            return response, conn
        raise OSError(f"more than {_MAX_REDIRECTS} redirects")

    def _first_bytes(self, response: http.client.HTTPResponse) -> bytes:
        """The body from its first OGG page or MPEG frame on; the bytes before are cut."""
        head = b""
        while len(head) < _SYNC_SEARCH:
            chunk = response.read1(4096)
            if not chunk:
                raise OSError("the server closed before sending audio")
            head += chunk
            if head.startswith(b"OggS"):
                return head  # Icecast sends an OGG stream's headers to each new listener
            if len(head) >= 2048:
                start = mpeg_sync(head)
                if start is not None:
                    return head[start:]
        raise DecodeError("stream_failed", "neither MP3 nor OGG: no audio frames found")

    def _pump(self, response: http.client.HTTPResponse, first: bytes, write_fd: int) -> None:
        """Copy the body into the decoder's pipe until the server stops or we close."""
        chunk = first
        while chunk:
            if self._stopped():
                raise _ClosedError
            try:
                os.write(write_fd, chunk)
            except BrokenPipeError:
                return  # the decoder gave up; its error says why
            chunk = response.read1(16384)

    # The decoder thread.

    def _decode(self, fd: int, ogg: bool, errors: list[BaseException]) -> None:
        """Decode the piped bytes into the PCM buffer; errors go to ``errors``."""
        try:
            # OGG reads fine from a pipe; MP3 needs the windowed reader (module docstring).
            source: int | _LiveReader = fd if ogg else _LiveReader(fd)
            handle = _SequentialFile(source, closefd=False)
            with handle:
                _check_info(handle, "stream")
                converter = Converter(handle.samplerate, handle.channels, self.fmt)
                block = max(1, int(handle.samplerate * _BLOCK_S))
                while True:
                    data = handle.read(block, dtype="float32", always_2d=True)
                    if len(data) == 0:
                        return
                    self._put(converter.convert(data))
        except _ClosedError:
            pass
        except (
            DecodeError,
            sf.LibsndfileError,
            RuntimeError,
            TypeError,
            ValueError,
            OSError,
        ) as exc:
            errors.append(DecodeError("stream_failed", f"undecodable stream: {exc}"))
        finally:
            os.close(fd)  # the pump's next write fails: the connection ends too

    def _put(self, pcm: bytes) -> None:
        if not pcm:
            return
        with self._cond:
            while self._buffered + len(pcm) > self._limit and self._buffered > 0:
                if self._closed or self._failed is not None:
                    raise _ClosedError
                self._cond.wait(0.1)
            if self._closed or self._failed is not None:
                raise _ClosedError
            self._chunks.append(pcm)
            self._buffered += len(pcm)
            self._last_audio = self._clock()
            self._cond.notify_all()


class _HttpStatusError(OSError):
    """The server answered, with something other than 200 or a redirect."""


def _public_reason(exc: BaseException) -> str:
    """What a drop's reason may say outside the Pi (the pa.failed event): the HTTP
    status or what the decoder found, never socket errors (a port scanner's answer)."""
    if isinstance(exc, _HttpStatusError | DecodeError):
        return str(exc)
    return "no connection or no answer"


def _check_address(guard: AddressGuard, host: str) -> None:
    """DecodeError("forbidden") at once for a URL written with a refused address."""
    try:
        guard.check_host(host)
    except RefusedAddressError as exc:
        raise DecodeError("forbidden", f"refused to connect: {exc}") from exc


def open_stream(
    url: str,
    fmt: AudioFormat,
    *,
    connect_timeout_s: float = 5.0,
    max_buffer_s: float = 5.0,
    max_retry_s: float = 30.0,
    give_up_after_s: float = 60.0,
    stall_timeout_s: float | None = None,
    guard: AddressGuard | None = None,
) -> StreamSource:
    """Start receiving an HTTP/Icecast MP3 or OGG Vorbis stream, converted to ``fmt``.

    Returns at once (connecting happens in the background); read() blocks until audio
    arrives. ``stall_timeout_s`` (default: the connect timeout) is how long a connection
    may send nothing before it counts as dropped. ``guard`` says where it may connect
    (default: public addresses only).
    """
    return StreamSource(
        url,
        fmt,
        connect_timeout_s=connect_timeout_s,
        max_buffer_s=max_buffer_s,
        max_retry_s=max_retry_s,
        give_up_after_s=give_up_after_s,
        stall_timeout_s=stall_timeout_s,
        guard=guard,
    )
