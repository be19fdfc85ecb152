"""PA output: one thread owns the sound device and writes PCM to it.

PortAudio's blocking write sleeps until the device has room; on the event loop that
would stall relays, MQTT and the web UI, so the device belongs to one thread that takes
:class:`Chunk` objects from a bounded queue. Decoder threads fill the queue (a full
queue makes *them* wait, never the loop); the event loop only steers: :meth:`Output.cut`
to drop or fade what is queued, :meth:`Output.set_master` for the master volume.

The device is chosen by its ALSA name (``pa.device``), never by PortAudio's index, which
follows the card order of this boot. A PCM that PortAudio lists (``default``, ``pulse``,
one defined in ``asoundrc``) matches by name; ``hw:CARD=<id>,DEV=<n>`` and
``plughw:CARD=<id>,DEV=<n>`` are resolved through ``/proc/asound/<id>`` to the card's
number of this boot and matched to PortAudio's ``(hw:<card>,<n>)`` entry.

A device missing at start, or failing mid-play (a USB card unplugged), puts the output in
``degraded``: the thread drops what it was playing, reports it, and retries opening with
backoff (1 → 30 s), re-enumerating devices each time, until the device is back.

Gains are applied here, at write time, so a master volume change is heard within one
buffer, and every change of gain is a linear ramp (no clicks). Volume 0-100 maps to an
amplitude of ``(volume / 100) ** 2``: 50 is -12 dB, 70 is -6.2 dB, 100 is bit-exact.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from gateway.errors import GatewayError
from gateway.log import get_logger
from gateway.pa.quiet import silence_sound_libraries

__all__ = [
    "Chunk",
    "DeviceError",
    "DeviceState",
    "NullSink",
    "Output",
    "PyAudioSink",
    "Report",
    "Sink",
    "find_device",
    "volume_gain",
]

_log = get_logger("pa.output")

DeviceState = Literal["ok", "degraded", "off"]

_CARD_NAME = re.compile(r"^(?:plug)?hw:CARD=([^,]+),DEV=(\d+)$")


def volume_gain(volume: float) -> float:
    """Amplitude for a volume 0-100: a square law, so the top of the range is not all
    loud (50 is -12 dB) and 100 leaves the samples untouched."""
    return (max(0.0, min(100.0, volume)) / 100.0) ** 2


class DeviceError(GatewayError):
    """The sound device cannot be opened (``device_missing``) or failed (``device_lost``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of PCM (s16le, interleaved) of one run of one item.

    ``token`` identifies the run: the player gives every start or resume a new, larger
    token, so "drop everything before token N" is one comparison. ``part`` is the
    repeat number (-1 for the chime) and ``offset`` the frame where ``data`` begins in
    that part, so the player knows where to resume an interrupted item.
    """

    token: int
    data: bytes
    gain: float
    """The item's own amplitude; the master volume is applied on top unless ``fixed``."""
    fixed: bool = False
    """Emergency: plays at ``gain`` whatever the master volume is."""
    part: int = 0
    offset: int = 0
    first: bool = False
    last: bool = False
    """An end marker (``data`` may be empty): the item has been handed over completely."""


@dataclass(frozen=True, slots=True)
class Report:
    """What the output thread tells the player (through the event loop)."""

    kind: Literal["started", "finished", "lost", "device"]
    token: int = 0
    at: float = 0.0
    """time.monotonic() when it happened (for ``started``: the first write returned)."""
    detail: str = ""


class Sink(Protocol):
    """A device the output thread writes to. All calls come from that one thread."""

    def open(self) -> None:
        """Open the device; DeviceError("device_missing") if it is not there."""

    def write(self, data: bytes) -> bool:
        """Blocking write; True if an underrun happened before it. DeviceError if lost."""

    def stop(self) -> None:
        """Let what is buffered play, then idle (between items)."""

    def abort(self) -> None:
        """Drop what the device has buffered, now (pa.stop, shutdown)."""

    def close(self) -> None:
        """Release the device; idempotent."""


def find_device(
    devices: list[dict[str, Any]],
    name: str,
    proc: Path = Path("/proc/asound"),
    *,
    direction: Literal["output", "input"] = "output",
) -> int:
    """PortAudio's index of the output (or input) device called ``name`` in this boot.

    ``devices`` is PortAudio's list (``get_device_info_by_index`` of each). Raises
    DeviceError("device_missing") naming what there is instead.
    """
    channels = "maxOutputChannels" if direction == "output" else "maxInputChannels"
    usable = [d for d in devices if int(d.get(channels, 0)) > 0]
    for info in usable:
        if info.get("name") == name:
            return int(info["index"])
    match = _CARD_NAME.fullmatch(name)
    if match is not None:
        card_id, dev = match.groups()
        with contextlib.suppress(OSError):
            card = os.readlink(proc / card_id).removeprefix("card")
            suffix = f"(hw:{card},{dev})"
            for info in usable:
                if str(info.get("name", "")).endswith(suffix):
                    return int(info["index"])
    have = ", ".join(repr(d.get("name")) for d in usable) or "none"
    raise DeviceError("device_missing", f"no {direction} device {name!r} (PortAudio lists {have})")


class PyAudioSink:
    """PortAudio through PyAudio, blocking mode, one stream kept open between items."""

    def __init__(self, device: str, *, rate: int, channels: int, frames_per_buffer: int) -> None:
        self.device = device
        self._rate = rate
        self._channels = channels
        self._frames_per_buffer = frames_per_buffer
        self._pa: Any = None
        self._stream: Any = None
        self._capacity = 0
        """Frames the device buffer holds (what is writable right after a start)."""

    def open(self) -> None:
        """Initialise PortAudio afresh (re-enumerates devices), find ours, open a stream."""
        # ALSA's and JACK's enumeration chatter stays out of the journal; JACK does not
        # try to start a server (the Pi has none). A missing device is our one line.
        silence_sound_libraries()
        if self.device.startswith("plughw:"):
            # PortAudio lists cards as hw:N,M; with this it opens them through plughw.
            os.environ.setdefault("PA_ALSA_PLUGHW", "1")
        try:
            import pyaudio  # type: ignore[import-untyped]  # noqa: PLC0415  (only with sound)
        except ImportError as exc:
            raise DeviceError("device_missing", "PyAudio is not installed") from exc
        self._pa = pyaudio.PyAudio()
        try:
            devices = [
                self._pa.get_device_info_by_index(i) for i in range(self._pa.get_device_count())
            ]
            index = find_device(devices, self.device)
            self._stream = self._pa.open(
                format=pyaudio.paInt16,
                channels=self._channels,
                rate=self._rate,
                output=True,
                output_device_index=index,
                frames_per_buffer=self._frames_per_buffer,
                start=False,
            )
        except (OSError, ValueError, DeviceError) as exc:
            self.close()
            if isinstance(exc, DeviceError):
                raise
            raise DeviceError("device_missing", f"cannot open {self.device!r}: {exc}") from exc

    def write(self, data: bytes) -> bool:
        """Start the stream if idle, write. An underrun is a device buffer found empty in
        the middle of an item (PyAudio's exception_on_underflow would close the stream)."""
        stream = self._stream
        if stream is None:
            raise DeviceError("device_lost", "the stream is closed")
        try:
            underrun = False
            if stream.is_stopped():
                stream.start_stream()
                self._capacity = int(stream.get_write_available())
            elif self._capacity > 0:
                underrun = int(stream.get_write_available()) >= self._capacity
            stream.write(data)
        except OSError as exc:
            raise DeviceError("device_lost", f"{self.device!r} failed: {exc}") from exc
        return underrun

    def stop(self) -> None:
        """Drain and stop (Pa_StopStream); the next write starts it again."""
        if self._stream is not None:
            try:
                if not self._stream.is_stopped():
                    self._stream.stop_stream()
            except OSError as exc:
                raise DeviceError("device_lost", f"{self.device!r} failed: {exc}") from exc

    def abort(self) -> None:
        """Stop the stream now. PyAudio does not expose Pa_AbortStream; Pa_StopStream on
        ALSA returns at once and what is left is one device buffer (frames_per_buffer x
        periods, tens of ms). Closing and reopening the stream would cost more, and an
        ALSA ``file`` tap would start a new file."""
        self.stop()

    def close(self) -> None:
        """Close the stream and terminate PortAudio; never raises."""
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        pa, self._pa = self._pa, None
        if pa is not None:
            with contextlib.suppress(Exception):
                pa.terminate()


class NullSink:
    """Discards samples but takes as long as a device would (real-time pacing).

    Timing, events, the amplifier and the queue then behave as on the Pi; only the
    samples go nowhere. It keeps ``lead_s`` of "buffer", like a device does.
    """

    def __init__(self, *, rate: int, channels: int, lead_s: float = 0.05) -> None:
        self._rate = rate
        self._frame_bytes = 2 * channels
        self._lead_s = lead_s
        self._until: float | None = None

    def open(self) -> None:
        """Nothing to open."""
        self._until = None

    def write(self, data: bytes) -> bool:
        """Sleep until the previous samples would have been played (minus the lead)."""
        now = time.monotonic()
        underrun = self._until is not None and self._until < now
        start = now if self._until is None or self._until < now else self._until
        self._until = start + len(data) / self._frame_bytes / self._rate
        ahead = self._until - now - self._lead_s
        if ahead > 0:
            time.sleep(ahead)
        return underrun

    def stop(self) -> None:
        """Between items: forget the pacing clock (no underrun at the next start)."""
        self._until = None

    def abort(self) -> None:
        """Drop the "buffered" samples."""
        self._until = None

    def close(self) -> None:
        """Nothing to release."""
        self._until = None


_WAKE = Chunk(token=-1, data=b"", gain=0.0)
"""Not audio: put in the queue to wake the output thread for a request (see Output._wake)."""


@dataclass(slots=True)
class _Control:
    """Requests from the event loop, taken by the output thread before each chunk."""

    floor: int = 0
    fade: bool = False
    abort: bool = False
    master: float = 1.0


@dataclass(slots=True)
class _Progress:
    part: int = 0
    offset: int = 0
    frames: int = 0


@dataclass(slots=True)
class _Stats:
    state: DeviceState = "off"
    reason: str | None = None
    underruns: int = 0
    progress: dict[int, _Progress] = field(default_factory=dict)


class Output:
    """The output thread and its bounded queue."""

    def __init__(
        self,
        sink_factory: Callable[[], Sink],
        *,
        rate: int,
        channels: int,
        chunk_frames: int,
        report: Callable[[Report], None],
        queue_s: float = 0.5,
        ramp_s: float = 0.05,
        fade_s: float = 0.05,
        retry_initial_s: float = 1.0,
        retry_cap_s: float = 30.0,
        idle_state: DeviceState = "ok",
    ) -> None:
        self._factory = sink_factory
        self.rate = rate
        self.channels = channels
        self.chunk_frames = chunk_frames
        self._report = report
        self._queue: queue.Queue[Chunk] = queue.Queue(
            maxsize=max(2, round(queue_s * rate / chunk_frames))
        )
        self._ramp_step = 1.0 / max(1, round(ramp_s * rate))
        self._fade_frames = round(fade_s * rate)
        self._retry = (retry_initial_s, retry_cap_s)
        self._ok_state: DeviceState = idle_state
        self._lock = threading.Lock()
        self._control = _Control()
        self._stats = _Stats()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._sink: Sink | None = None
        # Only the output thread touches these:
        self._gain = 0.0
        self._token = -1
        self._fade_left = 0
        self._fading = -1

    # ------------------------------------------------------------------ loop side

    def start(self) -> None:
        """Start the thread (idempotent); it opens the device itself."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pa-output", daemon=True)
            self._thread.start()

    def put(self, chunk: Chunk, stop: threading.Event) -> bool:
        """Queue a chunk, waiting for room; False if ``stop`` was set meanwhile.

        Called by decoder threads only: it blocks.
        """
        while not stop.is_set() and not self._closing.is_set():
            try:
                self._queue.put(chunk, timeout=0.05)
            except queue.Full:
                continue
            return True
        return False

    def cut(self, floor: int, *, fade: bool) -> None:
        """Drop every queued chunk of a token below ``floor``.

        ``fade``: the playing run fades out over ``fade_s`` first (preemption); otherwise
        the device buffer is aborted too (pa.stop, a failure).
        """
        with self._lock:
            self._control.floor = max(self._control.floor, floor)
            if fade:
                self._control.fade = True
            else:
                self._control.abort = True
        self._wake()

    def _wake(self) -> None:
        """Have the thread look at its requests now. A full queue needs no wake-up: the
        thread is busy with it and takes the requests before the next chunk."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_WAKE)

    def set_master(self, gain: float) -> None:
        """The master amplitude; the thread ramps to it."""
        with self._lock:
            self._control.master = gain

    def progress(self, token: int) -> tuple[int, int, int]:
        """(part, offset, frames written) of a run so far."""
        found = self._stats.progress.get(token)
        return (0, 0, 0) if found is None else (found.part, found.offset, found.frames)

    def forget(self, token: int) -> None:
        """The player is done with a run's progress."""
        self._stats.progress.pop(token, None)

    @property
    def state(self) -> DeviceState:
        """ok | degraded | off."""
        return self._stats.state

    @property
    def reason(self) -> str | None:
        """Why the device is degraded."""
        return self._stats.reason

    @property
    def underruns(self) -> int:
        """Times the device ran dry in the middle of an item."""
        return self._stats.underruns

    def close(self, timeout_s: float = 0.5) -> None:
        """Stop the thread; it aborts and releases the device. Safe from any thread."""
        self._closing.set()
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    # ------------------------------------------------------------------ thread side

    def _run(self) -> None:
        attempt = 0
        while not self._closing.is_set():
            if self._sink is None:
                if not self._open(attempt):
                    attempt += 1
                    initial, cap = self._retry
                    self._closing.wait(min(cap, initial * 2 ** (attempt - 1)))
                    continue
                attempt = 0
            # Blocks with no timeout: an idle daemon's output thread does not wake at all.
            # cut() and close() put _WAKE to have their request seen at once.
            chunk = self._queue.get()
            if chunk is _WAKE:
                self._take_control()
                continue
            try:
                self._handle(chunk)
            except DeviceError as exc:
                self._lost(str(exc))
        self._release(abort=True)

    def _open(self, attempt: int) -> bool:
        sink = self._factory()
        try:
            sink.open()
        except DeviceError as exc:
            if attempt == 0 or self._stats.reason != str(exc):
                _log.warning("pa.device_missing", reason=str(exc), retry=attempt + 1)
            self._set_state("degraded", str(exc))
            self._drain_queue()
            return False
        self._sink = sink
        self._gain = 0.0
        _log.info("pa.device_open", state=self._ok_state)
        self._set_state(self._ok_state, None)
        return True

    def _lost(self, reason: str) -> None:
        _log.error("pa.device_lost", reason=reason, token=self._token)
        lost = self._token
        with self._lock:
            self._control.floor = max(self._control.floor, lost + 1)
        self._release(abort=True)
        self._set_state("degraded", reason)
        self._report(Report("lost", lost, time.monotonic(), reason))

    def _release(self, *, abort: bool) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            if abort:
                with contextlib.suppress(DeviceError):
                    sink.abort()
            sink.close()

    def _set_state(self, state: DeviceState, reason: str | None) -> None:
        changed = (state, reason) != (self._stats.state, self._stats.reason)
        self._stats.state, self._stats.reason = state, reason
        if changed:
            self._report(Report("device", 0, time.monotonic(), reason or state))

    def _drain_queue(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

    def _take_control(self) -> tuple[int, float]:
        """Apply the loop's requests; returns (floor, master)."""
        with self._lock:
            control = self._control
            floor, master = control.floor, control.master
            fade, abort = control.fade, control.abort
            control.fade = control.abort = False
        if abort and self._sink is not None:
            self._sink.abort()
            self._gain = 0.0
            self._fade_left = 0
        if fade and self._token < floor:
            self._fade_left, self._fading = self._fade_frames, self._token
        return floor, master

    def _handle(self, chunk: Chunk) -> None:
        floor, master = self._take_control()
        sink = self._sink
        assert sink is not None  # noqa: S101 - opened before chunks are taken
        if chunk.token < floor:
            if self._fade_left > 0 and chunk.token == self._fading and chunk.data:
                self._write_fade(sink, chunk)
            return
        if chunk.token != self._token:
            self._token = chunk.token
            self._gain = 0.0  # every run starts with a short ramp in
            self._fade_left = 0
        if chunk.data:
            target = chunk.gain if chunk.fixed else chunk.gain * master
            if sink.write(self._scale(chunk.data, target)):
                self._stats.underruns += 1
            frames = len(chunk.data) // (2 * self.channels)
            progress = self._stats.progress.setdefault(chunk.token, _Progress())
            progress.part, progress.offset = chunk.part, chunk.offset + frames
            progress.frames += frames
        if chunk.first:
            self._report(Report("started", chunk.token, time.monotonic()))
        if chunk.last:
            if self._queue.empty():
                sink.stop()
            self._report(Report("finished", chunk.token, time.monotonic()))

    def _write_fade(self, sink: Sink, chunk: Chunk) -> None:
        """The first ``fade_left`` frames of an interrupted run, ramped down to silence."""
        import numpy as np  # noqa: PLC0415 - loaded by the first sound played, see _scale

        width = 2 * self.channels
        frames = min(self._fade_left, len(chunk.data) // width)
        data = chunk.data[: frames * width]
        samples = np.frombuffer(data, dtype="<i2").reshape(-1, self.channels)
        left = self._fade_left
        ramp = self._gain * (left - np.arange(1, frames + 1, dtype=np.float32)) / left
        self._gain = float(ramp[-1]) if frames else self._gain
        self._fade_left -= frames
        out = np.rint(samples * ramp[:, None]).astype("<i2")
        sink.write(out.tobytes())
        if self._fade_left == 0:
            self._gain = 0.0

    def _scale(self, data: bytes, target: float) -> bytes:
        """Apply the gain, ramping from the current one to ``target`` without a click."""
        current = self._gain
        if current == target == 1.0:
            return data
        # numpy is loaded by the first sound played, not at start-up: an idle daemon
        # (and the null sink of the demo) does without it.
        import numpy as np  # noqa: PLC0415

        if current == target:
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) * target
        else:
            frames = len(data) // (2 * self.channels)
            step = self._ramp_step if target > current else -self._ramp_step
            ramp = current + step * np.arange(1, frames + 1, dtype=np.float32)
            ramp = np.minimum(ramp, target) if step > 0 else np.maximum(ramp, target)
            self._gain = float(ramp[-1]) if frames else current
            if abs(self._gain - target) < 1e-6:
                self._gain = target
            samples = (
                np.frombuffer(data, dtype="<i2").reshape(-1, self.channels).astype(np.float32)
                * ramp[:, None]
            )
        out: bytes = np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()
        return out
