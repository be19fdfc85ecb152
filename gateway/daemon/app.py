"""The App: build everything from Settings, supervise it, stop and reload cleanly.

Order of start-up matters on a Pi after a power cut: the state folder and the HTTP socket
are checked first (errors there are configuration errors, exit 2), then every component
starts under one :class:`asyncio.TaskGroup`, and only then systemd hears READY=1.
SIGTERM/SIGINT stop everything; SIGHUP re-reads the file, applies what can change live
and logs what needs a restart. An invalid file on reload is rejected and the running
configuration kept.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gateway import __version__
from gateway.checks import check_settings
from gateway.clock import now_iso, set_zone
from gateway.commands import Dispatcher, Handler, LogLevelArgs, Source, read_signing_key
from gateway.component import Backoff, Component, Health, supervise
from gateway.config import Settings, flatten, load_settings, parse_settings
from gateway.daemon.parts import Parts
from gateway.errors import ConfigError, StartupError
from gateway.events import EventHub
from gateway.files import write_atomic
from gateway.hotspots import HotspotMonitor
from gateway.hotspots.demo import with_web_port
from gateway.lastgood import Fallback, remember
from gateway.lighting.bank import RelayError
from gateway.lighting.handlers import Control
from gateway.log import get_logger, set_level
from gateway.logupload import LogUploader
from gateway.looplag import LoopLag
from gateway.memory import settle_after_startup
from gateway.metrics import build_registry
from gateway.outbox import Outbox
from gateway.pa import PublicAddress
from gateway.state import StateStore
from gateway.statelock import StateFolderBusyError, StateLock
from gateway.statemetrics import StateCollector
from gateway.system import SystemMonitor, clock_synced
from gateway.systemd import Notifier, watchdog_interval
from gateway.telemetry import Telemetry
from gateway.uplink.client import Topics
from gateway.uplink.downlink import Downlink
from gateway.uplink.link import Link
from gateway.web import HealthReport, WebServer

__all__ = ["LIVE_KEYS", "App"]

_log = get_logger("app")

LIVE_KEYS: tuple[str, ...] = (
    "log.level",
    "log.upload_level",
    "gateway.name",
    "relays.*.label",
    "hotspots.*.label",
)
"""Keys applied on SIGHUP without a restart (``*`` matches one name)."""

STOP_TIMEOUT_S = 4.0
"""Components get this long to finish after SIGTERM; systemd allows more, we promise 5 s."""


def _is_live(key: str) -> bool:
    parts = key.split(".")
    for pattern in LIVE_KEYS:
        wanted = pattern.split(".")
        if len(wanted) == len(parts) and all(
            w in ("*", p) for w, p in zip(wanted, parts, strict=True)
        ):
            return True
    return False


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Every flattened key whose value differs between two configurations."""
    before, after = flatten(old), flatten(new)
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


