"""The PA player: a priority queue with preemption, fades, chime, resume, repeat, volume.

Priorities, highest first: emergency > live > announcement > scheduled > background
(the commune's bulletin levels khẩn cấp, ưu tiên, thông thường are emergency,
announcement, scheduled). Same priority plays in arrival order. An item of a higher
priority than the one playing cuts in at once: the decoded-ahead audio of the old item
is dropped, the next ``fade_s`` of it is faded to silence, then the chime (if asked)
and the new item follow. The interrupted item goes back to the head of its priority
to resume where it was cut (``resume: true``) or is dropped (``resume: false``); an
event says which.

Everything here runs on the event loop and never blocks: each run of an item gets a
decoder thread (a *feeder*) that decodes ahead into the output's bounded queue, and the
output thread reports back (first sample handed over, end handed over, device lost)
through ``loop.call_soon_threadsafe``. Each run has a *token*, larger than every earlier
one, so "drop everything older" is one comparison in the output thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as dtime
from typing import Any, Protocol

from gateway.clock import now_iso
from gateway.commands import PRIORITIES, CommandError, Priority
from gateway.component import EventSink
from gateway.errors import GatewayError
from gateway.log import get_logger
from gateway.pa.output import Chunk, Output, Report, volume_gain

__all__ = ["RANK", "Item", "Player", "QuietHours", "Source"]

_log = get_logger("pa.player")

RANK = {name: rank for rank, name in enumerate(PRIORITIES)}
"""0 is emergency, the highest."""
QUIET_SKIPPED = ("scheduled", "background")
"""What quiet hours skip; announcement and above play."""
_SPAN = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


class Source(Protocol):
    """What the player reads PCM from (``gateway.pa.decode.PcmSource`` fits)."""

    def read(self, frames: int) -> bytes:
        """Up to ``frames`` frames; b"" at the end."""

    def close(self) -> None:
        """Idempotent; may be called from another thread to abort a blocking read."""


class QuietHours:
    """Spans of local time like ``"22:00-05:30"`` (may cross midnight)."""

    def __init__(self, spans: list[str]) -> None:
        self.spans: list[tuple[dtime, dtime]] = []
        for span in spans:
            match = _SPAN.fullmatch(span)
            if match is None:
                raise ValueError(f"not HH:MM-HH:MM: {span!r}")
            h1, m1, h2, m2 = (int(g) for g in match.groups())
            self.spans.append((dtime(h1, m1), dtime(h2, m2)))

    def contains(self, moment: dtime) -> bool:
        """Whether ``moment`` falls in a span (start included, end excluded)."""
        for start, end in self.spans:
            inside = start <= moment < end if start <= end else moment >= start or moment < end
            if inside:
                return True
        return False


@dataclass(slots=True)
class Item:
    """One pa.play: what, how, and how far it got."""

    id: str
    priority: Priority
    clip: str | None = None
    url: str | None = None
    volume: int | None = None
    repeat: int = 1
    chime: bool = False
    resume: bool = True
    source: str = "mqtt"
    seq: int = 0
    part: int = 0
    """The repeat to start at (resuming)."""
    offset: int = 0
    """The frame in that repeat to start at (resuming a clip; a stream restarts)."""
    resumed: bool = False

    def describe(self) -> dict[str, Any]:
        """For the state's queue and for events."""
        what: dict[str, Any] = {"clip": self.clip} if self.clip is not None else {"url": self.url}
        return {"item": self.id, **what, "priority": self.priority}


class Amp(Protocol):
    """What the player needs of the amplifier (``gateway.pa.amplifier.Amplifier``)."""

    def ready(self) -> bool:
        """On and warmed up (or there is no amplifier relay)."""

    async def acquire(self) -> None:
        """Switch on if needed and wait out the warm-up."""

    def release(self) -> None:
        """Nothing plays: switch off after the idle time."""

    async def off_now(self, reason: str) -> None:
        """Fail-safe: off at once."""

    @property
    def on(self) -> bool:
        """What the relay was last switched to."""


@dataclass(slots=True)
class _Run:
    item: Item
    token: int
    part: int
    offset: int
    stop: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)
    source: Source | None = None
    started_at: str | None = None


