"""The relay bank: lighting and power relays on gpiozero output devices.

One :class:`RelayBank` owns every relay of the board. It builds one gpiozero
``DigitalOutputDevice`` per relay with ``active_high`` and an explicit initial value taken
from the relay's ``power_on`` policy, so the line is never left to chance at start. Every
switch goes through one place that enforces the rules of the board:

* a **minimum switching interval** per relay: requests inside the interval are recorded
  and the relay takes the last requested state at the next allowed moment, so a burst of
  commands ends in the last state with at most one switch per interval;
* **interlock groups**: switching a relay on first switches the others of its group off,
  and it only goes on once they are off;
* ``max_on_s``: a relay on for that long is switched off, whoever switched it on;
* ``for_s`` **timers**: the relay reverts after that long, also across a restart (the
  wall-clock deadline is persisted); any new command for the relay cancels its timer;
* **modes**: ``schedule`` follows :meth:`RelayBank.apply_schedule`; a manual command sets
  ``manual`` until :meth:`RelayBank.auto` or the schedule's next change of desire.

State is persisted to ``state_dir/relays.json`` (temp file, fsync, rename) and published
to the :class:`~gateway.state.StateStore` under ``relays`` after every change.

Boot glitch (the lgpio trap)
----------------------------
``OutputDevice.__init__`` calls ``pin.output_with_state(state)``. The base
implementation is ``pin.function = "output"`` followed by ``pin.state = state``. For
gpiozero's lgpio backend (the default on current Raspberry Pi OS) setting the function
is ``lgpio.gpio_claim_output(handle, gpio)``, whose ``level`` argument defaults to 0: the
line is driven *low* first and only then set to the requested level. On an active-low
relay board that low pulse switches every relay on for a moment at each start. gpiozero's
mock pins show the same order (the line keeps its input level, low when floating, when it
becomes an output). ``RPi.GPIO`` is safe: its pin passes ``initial=`` to ``GPIO.setup``.

:func:`_install_blip_guard` replaces ``output_with_state`` on each relay's pin object
before the device is built, so that the first level the line is driven to is already the
requested one: on lgpio pins it claims the line as an output *with* the level in one
kernel request; on mock pins it brings the simulated line to the level while it is still
an input (as the board's pull resistor does) and then makes it an output. Other backends
keep their own method. ``tests/test_relays.py`` proves this with a recording mock pin.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gpiozero import Device, DigitalOutputDevice, Factory, GPIOZeroError
from gpiozero.pins import Pin

from gateway.clock import local_iso
from gateway.component import Component, EventSink, Health, wait_for_event
from gateway.config import RelayConfig
from gateway.errors import GatewayError
from gateway.files import LatestWriter
from gateway.log import get_logger, info_off_the_hot_path
from gateway.state import StateStore

__all__ = ["MAX_FOR_S", "RelayBank", "RelayError", "factory_name"]

Mode = Literal["schedule", "manual"]

MAX_FOR_S = 86400.0
"""The longest ``for_s`` a ``relay.set`` may ask for (one day)."""

_STATE_FILE = "relays.json"
_STATE_VERSION = 1
_BEAT_S = 5.0
_EPSILON_S = 1e-3

_log = get_logger("relays")


class RelayError(GatewayError):
    """A relay command or the relay hardware failed; ``key`` says how."""

    key = "relay.error"

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        if key is not None:
            self.key = key


def factory_name(factory: object) -> str:
    """The ``GPIOZERO_PIN_FACTORY`` name of a pin factory (``"lgpio"``, ``"mock"`` …).

    Looked up in gpiozero's ``gpiozero_pin_factories`` entry points; a factory that is
    not registered is named by its class, without the ``Factory`` suffix, in lower case.
    """
    from importlib.metadata import entry_points  # noqa: PLC0415  (only needed at open)

    cls = type(factory)
    for klass in cls.__mro__:
        spec = f"{klass.__module__}:{klass.__qualname__}"
        for entry in entry_points(group="gpiozero_pin_factories"):
            if entry.value == spec:
                return str(entry.name)
    return cls.__name__.removesuffix("Factory").lower()


def _blip_free_output(pin: Pin) -> Callable[[bool], None] | None:
    """An ``output_with_state`` for ``pin`` whose first driven level is the wanted one.

    None when the backend needs no help (or is one we do not know).
    """
    lg_module = sys.modules.get("gpiozero.pins.lgpio")
    if lg_module is not None and isinstance(pin, lg_module.LGPIOPin):

        def lgpio_output(state: bool) -> None:
            # One kernel request: direction and level together, no level-0 first.
            if pin.function == "output":
                pin.state = state
                return
            if pin._callback is not None:
                pin._callback.cancel()
                pin._callback = None
            lg_module.lgpio.gpio_claim_output(
                pin.factory._handle,
                pin._number,
                int(bool(state)),
            )

        return lgpio_output

    from gpiozero.pins.mock import MockPin  # noqa: PLC0415  (pure Python, always present)

    if isinstance(pin, MockPin):

        def mock_output(state: bool) -> None:
            # The simulated line takes the level while still an input (what the board's
            # pull resistor does), so becoming an output changes nothing.
            if pin.function == "output":
                pin.state = state
                return
            if state:
                pin.drive_high()
            else:
                pin.drive_low()
            pin.function = "output"

        return mock_output
    return None


def _install_blip_guard(factory: Factory, pin_number: int) -> None:
    """Make ``pin_number``'s pin object claim outputs at the requested level.

    The replacement is bound on the pin *instance* (factories cache one object per pin),
    so gpiozero's own ``OutputDevice.__init__`` calls it; see the module docstring.
    """
    pin = factory.pin(pin_number)
    replacement = _blip_free_output(pin)
    if replacement is not None:
        pin.output_with_state = replacement


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return local_iso(ts)


@dataclass(slots=True)
class _Relay:
    """Everything the bank knows about one relay."""

    name: str
    config: RelayConfig
    device: Any
    on: bool
    """The level the line is driven to, as a device value (True = active)."""
    wanted: bool
    """The last requested state; differs from ``on`` while a switch is deferred."""
    mode: Mode = "schedule"
    source: str | None = None
    changed_at: float | None = None
    until: float | None = None
    """Wall-clock deadline of a pending ``for_s`` revert."""
    until_mono: float | None = None
    revert_to: bool = False
    revert_mode: Mode = "schedule"
    last_switch: float | None = None
    on_since: float | None = None
    """Monotonic time the line went on (for ``max_on_s``)."""
    on_since_wall: float | None = None
    """The same instant on the wall clock: persisted, so ``max_on_s`` outlives a restart."""

    def cancel_timer(self) -> None:
        self.until = None
        self.until_mono = None


class RelayBank(Component):
    """Every relay of the board, with the rules that protect lamps, contactors and people.

    Use: build it, call :meth:`open` once with the schedule's current desire, run
    :meth:`run` under the supervisor, send commands with :meth:`set`/:meth:`auto`, feed
    the scheduler's desire to :meth:`apply_schedule`, and call :meth:`close` on SIGTERM.
    """

    name = "relays"
    critical = True
    heartbeat_timeout_s = 30.0

    def __init__(
        self,
        relays: Mapping[str, RelayConfig],
        *,
        state_dir: Path,
        state: StateStore,
        on_event: EventSink | None = None,
        pin_factory: Factory | None = None,
        expected_factory: str | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._configs = dict(relays)
        self._path = Path(state_dir) / _STATE_FILE
        self._state = state
        self._on_event = on_event
        self._factory = pin_factory
        self._expected_factory = expected_factory
        self._wall = wall
        self._mono = monotonic
        self._relays: dict[str, _Relay] = {}
        self._desired: dict[str, bool] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._pending_events: list[dict[str, Any]] = []
        self._line_waiters: list[tuple[str, bool, asyncio.Future[None]]] = []
        self._file = LatestWriter(self._path, on_error=self._file_failed)
        self._last_saved: str | None = None
        self._last_published: dict[str, Any] | None = None
        self._last_committed: tuple[object, ...] | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def open(self, schedule_desired: Mapping[str, bool]) -> None:
        """Build the output devices at their power-on state; call once, before READY.

        ``schedule_desired`` is the schedule's desire for now, per relay (relays with
        ``power_on = "schedule"`` missing from it start off). Raises :class:`RelayError`
        when gpiozero's pin factory is not ``expected_factory`` (gpiozero only warns when
        it falls back) or a pin cannot be claimed.
        """
        if self._relays:
            raise RelayError("the relay bank is already open", key="relay.already_open")
        factory = self._resolve_factory()
        self._desired = dict(schedule_desired)
        saved = self._load()
        now = self._mono()
        built: list[Any] = []
        try:
            for name, config in self._configs.items():
                relay = self._initial(name, config, saved.get(name), now)
                self._carry_on_time(relay, saved.get(name), now)
                _install_blip_guard(factory, config.pin)
                relay.device = DigitalOutputDevice(
                    config.pin,
                    active_high=config.active_high,
                    initial_value=relay.on,
                    pin_factory=factory,
                )
                built.append(relay.device)
                self._relays[name] = relay
        except GPIOZeroError as exc:
            for device in built:
                device.close()
            self._relays.clear()
            self._file.close()
            raise RelayError(f"cannot claim relay pins: {exc}", key="relay.gpio") from exc
        self._save()
        self._file.flush()  # the power-on state is on the card before READY
        _log.info(
            "relays.opened",
            factory=factory_name(factory),
            relays={n: r.on for n, r in self._relays.items()},
        )

    def close(self, *, shutdown: bool = True) -> None:
        """Drive each relay to its ``shutdown`` state (``off`` or ``hold``), release the pins.

        Called by the App on SIGTERM, before the process exits. The persisted state keeps
        the state from before the stop, so ``power_on = "restore"`` brings it back. Once
        released, an output pin is an input again and the board's pull resistors decide.
        """
        if self._closed:
            return
        self._closed = True
        for relay in self._relays.values():
            try:
                if shutdown and relay.config.shutdown == "off" and relay.on:
                    relay.device.off()
                    relay.on = False
            finally:
                relay.device.close()
        self._file.close()
        _log.info("relays.closed", shutdown=shutdown)

    def force_off(self, name: str) -> None:
        """Drive one relay off now, synchronously: the PA's amplifier fail-safe on SIGTERM,
        which cannot wait for the event loop (no minimum interval, no publish)."""
        relay = self._relays.get(name)
        if relay is None or self._closed:
            return
        relay.cancel_timer()
        relay.device.off()
        relay.on = relay.wanted = False
        relay.on_since = None

    async def run(self, health: Health) -> None:
        """Fire ``for_s`` and ``max_on_s`` timers and deferred switches; beat health."""
        async with self._lock:
            await self._commit()
        while True:
            health.beat()
            async with self._lock:
                self._fire_timers()
                self._settle()
                await self._commit()
            self._wake.clear()
            delay = min(_BEAT_S, max(0.0, self._next_wake() - self._mono()))
            await wait_for_event(self._wake, delay)

    # ------------------------------------------------------------------ commands

    async def set(
        self, name: str, on: bool, *, for_s: float | None = None, source: str
    ) -> dict[str, Any]:
        """Switch ``name`` by hand; with ``for_s`` it reverts after that many seconds.

        Returns the relay's state as in :meth:`snapshot` (``on`` is the line's state;
        ``pending`` is the requested one while the minimum interval defers it).
        """
        relay = self._get(name)
        if for_s is not None and (
            isinstance(for_s, bool)
            or not isinstance(for_s, int | float)
            or not math.isfinite(for_s)
            or not 0 < for_s <= MAX_FOR_S
        ):
            raise RelayError(f"for_s must be > 0 and <= {MAX_FOR_S:.0f}", key="bad_args")
        async with self._lock:
            timer_pending = relay.until is not None
            if for_s is not None:
                if not timer_pending:
                    relay.revert_to = relay.wanted
                    relay.revert_mode = relay.mode
                relay.until = self._wall() + for_s
                relay.until_mono = self._mono() + for_s
            else:
                relay.cancel_timer()
            relay.mode = "manual"
            self._request(relay, bool(on), source)
            if for_s is not None or timer_pending:
                self._wake.set()  # a new or cancelled deadline for the run loop
            self._settle()
            await self._commit()
            return self._relay_state(relay)

    async def drive(self, name: str, on: bool, *, source: str, timeout_s: float = 5.0) -> bool:
        """Switch ``name`` and wait until its line has changed: the port through which
        the PA's amplifier powers itself, without a command to itself and no polling.

        The switch follows the bank's rules (a minimum interval may defer it, an
        interlock may refuse it); returns True once the line is ``on``, False if that did
        not happen within ``timeout_s``. The relay's mode is not changed.
        """
        relay = self._get(name)
        async with self._lock:
            self._request(relay, bool(on), source)
            self._settle()
            await self._commit()
            if relay.on == on:
                return True
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._line_waiters.append((name, bool(on), waiter))
            self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        except TimeoutError:
            return False
        finally:
            self._line_waiters = [w for w in self._line_waiters if w[2] is not waiter]
        return True

    def is_on(self, name: str) -> bool | None:
        """The line's state of ``name`` (None for an unknown relay)."""
        relay = self._relays.get(name)
        return None if relay is None else relay.on

    async def auto(self, name: str, *, source: str) -> dict[str, Any]:
        """Hand ``name`` back to its schedule now: it takes the schedule's last desire.

        A relay the schedule has never mentioned keeps its state, in schedule mode.
        """
        relay = self._get(name)
        async with self._lock:
            relay.cancel_timer()
            relay.mode = "schedule"
            desired = self._desired.get(name)
            self._request(relay, relay.wanted if desired is None else desired, source)
            self._settle()
            await self._commit()
            return self._relay_state(relay)

    async def apply_schedule(self, desired: Mapping[str, bool]) -> None:
        """Take the scheduler's desired state of scheduled relays.

        Relays in schedule mode follow it; a relay in manual mode returns to schedule
        mode when its desire *changes* (the schedule's next edge wins over an override).
        """
        async with self._lock:
            for name, want in desired.items():
                relay = self._relays.get(name)
                if relay is None:
                    _log.warning("relays.schedule_unknown", relay=name)
                    continue
                previous = self._desired.get(name)
                self._desired[name] = bool(want)
                if relay.mode == "schedule":
                    if relay.wanted != want:
                        self._request(relay, bool(want), "schedule")
                elif previous is not None and previous != want:
                    relay.cancel_timer()
                    relay.mode = "schedule"
                    self._request(relay, bool(want), "schedule")
            self._settle()
            await self._commit()

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any]:
        """The ``state/relays`` payload (without ``ts``, which the State store adds)."""
        return {"relays": {name: self._relay_state(r) for name, r in self._relays.items()}}

    def summary(self) -> str | None:
        """A few words for systemd's status line."""
        lit = sum(1 for r in self._relays.values() if r.on)
        return f"{lit}/{len(self._relays)} relays on"

    # ------------------------------------------------------------------ internals

    def _resolve_factory(self) -> Factory:
        factory = self._factory
        if factory is None:
            try:
                Device.ensure_pin_factory()
            except (GPIOZeroError, ImportError) as exc:
                raise RelayError(f"no GPIO pin factory: {exc}", key="relay.gpio") from exc
            factory = Device.pin_factory
        chosen = factory_name(factory)
        if self._expected_factory is not None and chosen != self._expected_factory:
            raise RelayError(
                f"gpiozero chose the {chosen!r} pin factory, expected "
                f"{self._expected_factory!r}; refusing to drive relays",
                key="relay.factory_mismatch",
            )
        return factory

    def _initial(self, name: str, config: RelayConfig, saved: object, now: float) -> _Relay:
        """The power-on state of one relay, from its policy and the persisted state."""
        if not isinstance(saved, dict):
            saved = {}
        policy_on = {
            "off": False,
            "on": True,
            "restore": bool(saved.get("on", False)),
            "schedule": bool(self._desired.get(name, False)),
        }[config.power_on]
        relay = _Relay(name=name, config=config, device=None, on=policy_on, wanted=policy_on)
        relay.source = f"power_on:{config.power_on}"
        if config.power_on == "restore" and saved.get("mode") in ("schedule", "manual"):
            relay.mode = saved["mode"]
        until = saved.get("until")
        if isinstance(until, int | float) and not isinstance(until, bool):
            # A pending for_s outlives the restart: it holds until its deadline, and a
            # passed deadline reverts as if the timer had fired while we were down.
            revert_mode: Mode = "manual" if saved.get("revert_mode") == "manual" else "schedule"
            revert_to = bool(saved.get("revert_to", False))
            left = float(until) - self._wall()
            if left > 0:
                relay.on = relay.wanted = bool(saved.get("on", False))
                relay.mode = "manual"
                relay.until, relay.until_mono = float(until), now + left
                relay.revert_to, relay.revert_mode = revert_to, revert_mode
                relay.source = saved.get("source") or relay.source
            else:
                if revert_mode == "schedule":
                    target = self._desired.get(name, revert_to)
                else:
                    target = revert_to
                relay.on = relay.wanted = bool(target)
                relay.mode = revert_mode
                relay.source = "timer"
            relay.changed_at = self._wall()
        return relay

    def _carry_on_time(self, relay: _Relay, saved: object, now: float) -> None:
        """Count ``max_on_s`` from when the line really went on, also before a restart.

        Without this, an amplifier switched on at 21:00 with ``max_on_s = 7200`` would get
        a fresh two hours after every power cut. A relay whose time ran out while the
        daemon was down starts off instead of pulsing on and off again.
        """
        if not relay.on:
            return
        wall = self._wall()
        started = saved.get("on_since") if isinstance(saved, dict) else None
        was_on = isinstance(saved, dict) and saved.get("on") is True
        if not was_on or not isinstance(started, int | float) or isinstance(started, bool):
            started = wall
        # A clock that jumped back must not make the relay's time longer than it was.
        elapsed = min(max(0.0, wall - float(started)), 366 * 86400.0)
        max_on = relay.config.max_on_s
        if max_on is not None and elapsed + _EPSILON_S >= max_on:
            relay.on = relay.wanted = False
            relay.mode = "manual"
            relay.source = "max_on"
            relay.cancel_timer()
            _log.warning("relay.max_on_at_start", relay=relay.name, on_for_s=round(elapsed))
            return
        relay.on_since = now - elapsed
        relay.on_since_wall = wall - elapsed

    def _get(self, name: str) -> _Relay:
        relay = self._relays.get(name)
        if relay is None:
            raise RelayError(f"no relay named {name!r}", key="unknown_target")
        return relay

    def _peers(self, relay: _Relay) -> list[_Relay]:
        group = relay.config.interlock
        if group is None:
            return []
        return [r for r in self._relays.values() if r is not relay and r.config.interlock == group]

    def _request(self, relay: _Relay, on: bool, source: str) -> None:
        """Record ``on`` as the wanted state; :meth:`_settle` switches when allowed.

        The run loop is woken only when something changed: a relay already in the
        requested state (the commune repeating a command) costs no extra pass.
        """
        changed = relay.wanted != on or relay.on != on
        relay.wanted = on
        relay.source = source
        if on:
            for peer in self._peers(relay):
                if peer.wanted or peer.on:
                    peer.cancel_timer()
                    peer.wanted = False
                    peer.mode = "manual"
                    peer.source = f"interlock:{relay.name}"
                    changed = True
        if changed:
            self._wake.set()

    def _allowed_at(self, relay: _Relay) -> float:
        if relay.last_switch is None:
            return -math.inf
        return relay.last_switch + relay.config.min_switch_interval_s

    def _settle(self) -> None:
        """Switch every relay whose wanted state differs, where the rules allow it now."""
        now = self._mono()
        for relay in self._relays.values():  # offs first: they may unblock an interlock
            if relay.on and not relay.wanted and now + _EPSILON_S >= self._allowed_at(relay):
                self._switch(relay, on=False, now=now)
        for relay in self._relays.values():
            if (
                not relay.on
                and relay.wanted
                and now + _EPSILON_S >= self._allowed_at(relay)
                and not any(peer.on for peer in self._peers(relay))
            ):
                self._switch(relay, on=True, now=now)

    def _switch(self, relay: _Relay, *, on: bool, now: float) -> None:
        if self._closed:
            return
        if on:
            relay.device.on()
        else:
            relay.device.off()
        relay.on = on
        relay.last_switch = now
        relay.on_since = now if on else None
        self._wake.set()  # the next deadline moved (min interval, max_on_s)
        relay.changed_at = self._wall()
        relay.on_since_wall = relay.changed_at if on else None
        event = {
            "type": "relay.switched",
            "relay": relay.name,
            "on": on,
            "source": relay.source,
            "mode": relay.mode,
        }
        self._pending_events.append(event)
        info_off_the_hot_path(
            _log, "relay.switched", relay=relay.name, on=on, source=relay.source, mode=relay.mode
        )

    def _fire_timers(self) -> None:
        now = self._mono()
        for relay in self._relays.values():
            if relay.until_mono is not None and now + _EPSILON_S >= relay.until_mono:
                relay.cancel_timer()
                relay.mode = relay.revert_mode
                target = relay.revert_to
                if relay.mode == "schedule":
                    target = self._desired.get(relay.name, target)
                self._request(relay, target, "timer")
            max_on = relay.config.max_on_s
            if (
                max_on is not None
                and relay.on
                and relay.wanted
                and relay.on_since is not None
                and now + _EPSILON_S >= relay.on_since + max_on
            ):
                relay.cancel_timer()
                relay.mode = "manual"
                self._request(relay, False, "max_on")

    def _next_wake(self) -> float:
        wake = math.inf
        for relay in self._relays.values():
            if relay.on != relay.wanted:
                wake = min(wake, self._allowed_at(relay))
            if relay.until_mono is not None:
                wake = min(wake, relay.until_mono)
            if relay.config.max_on_s is not None and relay.on and relay.on_since is not None:
                wake = min(wake, relay.on_since + relay.config.max_on_s)
        return wake

    def _relay_state(self, relay: _Relay) -> dict[str, Any]:
        return {
            "on": relay.on,
            "mode": relay.mode,
            "until": _rfc3339(relay.until),
            "changed_at": _rfc3339(relay.changed_at),
            "source": relay.source,
            "label": relay.config.label,
            "pending": None if relay.wanted == relay.on else relay.wanted,
        }

    async def _commit(self) -> None:
        """Persist, publish and announce what changed since the last commit."""
        fields = self._fields()
        if fields != self._last_committed:
            # Only then build the JSON and the snapshot: a command that changes nothing
            # (the lights were on already) is common, and both cost more than this check.
            self._last_committed = fields
            self._save()
            snapshot = self.snapshot()
            if snapshot != self._last_published:
                self._last_published = snapshot
                await self._state.set("relays", snapshot)
        events, self._pending_events = self._pending_events, []
        if self._on_event is not None:
            for event in events:
                self._on_event(event)
        for name, on, waiter in self._line_waiters:
            if not waiter.done() and self._relays[name].on == on:
                waiter.set_result(None)

    def _fields(self) -> tuple[object, ...]:
        """Every field the state file and the snapshot are made of, of every relay."""
        return tuple(
            (
                name,
                r.on,
                r.wanted,
                r.mode,
                r.source,
                r.changed_at,
                r.until,
                r.revert_to,
                r.revert_mode,
                r.on_since_wall,
                r.config.label,
            )
            for name, r in self._relays.items()
        )

    # ------------------------------------------------------------------ persistence

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            _log.warning("relays.state_unreadable", path=str(self._path), error=str(exc))
            return {}
        relays = data.get("relays") if isinstance(data, dict) else None
        return relays if isinstance(relays, dict) else {}

    def _save(self) -> None:
        if self._closed:
            return
        record = {
            name: {
                "on": r.on,
                "mode": r.mode,
                "source": r.source,
                "changed_at": r.changed_at,
                "until": r.until,
                "revert_to": r.revert_to,
                "revert_mode": r.revert_mode,
                "on_since": r.on_since_wall,
            }
            for name, r in self._relays.items()
        }
        text = json.dumps({"version": _STATE_VERSION, "relays": record}, sort_keys=True)
        if text == self._last_saved:
            return
        self._file.write(text)  # off the event loop: two fsyncs on an SD card
        self._last_saved = text

    def _file_failed(self, error: OSError) -> None:
        """From the writer thread: the relay switched, only its state file was not written."""
        _log.error(
            "relays.state_not_saved",
            path=str(self._path),
            error=str(error),
            note="the relays did switch; power_on = restore may bring back an older state",
        )

    def flush(self) -> None:
        """Block until the state file holds the latest state (tests, backup)."""
        self._file.flush()