class App:
    """Builds the daemon from Settings and runs it until asked to stop."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        demo: bool = False,
        extra_components: Sequence[Component] = (),
        notifier: Notifier | None = None,
        backoff: Backoff | None = None,
        watchdog_s: float | None = None,
        uploader: LogUploader | None = None,
        rng: random.Random | None = None,
        fallback: Fallback | None = None,
        settle_memory: bool = False,
    ) -> None:
        self._config_path = config_path
        self.fallback = fallback
        """Set while running on the last good configuration because the file is bad."""
        self._settle_memory = settle_memory
        """After READY, gc.freeze and malloc_trim (gateway/memory.py): for the daemon's
        own process, not for a test suite that builds many Apps in one."""
        set_zone(settings.gateway.timezone)
        self._demo = demo
        self._demo_state_dir: Path | None = None
        self.settings = self._resolve(settings)
        self._notifier = notifier if notifier is not None else Notifier()
        self._backoff = backoff or Backoff()
        self._watchdog_s = watchdog_s if watchdog_s is not None else watchdog_interval()
        self._started = time.monotonic()
        self._started_at = now_iso()
        self._stop = asyncio.Event()
        self.started = asyncio.Event()
        """Set once READY=1 was sent: everything is up."""
        self.restart_required: list[str] = []
        self._extra_components = list(extra_components)
        self._uploader = uploader
        self._rng = rng
        """The link's reconnect jitter; tests pass a seeded one."""
        self.state = StateStore()
        self._parts: Parts | None = None
        self.healths: dict[str, Health] = {}
        self._watchdog_withheld: str | None = None
        self.loop_lag = LoopLag()
        registry = build_registry(
            version=__version__,
            loop_lag=self.loop_lag.stats,
            started=self._started,
            healths=self.healths.values,
            outbox=lambda: self._parts.outbox.stats() if self._parts else None,
            link=lambda: self._parts.link.stats if self._parts else None,
            extra=[
                StateCollector(
                    self.state.all, lambda: self._parts.dispatcher.counts if self._parts else {}
                )
            ],
        )
        self.web = WebServer(
            host=self.settings.web.host,
            port=self.settings.web.port,
            health=self.health_report,
            registry=registry,
            state=self.state,
            settings=self.settings,
            link_online=lambda: self._parts is not None and self._parts.link.stats.connected,
        )

    # -- the parts, once built ----------------------------------------------------------

    @property
    def parts(self) -> Parts:
        """Everything the daemon runs; built by :meth:`run` (an error before that)."""
        if self._parts is None:
            raise RuntimeError("the daemon is not built yet: App.run() builds it")
        return self._parts

    @property
    def outbox(self) -> Outbox:
        """The outbox (see :attr:`parts`)."""
        return self.parts.outbox

    @property
    def events(self) -> EventHub:
        """The events hub (see :attr:`parts`)."""
        return self.parts.events

    @property
    def control(self) -> Control:
        """The relay bank and the scheduler (see :attr:`parts`)."""
        return self.parts.control

    @property
    def pa(self) -> PublicAddress:
        """The loudspeakers (see :attr:`parts`)."""
        return self.parts.pa

    @property
    def hotspots(self) -> HotspotMonitor:
        """The hotspot monitor (see :attr:`parts`)."""
        return self.parts.hotspots

    @property
    def dispatcher(self) -> Dispatcher:
        """The one command path (see :attr:`parts`)."""
        return self.parts.dispatcher

    @property
    def link(self) -> Link:
        """The MQTT session (see :attr:`parts`)."""
        return self.parts.link

    @property
    def components(self) -> tuple[Component, ...]:
        """What runs under the TaskGroup; nothing before :meth:`run` built it."""
        return self._parts.components if self._parts is not None else ()

    async def _build(self) -> Parts:
        """Open the outbox, then make every part that uses it, whole."""
        settings = self.settings
        boot_count = _count_boot(settings.gateway.state_dir)
        outbox = await Outbox.open(
            settings.gateway.state_dir,
            max_bytes=int(settings.outbox.max_mb * 1_000_000),
            commit_window_s=settings.outbox.commit_window_ms / 1000,
        )
        if self._uploader is not None:
            self._uploader.attach(outbox)
        events = EventHub(outbox, feed=self.web.event)
        control = Control(settings, state=self.state, on_event=events.emit, demo=self._demo)
        scheduler = control.scheduler
        pa = PublicAddress(
            settings,
            state=self.state,
            on_event=events.emit,
            relays=control.relays,
            clip_users=lambda: {broadcast.clip for broadcast in scheduler.broadcasts},
        )
        hotspots = HotspotMonitor(
            settings.hotspots, settings.uplink, state=self.state, on_event=events.emit
        )
        handlers: dict[str, Handler] = {
            "system.ping": self._ping,
            "log.level": self._log_level,
            "hotspots.probe": self._hotspots_probe,
            **control.handlers(),
            **pa.handlers(),
        }
        dispatcher = Dispatcher(
            state_dir=settings.gateway.state_dir,
            handlers=handlers,
            outbox=outbox,
            events=events,
            clock_synced=clock_synced,
            default_ttl_s=settings.commands.default_ttl_s,
            max_bytes=settings.commands.max_bytes,
        )
        link = Link(
            settings,
            outbox,
            self.state,
            on_command=Downlink(
                dispatcher,
                Topics(settings.mqtt.topic_prefix, settings.gateway.id),
                settings.gateway.groups,
                hmac_key=_read_key(settings.commands.hmac_key_file),
                rate_per_s=settings.commands.max_per_s,
                burst=settings.commands.burst,
            ),
            started_at=self._started_at,
            boot_count=boot_count,
            clock_synced=clock_synced,
            rng=self._rng,
        )
        system = SystemMonitor(
            self.state, details=self._system_details, refresh=outbox.refresh_oldest_age
        )
        telemetry = Telemetry(
            outbox,
            state_dir=settings.gateway.state_dir,
            interval_s=settings.telemetry.interval_s,
            extra=self._telemetry_extra,
        )
        try:
            control.open(dispatcher.dispatch)
        except RelayError as exc:
            raise StartupError.single("relays", str(exc)) from exc
        pa.open()
        components = (
            control.relays,
            control.scheduler,
            pa,
            system,
            link,
            telemetry,
            hotspots,
            self.loop_lag,
            *self._extra_components,
        )
        self.healths.update(
            (c.name, Health(c.name, c.critical, c.heartbeat_timeout_s)) for c in components
        )
        return Parts(outbox, events, control, pa, hotspots, dispatcher, link, components)

    def handled_types(self) -> list[str]:
        """The command types this gateway runs (others answer ``not_available``)."""
        return sorted(self.dispatcher.handled_types())

    async def _hotspots_probe(self, args: BaseModel, source: Source) -> dict[str, Any]:
        return await self.hotspots.probe_now()

    async def _ping(self, args: BaseModel, source: Source) -> dict[str, Any]:
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "clock_synced": clock_synced(),
            "outbox": self.outbox.stats().total_depth(),
        }

    async def _log_level(self, args: BaseModel, source: Source) -> dict[str, Any]:
        assert isinstance(args, LogLevelArgs)  # noqa: S101 - the dispatcher validated it
        set_level(args.level)
        return {"level": args.level}

    def _system_details(self) -> dict[str, Any]:
        """The outbox and link parts of the ``system`` snapshot."""
        stats = self.outbox.stats()
        return {
            "started_at": self._started_at,
            "outbox": {
                "depth": stats.depth,
                "dropped": stats.dropped,
                "bytes": stats.bytes,
                "disk_bytes": stats.disk_bytes,
                "oldest_age_s": stats.oldest_age_s,
                "epoch": stats.epoch,
            },
            "link": self.link.stats.as_dict(),
            "schedules": self.control.scheduler.snapshot(),
            "config_status": "ok" if self.fallback is None else "last_good",
            "config_problems": [] if self.fallback is None else self.fallback.problem_dicts(),
        }

    def _telemetry_extra(self) -> dict[str, Any]:
        """What the daemon adds to each telemetry sample: outbox depth, hotspot figures."""
        return {"outbox_depth": self.outbox.stats().total_depth(), **self.hotspots.telemetry()}

    def _resolve(self, settings: Settings) -> Settings:
        """In demo mode, state goes to one temporary folder (removed at stop) unless one is
        configured, and the demo's own hotspot probes the web port actually in use."""
        if not self._demo:
            return settings
        settings = with_web_port(settings)
        if "state_dir" in settings.gateway.model_fields_set:
            return settings
        if self._demo_state_dir is None:
            self._demo_state_dir = Path(tempfile.mkdtemp(prefix="village-gateway-demo-"))
        gateway = settings.gateway.model_copy(update={"state_dir": self._demo_state_dir})
        return settings.model_copy(update={"gateway": gateway})

    # -- health -----------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Why the daemon is not healthy: critical components down or hung."""
        return [
            problem
            for health in self.healths.values()
            if health.critical and (problem := health.problem()) is not None
        ]

    def health_report(self) -> HealthReport:
        """The body of ``/healthz``."""
        problems = self.problems()
        details: dict[str, Any] = {
            "gateway": self.settings.gateway.id,
            "name": self.settings.gateway.name,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "components": {name: h.as_dict() for name, h in self.healths.items()},
            "problems": problems,
            "restart_required": self.restart_required,
            "demo": self._demo,
        }
        return HealthReport(healthy=not problems, details=details)

    def status_line(self) -> str:
        """The short STATUS= text for ``systemctl status``."""
        parts = [text for c in self.components if (text := c.summary())]
        problems = self.problems()
        if problems:
            parts.insert(0, "; ".join(problems))
        if self.restart_required:
            parts.append("restart needed for " + ", ".join(self.restart_required))
        return " · ".join(parts) or "running"

    # -- life cycle -------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the daemon to stop (what SIGTERM does)."""
        self._stop.set()

    async def run(self) -> int:
        """Start, run until stopped, stop. Returns the exit status (0)."""
        state_dir = self.settings.gateway.state_dir
        _prepare_state_dir(state_dir)
        lock = _lock_state_dir(state_dir)
        try:
            return await self._run()
        finally:
            lock.release()

    async def _run(self) -> int:
        self._parts = parts = await self._build()
        self._settle_config()
        self.web.attach(
            dispatcher=parts.dispatcher, scheduler=parts.control.scheduler, clips=parts.pa.clips
        )
        try:
            await self.web.start()
        except BaseException:
            parts.pa.close()
            parts.control.close()
            await self._close_outbox()
            raise
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        _log.info(
            "app.started",
            version=__version__,
            gateway=self.settings.gateway.id,
            demo=self._demo,
            state_dir=str(self.settings.gateway.state_dir),
            http_port=self.web.port,
        )
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(
                        supervise(c, self.healths[c.name], backoff=self._backoff),
                        name=f"component:{c.name}",
                    )
                    for c in self.components
                ]
                tasks.append(group.create_task(self._watchdog(), name="watchdog"))
                # Commands claimed before a crash or stop and never answered.
                tasks.append(group.create_task(self._recover(), name="recover"))
                self._notifier.ready(self.status_line())
                self.started.set()
                if self._settle_memory:
                    settle_after_startup()
                await self._stop.wait()
                _log.info("app.stopping")
                parts.pa.close()  # amplifier off first: within 1 s of SIGTERM
                self._notifier.stopping()
                await parts.link.publish_offline()
                for task in tasks:
                    task.cancel()
                await _wait_bounded(tasks, STOP_TIMEOUT_S)
                parts.control.close()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            await self.web.stop()
            _log.info("app.stopped")
            await self._close_outbox()
            self._notifier.close()
            if self._demo_state_dir is not None:
                # A temporary state folder is the demo's own: leave nothing in /tmp.
                shutil.rmtree(self._demo_state_dir, ignore_errors=True)
        return 0

    async def _recover(self) -> None:
        await self.dispatcher.recover()

    async def _close_outbox(self) -> None:
        """Hand logging back to the terminal only, then commit and close the outbox."""
        parts = self._parts
        if parts is not None:
            parts.dispatcher.close()
        if self._uploader is not None:
            self._uploader.attach(None)
        if parts is not None:
            await parts.outbox.close()

    async def _watchdog(self) -> None:
        """Ping systemd at half its watchdog period, only while every critical part is ok.

        The loop itself proves the event loop turns; the health check proves no critical
        component hangs. The STATUS line is refreshed on the same beat.
        """
        interval = self._watchdog_s or 5.0
        while True:
            problems = self.problems()
            if problems:
                reason = "; ".join(problems)
                if reason != self._watchdog_withheld:
                    _log.error("watchdog.withheld", reason=reason)
                self._watchdog_withheld = reason
            else:
                if self._watchdog_withheld is not None:
                    _log.info("watchdog.resumed")
                self._watchdog_withheld = None
            fields: dict[str, str | int] = {"STATUS": self.status_line()}
            if self._watchdog_s and not problems:
                fields["WATCHDOG"] = 1
            self._notifier.notify(**fields)
            await asyncio.sleep(interval)

    # -- last good configuration ------------------------------------------------------

    def _settle_config(self) -> None:
        """Keep a file that passed as the last good copy, or tell of running on the copy."""
        if self.fallback is not None:
            self.events.emit(
                {
                    "type": "system.config_fallback",
                    "config": self.fallback.config,
                    "problems": self.fallback.problem_dicts(),
                    "last_good_saved_at": self.fallback.copy.saved_at,
                }
            )
            return
        self._remember(self.settings)

    def _remember(self, settings: Settings) -> None:
        """Keep the file as the last good copy if it is what ``settings`` were read from."""
        path = self._config_path
        if path is None or self._demo:
            return
        try:
            text = path.read_text(encoding="utf-8")
            if self._resolve(parse_settings(text, source=str(path))) != settings:
                return  # changed since it was read: that text never passed
            remember(settings.gateway.state_dir, path, text)
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            _log.warning("config.last_good_not_saved", error=str(exc))

    # -- reload -----------------------------------------------------------------------

    def _on_sighup(self) -> None:
        asyncio.get_running_loop().create_task(self.reload(), name="reload")

    async def reload(self) -> bool:
        """Re-read the configuration; apply it if valid. Returns True when applied."""
        self._notifier.reloading()
        try:
            new = self._resolve(load_settings(self._config_path, demo=self._demo))
            check_settings(new).raise_errors(str(self._config_path))
        except ConfigError as exc:
            for problem in exc.problems:
                _log.error("config.reload_problem", key=problem.key, problem=problem.message)
            _log.error(
                "config.reload_rejected",
                source=exc.source,
                problems=[str(p) for p in exc.problems],
                kept="the running configuration",
            )
            self._notifier.ready(self.status_line())
            return False
        changed = changed_keys(self.settings, new)
        live = [key for key in changed if _is_live(key)]
        needs_restart = [key for key in changed if not _is_live(key)]
        for component in self.components:
            needs_restart += await component.reload(new)
        if "log.level" in live:
            set_level(new.log.level)
        if "log.upload_level" in live and self._uploader is not None:
            self._uploader.set_level(new.log.upload_level)
        self.settings = new
        if self.fallback is not None:
            _log.info("config.fallback_ended", config=self.fallback.config)
            self.fallback = None
            for component in self.components:
                if isinstance(component, SystemMonitor):  # the banner goes at once
                    await self.state.set("system", component.measure())
        self._remember(new)
        self.restart_required = sorted(set(self.restart_required) | set(needs_restart))
        _log.info("config.reloaded", applied=live, restart_required=sorted(set(needs_restart)))
        if needs_restart:
            _log.warning("config.restart_required", keys=self.restart_required)
        self._notifier.ready(self.status_line())
        return True