class Player:
    """The queue and the current run. Call the public methods on the event loop."""

    def __init__(
        self,
        output: Output,
        *,
        open_source: Callable[[Item], Source],
        open_chime: Callable[[], Source] | None,
        on_event: EventSink,
        on_change: Callable[[], None],
        amplifier: Amp,
        queue_max: int = 50,
        volume: int = 80,
        emergency_volume: int = 100,
        quiet_hours: QuietHours | None = None,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self._output = output
        self._open = open_source
        self._open_chime = open_chime
        self._on_event = on_event
        self._on_change = on_change
        self._amp = amplifier
        self.queue_max = queue_max
        self.volume = volume
        self.emergency_volume = emergency_volume
        self._quiet = quiet_hours or QuietHours([])
        self._now = now
        self._queue: list[tuple[int, int, Item]] = []
        self._seq = itertools.count(1)
        self._tokens = itertools.count(1)
        self._current: _Run | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.first_sample: Callable[[str, float], None] | None = None
        """Benchmarks hook here: (item id, monotonic time the first write returned)."""
        output.set_master(volume_gain(volume))

    # ------------------------------------------------------------------ commands

    async def play(self, item: Item) -> dict[str, Any]:
        """Queue ``item`` or cut in; refuses with ``queue_full`` when the queue is full."""
        self._loop = asyncio.get_running_loop()
        if self._quiet_now(item):
            self._skip(item)
            return {**item.describe(), "status": "skipped", "reason": "quiet_hours"}
        if len(self._queue) >= self.queue_max and not self._evict_for(item):
            raise CommandError(
                "queue_full",
                f"the PA queue holds {self.queue_max} items (pa.queue_max); "
                "nothing of a lower priority to make room",
            )
        item.seq = next(self._seq)
        heapq.heappush(self._queue, (RANK[item.priority], item.seq, item))
        self._advance()
        playing = self._current is not None and self._current.item is item
        position = next((i for i, q in enumerate(self._sorted_queue()) if q is item), None)
        self._on_change()
        return {
            **item.describe(),
            "status": "playing" if playing else "queued",
            **({} if playing else {"position": position}),
        }

    async def stop(self, scope: str) -> dict[str, Any]:
        """Stop the current item (``current``) or it and the whole queue (``all``)."""
        cleared = 0
        if scope == "all":
            cleared = len(self._queue)
            self._queue.clear()
        run, stopped = self._current, None
        if run is not None:
            stopped = run.item.id
            self._interrupt(run, "stopped", fade=False)
            self._emit({"type": "pa.finished", **run.item.describe(), "stopped": True})
        self._advance()
        self._idle_check()
        self._on_change()
        return {"stopped": stopped, "cleared": cleared}

    def set_volume(self, volume: int) -> dict[str, Any]:
        """Master volume 0-100; the output ramps to it."""
        self.volume = volume
        self._output.set_master(volume_gain(volume))
        self._on_change()
        return {"volume": volume}

    def abort_all(self) -> None:
        """Shutdown: stop the feeders; the output is closed by its owner."""
        if self._current is not None:
            self._current.stop.set()
            with contextlib.suppress(Exception):
                if self._current.source is not None:
                    self._current.source.close()

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any]:
        """The player's part of ``state/pa``."""
        playing = None
        run = self._current
        if run is not None:
            part, offset, _ = self._output.progress(run.token)
            playing = {
                **run.item.describe(),
                "started_at": run.started_at,
                "position_s": round(max(0, offset) / self._output.rate, 1) if part >= 0 else 0.0,
                "repeat": run.item.repeat,
                "part": max(part, 0) + 1,
                "state": "playing" if run.started_at else "starting",
            }
        return {
            "playing": playing,
            "queue": [item.describe() for item in self._sorted_queue()],
            "queue_max": self.queue_max,
            "volume": self.volume,
            "emergency_volume": self.emergency_volume,
        }

    # ------------------------------------------------------------------ reports

    def on_report(self, report: Report) -> None:
        """From the output thread, delivered on the loop."""
        run = self._current
        if report.kind == "device":
            self._on_change()
            self._advance()
            return
        if run is None or report.token != run.token:
            return
        if report.kind == "started":
            run.started_at = now_iso("milliseconds")
            if self.first_sample is not None:
                self.first_sample(run.item.id, report.at)
            self._emit({"type": "pa.started", **run.item.describe(), "resumed": run.item.resumed})
        elif report.kind == "finished":
            self._end(run)
            self._emit({"type": "pa.finished", **run.item.describe()})
            self._advance()
            self._idle_check()
        elif report.kind == "lost":
            self._interrupt(run, "device_lost", fade=False)
            self._spawn(self._amp.off_now("device_lost"))
        self._on_change()

    def _failed(self, token: int, key: str, message: str) -> None:
        """From a feeder: its source would not open or decode."""
        run = self._current
        if run is None or run.token != token:
            return
        self._output.cut(token + 1, fade=False)
        self._end(run)
        self._emit({"type": "pa.failed", **run.item.describe(), "reason": key, "message": message})
        _log.warning("pa.failed", item=run.item.id, reason=key, message=message)
        self._spawn(self._amp.off_now(key))
        self._advance()
        self._on_change()

    # ------------------------------------------------------------------ internals

    def _sorted_queue(self) -> list[Item]:
        return [item for _, _, item in sorted(self._queue)]

    def _quiet_now(self, item: Item) -> bool:
        return item.priority in QUIET_SKIPPED and self._quiet.contains(self._now().time())

    def _skip(self, item: Item) -> None:
        self._emit({"type": "pa.failed", **item.describe(), "reason": "quiet_hours"})

    def _evict_for(self, item: Item) -> bool:
        """Make room by dropping the newest queued item of a lower priority."""
        worst = max(self._queue, default=None)
        if worst is None or worst[0] <= RANK[item.priority]:
            return False
        self._queue.remove(worst)
        heapq.heapify(self._queue)
        self._emit({"type": "pa.failed", **worst[2].describe(), "reason": "evicted"})
        return True

    def _advance(self) -> None:
        """Start the best queued item if nothing plays, or cut in if it outranks the run."""
        if self._output.state == "degraded":
            return
        while self._queue:
            rank, _, best = self._queue[0]
            run = self._current
            if run is not None and rank >= RANK[run.item.priority]:
                return
            heapq.heappop(self._queue)
            if self._quiet_now(best):
                self._skip(best)
                continue
            if run is not None:
                self._interrupt(run, "preempted", by=best.id, fade=True)
            self._start(best)
            return

    def _start(self, item: Item) -> None:
        token = next(self._tokens)
        run = _Run(item, token, item.part, item.offset)
        self._current = run
        thread = threading.Thread(target=self._feed, args=(run,), name=f"pa-feed-{token}")
        thread.daemon = True
        thread.start()
        if self._amp.ready():
            run.go.set()
        else:
            self._spawn(self._warm(run))

    async def _warm(self, run: _Run) -> None:
        try:
            await self._amp.acquire()
        except Exception as exc:  # the amplifier may be broken; the line output is not
            _log.error("pa.amp_failed", error=str(exc), exc_info=exc)
        run.go.set()

    def _interrupt(self, run: _Run, reason: str, *, by: str | None = None, fade: bool) -> None:
        """Stop a run; requeue its item to resume, or drop it, and say which."""
        run.stop.set()
        if run.source is not None:
            with contextlib.suppress(Exception):
                run.source.close()
        self._output.cut(run.token + 1, fade=fade)
        part, offset, frames = self._output.progress(run.token)
        self._end(run)
        item = run.item
        keep = item.resume and reason != "stopped"
        if keep:
            if frames and part >= 0:
                item.part, item.offset = part, offset if item.url is None else 0
            item.resumed = frames > 0 or item.resumed
            heapq.heappush(self._queue, (RANK[item.priority], item.seq, item))
        if reason == "stopped":
            return
        event = {
            "type": "pa.preempted" if reason == "preempted" else "pa.failed",
            **item.describe(),
            "reason": reason,
            "then": "resume" if keep else "drop",
            "position_s": round(offset / self._output.rate, 2) if part >= 0 else 0.0,
        }
        if by is not None:
            event["by"] = by
        self._emit(event)

    def _end(self, run: _Run) -> None:
        run.stop.set()
        self._output.forget(run.token)
        if self._current is run:
            self._current = None

    def _idle_check(self) -> None:
        if self._current is None and not self._queue:
            self._amp.release()

    def _item_gain(self, item: Item) -> tuple[float, bool]:
        if item.priority == "emergency":
            volume = item.volume if item.volume is not None else self.emergency_volume
            return volume_gain(volume), True
        return volume_gain(item.volume if item.volume is not None else 100), False

    def _emit(self, event: dict[str, Any]) -> None:
        self._on_event(event)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    # ------------------------------------------------------------------ feeder thread

    def _feed(self, run: _Run) -> None:
        """Decode ahead: open each part, read chunks, hand them to the output queue."""
        item, out = run.item, self._output
        gain, fixed = self._item_gain(item)
        width = 2 * out.channels
        parts: list[int] = []
        if item.chime and not item.resumed and self._open_chime is not None:
            parts.append(-1)
        parts.extend(range(run.part, item.repeat))
        first = True
        try:
            for part in parts:
                source = self._open_chime() if part == -1 else self._open(item)  # type: ignore[misc]
                run.source = source
                try:
                    offset = run.offset if part == run.part and item.url is None else 0
                    skipped = _skip(source, offset, width, run.stop)
                    while not run.stop.is_set():
                        data = source.read(out.chunk_frames)
                        if not data:
                            break
                        if first and not _wait(run.go, run.stop):
                            return
                        chunk = Chunk(run.token, data, gain, fixed, part, skipped, first=first)
                        if not out.put(chunk, run.stop):
                            return
                        first = False
                        skipped += len(data) // width
                finally:
                    source.close()
                if run.stop.is_set():
                    return
            if first and not _wait(run.go, run.stop):
                return
            out.put(Chunk(run.token, b"", gain, fixed, first=first, last=True), run.stop)
        except GatewayError as exc:
            self._call(self._failed, run.token, getattr(exc, "key", "bad_audio"), str(exc))
        except Exception as exc:  # a decoder bug must not leave the run hanging
            _log.error("pa.feeder_crashed", item=item.id, exc_info=exc)
            self._call(self._failed, run.token, "internal", f"{type(exc).__name__}: {exc}")


def _skip(source: Source, frames: int, width: int, stop: threading.Event) -> int:
    """Read and drop ``frames`` (resuming a clip); returns how many were dropped."""
    done = 0
    while done < frames and not stop.is_set():
        data = source.read(min(frames - done, 8192))
        if not data:
            break
        done += len(data) // width
    return done


def _wait(go: threading.Event, stop: threading.Event) -> bool:
    """Wait for the amplifier's warm-up; False if the run was stopped meanwhile."""
    while not go.wait(0.02):
        if stop.is_set():
            return False
    return not stop.is_set()
