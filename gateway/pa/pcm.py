"""The light half of the PA's audio vocabulary: the output format, the limits and the
decode error, without numpy or libsndfile.

:mod:`gateway.pa.decode` needs both of those heavy libraries (about 15 MB of a Pi's
memory); the daemon imports them only when the first clip or stream is decoded. What the
rest of the PA (the clip store, the player, the daemon's wiring) needs at start-up lives
here, and ``gateway.pa.decode`` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.errors import GatewayError

__all__ = [
    "MAX_CHANNELS",
    "MAX_CLIP_S",
    "MAX_RATE",
    "MIN_RATE",
    "PROBE_TIMEOUT_S",
    "AudioFormat",
    "DecodeError",
    "PcmSource",
]

MIN_RATE = 4_000
MAX_RATE = 192_000
"""The highest sample rate taken (studio masters go up to 192 kHz; above that a file is
a decoding bomb more likely than a recording)."""
MAX_CHANNELS = 8
"""7.1 is the most a real recording has; the horns get the first one or two."""
MAX_CLIP_S = 30 * 60.0
"""The longest clip the store takes (``too_long``): a long announcement or a recorded
meeting fits, a decoding bomb of hours of silence does not."""
PROBE_TIMEOUT_S = 60.0
"""How long the decode check of one clip may take (``decode_timeout``); a 30-minute
48 kHz stereo MP3 takes a few seconds (docs/audio.md)."""


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """The output's PCM format; samples are always signed 16-bit little-endian."""

    rate: int = 48_000
    channels: int = 2

    @property
    def frame_bytes(self) -> int:
        """Bytes in one frame (all channels of one sample instant)."""
        return self.channels * 2


class DecodeError(GatewayError):
    """Not audio / unsupported / truncated / too long / stream gone.

    ``key`` is a reply error code: ``bad_audio`` for files (``too_long`` and
    ``decode_timeout`` from ``gateway.pa.decode.probe``), ``stream_failed`` for live streams,
    ``forbidden`` for a stream whose address the guard refuses (pa.fetch_allow).
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class PcmSource(Protocol):
    """Blocking reader; the player calls it from a worker thread, never the event loop."""

    fmt: AudioFormat

    def read(self, frames: int) -> bytes:
        """Up to ``frames * channels * 2`` bytes; b"" at the end."""

    def close(self) -> None:
        """Idempotent; may be called from any thread."""