def _read_key(path: Path | None) -> bytes | None:
    """The command-signing key, if one is configured."""
    if path is None:
        return None
    return read_signing_key(path, name="commands.hmac_key_file", error=StartupError)


def _count_boot(state_dir: Path) -> int:
    """How many times the daemon has started with this state folder (this start included)."""
    path = state_dir / "boot_count"
    try:
        count = int(path.read_text().strip()) + 1
    except (FileNotFoundError, ValueError):
        count = 1
    write_atomic(path, f"{count}\n")
    return count


def _prepare_state_dir(path: Path) -> None:
    """Create the state folder and prove we can write there, before anything relies on it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise StartupError.single(
            "gateway.state_dir", f"{path} is not a writable folder: {exc.strerror or exc}"
        ) from exc


def _lock_state_dir(path: Path) -> StateLock:
    """Hold the state folder for this daemon alone (see :mod:`gateway.statelock`)."""
    lock = StateLock(path)
    try:
        lock.acquire()
    except StateFolderBusyError as exc:
        raise StartupError.single(
            "gateway.state_dir",
            f"{exc}: stop it first (sudo systemctl stop village-gateway), or give this "
            "one a gateway.state_dir of its own",
        ) from exc
    except OSError as exc:
        raise StartupError.single(
            "gateway.state_dir", f"cannot lock {lock.path}: {exc.strerror or exc}"
        ) from exc
    return lock


async def _wait_bounded(tasks: Sequence[asyncio.Task[Any]], limit_s: float) -> None:
    """Wait for cancelled tasks, but never longer than ``limit_s``: we promised 5 s."""
    with suppress(TimeoutError):
        async with asyncio.timeout(limit_s):
            await asyncio.gather(*tasks, return_exceptions=True)
    stuck = [t.get_name() for t in tasks if not t.done()]
    if stuck:
        _log.error("app.stop_timeout", stuck=stuck)
