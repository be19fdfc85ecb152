"""The public-address component: clips, player, output device and amplifier, as one part.

:class:`PublicAddress` is built from Settings like the other components, answers the
``pa.*`` commands, and publishes ``state/pa``. Its failures stay inside it: a missing or
vanished sound device makes ``device`` ``degraded`` (and the output retries), a clip that
will not decode fails that item only; the relays, MQTT and the web UI never notice.

``pa.clip.fetch`` is a long job: what can be judged at once is answered at once
(``rejected``), the download and decode check run in the background after ``accepted``,
and nothing ``pa.play``, ``pa.stop`` or ``pa.volume`` needs is held meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from gateway.clock import zone
from gateway.commands import (
    CommandError,
    Handler,
    LongJob,
    PaClipDeleteArgs,
    PaClipFetchArgs,
    PaPlayArgs,
    PaStopArgs,
    PaVolumeArgs,
    Source,
    new_id,
)
from gateway.component import Component, EventSink, Health, wait_for_event
from gateway.config import Settings
from gateway.errors import GatewayError
from gateway.files import write_atomic
from gateway.log import get_logger
from gateway.pa.amplifier import Amplifier
from gateway.pa.clips import ClipError, ClipStore
from gateway.pa.fetch import AddressGuard, RefusedAddressError
from gateway.pa.output import NullSink, Output, PyAudioSink, Report, Sink
from gateway.pa.pcm import AudioFormat
from gateway.pa.player import Item, Player, QuietHours
from gateway.pa.player import Source as PcmReader
from gateway.state import StateStore

if TYPE_CHECKING:
    from gateway.lighting.bank import RelayBank

__all__ = ["PublicAddress"]

_log = get_logger("pa")


class _Silence:
    """A source with no frames: stands in for a chime that cannot be played."""

    def read(self, frames: int) -> bytes:
        del frames
        return b""

    def close(self) -> None:
        """Nothing to release."""


class PublicAddress(Component):
    """The PA of one gateway."""

    name = "pa"
    critical = False
    heartbeat_timeout_s = 30.0

    def __init__(
        self,
        settings: Settings,
        *,
        state: StateStore,
        on_event: EventSink,
        relays: RelayBank | None = None,
        clip_users: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        pa = settings.pa
        self._pa = pa
        self._clip_users = clip_users
        """The clips the schedules in force name (``pa.clip.delete`` refuses those)."""
        self._state = state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty = asyncio.Event()
        self.fmt = AudioFormat(rate=pa.sample_rate, channels=2)
        self._volume_path = settings.gateway.state_dir / "pa.json"
        self._guard = AddressGuard(pa.fetch_allow)
        """Where pa.clip.fetch and pa.play url= may connect (docs/audio.md)."""
        self.clips = ClipStore(
            settings.gateway.state_dir / "clips",
            max_bytes=int(pa.max_clip_mb * 1_000_000),
            guard=self._guard,
        )
        """The clip store (the web server uploads into it)."""
        self.output = Output(
            self._sink,
            rate=self.fmt.rate,
            channels=self.fmt.channels,
            chunk_frames=pa.frames_per_buffer,
            report=self._report,
            idle_state="off" if pa.backend == "null" else "ok",
        )
        self.amplifier = Amplifier(
            pa.amp_relay, relays, warmup_s=pa.amp_warmup_s, idle_off_s=pa.amp_idle_off_s
        )
        self.player = Player(
            self.output,
            open_source=self._open_item,
            open_chime=self._open_chime,
            on_event=on_event,
            on_change=self._dirty.set,
            amplifier=self.amplifier,
            queue_max=pa.queue_max,
            volume=_saved_volume(self._volume_path, default=pa.volume),
            emergency_volume=pa.emergency_volume,
            quiet_hours=QuietHours(pa.quiet_hours),
            now=lambda: datetime.now(zone()),
        )

    # ------------------------------------------------------------------ life cycle

    def open(self) -> None:
        """Start the output thread (it finds the device); called in ``App._build``,
        before READY, with the amplifier off."""
        self._loop = asyncio.get_running_loop()
        self.output.start()

    def close(self) -> None:
        """SIGTERM: amplifier off at once, feeders stopped, device aborted and released."""
        self.amplifier.force_off()
        self.player.abort_all()
        self.output.close(timeout_s=0.5)

    async def run(self, health: Health) -> None:
        """Publish ``state/pa`` on every change, and each second while something plays."""
        self._loop = asyncio.get_running_loop()
        self.output.start()
        published: dict[str, Any] | None = None
        while True:
            health.beat()
            snapshot = self.snapshot()
            # Unchanged is not republished: every state change is an outbox write and an
            # MQTT publish, which an idle PA made every 5 s for nothing.
            if snapshot != published:
                await self._state.set("pa", snapshot)
                published = snapshot
            self._dirty.clear()
            period = 1.0 if self.player.snapshot()["playing"] else 5.0
            await wait_for_event(self._dirty, period)

    def snapshot(self) -> dict[str, Any]:
        """``state/pa`` as PROTOCOL.md has it (plus a few helpful fields)."""
        return {
            **self.player.snapshot(),
            "amplifier": self.amplifier.on,
            "device": self.output.state,
            "device_reason": self.output.reason,
            "underruns": self.output.underruns,
        }

    def summary(self) -> str | None:
        """A few words for systemd's status line."""
        if self.output.state == "degraded":
            return "PA device degraded"
        playing = self.player.snapshot()["playing"]
        if playing:
            return f"PA playing {playing.get('clip') or 'a stream'}"
        return None

    # ------------------------------------------------------------------ handlers

    def handlers(self) -> dict[str, Handler]:
        """``pa.play``, ``pa.stop``, ``pa.volume``, ``pa.clip.fetch``, ``pa.clip.delete``."""
        return {
            "pa.play": self._play,
            "pa.stop": self._stop,
            "pa.volume": self._volume,
            "pa.clip.fetch": self._fetch,
            "pa.clip.delete": self._delete,
        }

    async def _play(self, args: BaseModel, source: Source) -> dict[str, Any]:
        assert isinstance(args, PaPlayArgs)  # noqa: S101 - the dispatcher validated it
        clip = args.clip
        if args.url is not None:
            try:  # an address in the URL is judged at once; a name when it is resolved
                self._guard.check_url(args.url)
            except RefusedAddressError as exc:
                raise CommandError("forbidden", f"refused to connect: {exc}") from exc
        if clip is not None:
            try:
                clip = self.clips.info(clip).name
            except ClipError as exc:
                raise _refusal(exc, "clip") from exc
        item = Item(
            id=new_id("pa"),
            priority=args.priority,
            clip=clip,
            url=args.url,
            volume=args.volume,
            repeat=args.repeat,
            chime=args.chime,
            resume=args.resume,
            source=source,
        )
        return await self.player.play(item)

    async def _stop(self, args: BaseModel, source: Source) -> dict[str, Any]:
        assert isinstance(args, PaStopArgs)  # noqa: S101 - the dispatcher validated it
        return await self.player.stop(args.scope)

    async def _volume(self, args: BaseModel, source: Source) -> dict[str, Any]:
        assert isinstance(args, PaVolumeArgs)  # noqa: S101 - the dispatcher validated it
        # Kept across restarts: the village head turned it down for a reason.
        await asyncio.to_thread(
            write_atomic, self._volume_path, json.dumps({"volume": args.volume}) + "\n"
        )
        return self.player.set_volume(args.volume)

    async def _fetch(self, args: BaseModel, source: Source) -> LongJob:
        """Refuse at once what can be judged at once; download and check in the background."""
        assert isinstance(args, PaClipFetchArgs)  # noqa: S101 - the dispatcher validated it
        try:
            name = self.clips.check_fetch(args.name, args.url, args.sha256)
            _, label = self.clips.identify(args.name)
        except ClipError as exc:
            raise _refusal(exc, "url") from exc  # name, sha256 and url errors name their own
        accepted = {"name": name, "label": label, "url": args.url}
        return LongJob(self._fetch_work(args), accepted=accepted)

    async def _fetch_work(self, args: PaClipFetchArgs) -> dict[str, Any]:
        try:
            info = await self.clips.fetch(
                args.name, args.url, args.sha256, timeout_s=self._pa.fetch_timeout_s
            )
        except ClipError as exc:
            raise _refusal(exc, "url") from exc  # the download or its content
        return info.as_dict()

    async def _delete(self, args: BaseModel, source: Source) -> dict[str, Any]:
        """Remove a stored clip unless it is bundled, playing, queued or scheduled."""
        assert isinstance(args, PaClipDeleteArgs)  # noqa: S101 - the dispatcher validated it
        player = self.player.snapshot()
        items = [player["playing"] or {}, *player["queue"]]
        in_use = {item.get("clip") for item in items} | set(self._clip_users())
        in_use.add(self._pa.chime)
        try:
            info = await self.clips.delete(args.clip, in_use={c for c in in_use if c})
        except ClipError as exc:
            raise _refusal(exc, "clip") from exc
        return {"deleted": info.name, "label": info.label or info.name}

    # ------------------------------------------------------------------ internals

    def _sink(self) -> Sink:
        fmt = self.fmt
        if self._pa.backend == "null":
            lead = 2 * self._pa.frames_per_buffer / fmt.rate
            return NullSink(rate=fmt.rate, channels=fmt.channels, lead_s=lead)
        return PyAudioSink(
            self._pa.device,
            rate=fmt.rate,
            channels=fmt.channels,
            frames_per_buffer=self._pa.frames_per_buffer,
        )

    def _report(self, report: Report) -> None:
        """From the output thread: hand over to the loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_report, report)

    def _on_report(self, report: Report) -> None:
        # A device change is logged once, by the output thread (pa.device_open,
        # pa.device_missing, pa.device_lost): a missing card is one line, not two.
        self.player.on_report(report)
        self._dirty.set()

    def _open_item(self, item: Item) -> PcmReader:
        """In a feeder thread: the decoder for a clip or a live stream."""
        # numpy and libsndfile are loaded by the first decode, not at start-up.
        from gateway.pa.decode import open_clip, open_stream  # noqa: PLC0415

        if item.clip is not None:
            return open_clip(self.clips.path(item.clip), self.fmt)
        assert item.url is not None  # noqa: S101 - pa.play has exactly one of them
        return open_stream(
            item.url,
            self.fmt,
            connect_timeout_s=self._pa.stream_connect_timeout_s,
            guard=self._guard,
        )

    def _open_chime(self) -> PcmReader:
        """The chime clip, or silence if it cannot be played (the item itself still can)."""
        from gateway.pa.decode import open_clip  # noqa: PLC0415 - see _open_item

        try:
            return open_clip(self.clips.path(self._pa.chime), self.fmt)
        except GatewayError as exc:
            _log.warning("pa.chime_unavailable", clip=self._pa.chime, error=str(exc))
            return _Silence()


def _refusal(error: ClipError, field: str) -> CommandError:
    """The reply to a refused clip: its code, its message and ``error.detail``."""
    return CommandError(error.key, str(error), detail=error.detail(field))


def _saved_volume(path: Path, *, default: int) -> int:
    """The master volume last set by ``pa.volume``, or ``pa.volume`` from the config."""
    try:
        volume = json.loads(path.read_text(encoding="utf-8"))["volume"]
    except FileNotFoundError:
        return default
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _log.warning("pa.volume_unreadable", path=str(path), error=str(exc), using=default)
        return default
    if isinstance(volume, int) and not isinstance(volume, bool) and 0 <= volume <= 100:
        return volume
    _log.warning("pa.volume_unreadable", path=str(path), error="not 0-100", using=default)
    return default
