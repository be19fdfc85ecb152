"""The relay bank on gpiozero's own MockFactory: policies, boot glitches, timers, rules.

Every test runs gpiozero's real device code over mock pins; :class:`RecordingPin` is a
MockPin that also writes down every (function, level) change, in order, so a test can
prove what the line did — not only where it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import json
import math
import sys
import time
import types
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Device, DigitalOutputDevice
from gpiozero.pins.mock import MockFactory, MockPin

from gateway.component import Health
from gateway.config import RelayConfig
from gateway.lighting.bank import RelayBank, RelayError
from gateway.state import StateStore

_ORDER = itertools.count()


class RecordingPin(MockPin):  # type: ignore[misc]  # gpiozero is untyped
    """A MockPin that records ``(order, function, level)`` after every change."""

    def __init__(self, factory: Any, info: Any) -> None:
        self.record: list[tuple[int, str, bool]] = []
        super().__init__(factory, info)

    def _set_function(self, value: str) -> None:
        super()._set_function(value)
        self.record.append((next(_ORDER), self._function, bool(self._state)))

    def _change_state(self, value: bool) -> bool:
        changed: bool = super()._change_state(value)
        if changed:
            self.record.append((next(_ORDER), self._function, bool(self._state)))
        return changed

    def output_levels(self) -> list[bool]:
        """Every level the pin held while it was an output, in order."""
        return [level for _, function, level in self.record if function == "output"]


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    """A MockFactory of recording pins, installed as gpiozero's default and then removed."""
    saved = Device.pin_factory
    mock = MockFactory(pin_class=RecordingPin)
    Device.pin_factory = mock
    try:
        yield mock
    finally:
        mock.reset()
        Device.pin_factory = saved


def relay(pin: int, **options: Any) -> RelayConfig:
    """A relay config with a fast minimum interval unless the test asks otherwise."""
    options.setdefault("min_switch_interval_s", 0.0)
    return RelayConfig(pin=pin, **options)


class Rig:
    """Builds banks on one state dir and cleans them (and their run loops) up."""

    def __init__(self, state_dir: Path, factory: MockFactory) -> None:
        self.state_dir = state_dir
        self.factory = factory
        self.store = StateStore()
        self.events: list[dict[str, Any]] = []
        self.banks: list[RelayBank] = []
        self.tasks: list[asyncio.Task[None]] = []

    def _event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def bank(
        self,
        relays: dict[str, RelayConfig],
        desired: dict[str, bool] | None = None,
        *,
        wall: Callable[[], float] = time.time,
        expected_factory: str | None = "mock",
    ) -> RelayBank:
        """A bank, opened with ``desired`` as the schedule's desire."""
        bank = RelayBank(
            relays,
            state_dir=self.state_dir,
            state=self.store,
            on_event=self._event,
            expected_factory=expected_factory,
            wall=wall,
        )
        bank.open(desired or {})
        self.banks.append(bank)
        return bank

    def start(self, bank: RelayBank) -> Health:
        """Run the bank's timer loop as a task."""
        health = Health(name="relays", critical=True, heartbeat_timeout_s=30)
        self.tasks.append(asyncio.create_task(bank.run(health)))
        return health

    def pin(self, number: int) -> RecordingPin:
        """The recording pin object of BCM ``number``."""
        pin: RecordingPin = self.factory.pin(number)
        return pin

    async def close(self) -> None:
        """Stop every loop, close every bank."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for bank in self.banks:
            bank.close(shutdown=False)


@pytest.fixture
async def rig(tmp_path: Path, factory: MockFactory) -> AsyncIterator[Rig]:
    """A rig whose banks are closed after the test."""
    made = Rig(tmp_path, factory)
    try:
        yield made
    finally:
        await made.close()


async def wait_for(check: Callable[[], bool], within_s: float = 2.0) -> None:
    """Poll ``check`` until it holds; fail after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_power_on_policies(rig: Rig) -> None:
    """Each power_on policy sets the state at start: off and on as named, restore the last
    persisted state (off when nothing was persisted), schedule the schedule's desire for
    now (off when the schedule does not mention the relay)."""
    first = rig.bank({"kept": relay(5, power_on="restore")})
    await first.set("kept", True, source="test")
    first.close()  # shutdown "off" drives it off but keeps "on" as the state to restore
    assert rig.pin(5).state is True  # active-low: off is the high level

    relays = {
        "off": relay(17, power_on="off"),
        "on": relay(27, power_on="on"),
        "kept": relay(5, power_on="restore"),
        "fresh": relay(6, power_on="restore"),
        "dusk": relay(22, power_on="schedule"),
        "unplanned": relay(23, power_on="schedule"),
    }
    bank = rig.bank(relays, {"dusk": True})
    states = {name: s["on"] for name, s in bank.snapshot()["relays"].items()}
    assert states == {
        "off": False,
        "on": True,
        "kept": True,
        "fresh": False,
        "dusk": True,
        "unplanned": False,
    }
    # active-low board: on is the low level
    levels = {name: rig.pin(cfg.pin).state for name, cfg in relays.items()}
    assert levels == {name: not on for name, on in states.items()}


@pytest.mark.parametrize("active_high", [True, False])
@pytest.mark.parametrize("initial", [True, False])
async def test_start_never_drives_the_wrong_level(
    rig: Rig, active_high: bool, initial: bool
) -> None:
    """For every active_high x initial combination, the first and only level the line
    takes as an output is the wanted one: an off relay is never pulsed on at start (and
    an on relay does not pass through off)."""
    power_on = "on" if initial else "off"
    rig.bank({"r": relay(17, active_high=active_high, power_on=power_on)})
    wanted_level = initial == active_high
    assert rig.pin(17).output_levels() == [wanted_level]


def test_library_order_pulses_an_active_low_relay(factory: MockFactory) -> None:
    """The trap we guard against, shown on the library alone: a plain
    ``DigitalOutputDevice(active_high=False, initial_value=False)`` makes the floating
    (low) line an output before writing the level, so the relay sees the active (low)
    level first — lgpio's ``gpio_claim_output(..., level=0)`` does the same on a Pi."""
    device = DigitalOutputDevice(17, active_high=False, initial_value=False)
    try:
        pin: RecordingPin = factory.pin(17)
        assert pin.output_levels() == [False, True]
    finally:
        device.close()


async def test_close_leaves_each_relay_in_its_shutdown_state(rig: Rig) -> None:
    """The SIGTERM path: ``close()`` drives relays with shutdown "off" to the inactive
    level, leaves "hold" relays where they are, and releases every pin."""
    bank = rig.bank(
        {
            "lights": relay(17, power_on="on", shutdown="off"),
            "camera": relay(27, power_on="on", shutdown="hold"),
            "amp": relay(22, power_on="on", shutdown="off", active_high=True),
        }
    )
    bank.close()
    assert rig.pin(17).output_levels()[-1] is True  # active-low off = high
    assert rig.pin(27).output_levels() == [False]  # still on (low), never touched
    assert rig.pin(22).output_levels()[-1] is False  # active-high off = low
    assert all(rig.pin(n).function == "input" for n in (17, 27, 22))
    bank.close()  # a second close is harmless


async def test_for_s_reverts(rig: Rig) -> None:
    """``relay.set`` with ``for_s`` switches now and back after that long, to the state
    and mode from before (here: schedule mode, off)."""
    bank = rig.bank({"yard": relay(17)}, {"yard": False})
    rig.start(bank)
    state = await bank.set("yard", True, for_s=0.3, source="test")
    assert state["on"] is True
    assert state["mode"] == "manual"
    assert state["until"] is not None
    await wait_for(lambda: bank.snapshot()["relays"]["yard"]["on"] is False)
    yard = bank.snapshot()["relays"]["yard"]
    assert yard["mode"] == "schedule"
    assert yard["until"] is None
    assert yard["source"] == "timer"


async def test_for_s_survives_a_restart(rig: Rig) -> None:
    """The for_s deadline is persisted on the wall clock: a bank started before it holds
    the manual state and reverts at the deadline; one started after it comes up
    already reverted."""
    now = [1_800_000_000.0]
    config = {"yard": relay(17, power_on="off")}
    first = rig.bank(config, wall=lambda: now[0])
    await first.set("yard", True, for_s=3600, source="test")
    first.close(shutdown=False)

    now[0] += 3599.7  # restarted 0.3 s before the deadline
    second = rig.bank(config, wall=lambda: now[0])
    assert second.snapshot()["relays"]["yard"]["on"] is True
    assert second.snapshot()["relays"]["yard"]["mode"] == "manual"
    rig.start(second)
    await wait_for(lambda: second.snapshot()["relays"]["yard"]["on"] is False)
    await rig.close()
    rig.banks.clear()
    rig.tasks.clear()

    now[0] = 1_800_000_000.0
    third = rig.bank(config, wall=lambda: now[0])
    await third.set("yard", True, for_s=600, source="test")
    third.close(shutdown=False)
    now[0] += 7200  # restarted long after the deadline
    fourth = rig.bank(config, wall=lambda: now[0])
    yard = fourth.snapshot()["relays"]["yard"]
    assert yard["on"] is False
    assert yard["until"] is None
    assert rig.pin(17).output_levels()[-1] is True  # off on an active-low board


async def test_a_new_command_cancels_the_old_timer(rig: Rig) -> None:
    """An operator's command after a timed one is final: the old for_s timer must not
    later undo it."""
    bank = rig.bank({"yard": relay(17), "porch": relay(27)})
    rig.start(bank)
    await bank.set("yard", True, for_s=0.2, source="test")
    state = await bank.set("yard", True, source="operator")
    assert state["until"] is None
    # A witness timer due after the old one: once it has fired, the old one would have.
    await bank.set("porch", True, for_s=0.3, source="test")
    await wait_for(lambda: bank.snapshot()["relays"]["porch"]["on"] is False)
    yard = bank.snapshot()["relays"]["yard"]
    assert yard["on"] is True
    assert yard["source"] == "operator"


async def test_a_burst_switches_at_most_once_per_interval(rig: Rig) -> None:
    """100 commands a second for one relay: the contactor switches at most once per
    minimum interval, and the relay ends in the last command's state."""
    interval = 0.2
    bank = rig.bank({"yard": relay(17, min_switch_interval_s=interval)})
    rig.start(bank)
    pin = rig.pin(17)
    pin.clear_states()
    last = False
    for i in range(100):
        last = i % 3 != 0
        await bank.set("yard", last, source="burst")
        await asyncio.sleep(0.01)
    await wait_for(lambda: bank.snapshot()["relays"]["yard"]["on"] is last)
    await asyncio.sleep(interval * 1.5)
    assert bank.snapshot()["relays"]["yard"]["on"] is last
    assert pin.state is (not last)  # active-low
    gaps = [change.timestamp for change in pin.states[1:]]
    assert len(gaps) >= 2  # it did switch
    assert gaps[0] >= 0
    assert all(gap >= interval * 0.95 for gap in gaps[1:])
    elapsed = sum(gaps)
    assert len(gaps) <= math.floor(elapsed / interval) + 1


async def test_interlock_turns_the_others_off_first(rig: Rig) -> None:
    """Relays in one interlock group are never on together: switching one on first
    switches the others off, and the line record shows no moment with two active."""
    bank = rig.bank(
        {
            "up": relay(17, interlock="motor", active_high=True),
            "down": relay(27, interlock="motor", active_high=True),
            "lamp": relay(22, active_high=True),
        }
    )
    await bank.set("up", True, source="test")
    await bank.set("lamp", True, source="test")
    await bank.set("down", True, source="test")
    relays = bank.snapshot()["relays"]
    assert (relays["up"]["on"], relays["down"]["on"], relays["lamp"]["on"]) == (False, True, True)
    assert relays["up"]["source"] == "interlock:down"
    timeline = sorted(
        (order, number, level)
        for number in (17, 27)
        for order, function, level in rig.pin(number).record
        if function == "output"
    )
    levels = {17: False, 27: False}
    for _, number, level in timeline:
        levels[number] = level
        assert not (levels[17] and levels[27])


async def test_max_on_switches_off(rig: Rig) -> None:
    """A relay on for max_on_s is switched off, whoever switched it on."""
    bank = rig.bank({"amp": relay(17, max_on_s=0.3)}, {"amp": True})
    rig.start(bank)
    await bank.set("amp", True, source="operator")
    await wait_for(lambda: bank.snapshot()["relays"]["amp"]["on"] is False)
    amp = bank.snapshot()["relays"]["amp"]
    assert amp["source"] == "max_on"
    assert amp["mode"] == "manual"


async def test_max_on_counts_time_before_a_restart(rig: Rig) -> None:
    """max_on_s counts from when the line went on, not from the last start: a restart
    half-way keeps only the half that is left, and one after the time ran out starts
    off (no pulse on) instead of granting a fresh max_on_s."""
    now = [1_800_000_000.0]
    config = {"amp": relay(17, power_on="restore", max_on_s=7200)}
    first = rig.bank(config, wall=lambda: now[0])
    await first.set("amp", True, source="operator")
    first.close(shutdown=False)

    now[0] += 7199.7  # restarted 0.3 s before its time runs out
    second = rig.bank(config, wall=lambda: now[0])
    assert second.snapshot()["relays"]["amp"]["on"] is True
    rig.start(second)
    await wait_for(lambda: second.snapshot()["relays"]["amp"]["on"] is False)
    assert second.snapshot()["relays"]["amp"]["source"] == "max_on"
    await rig.close()
    rig.banks.clear()
    rig.tasks.clear()

    now[0] = 1_800_000_000.0
    third = rig.bank(config, wall=lambda: now[0])
    await third.set("amp", True, source="operator")
    third.close(shutdown=False)
    levels_before = len(rig.pin(17).output_levels())
    now[0] += 3 * 3600  # the power was out longer than max_on_s
    fourth = rig.bank(config, wall=lambda: now[0])
    amp = fourth.snapshot()["relays"]["amp"]
    assert amp["on"] is False
    assert amp["source"] == "max_on"
    # Active-low board: the line never went low (on) during that start.
    assert False not in rig.pin(17).output_levels()[levels_before:]


async def test_bad_commands_raise_keyed_errors(rig: Rig) -> None:
    """An unknown relay is ``unknown_target``; a for_s outside (0, 86400] is ``bad_args``;
    neither switches anything."""
    bank = rig.bank({"yard": relay(17)})
    with pytest.raises(RelayError) as unknown:
        await bank.set("gate", True, source="test")
    assert unknown.value.key == "unknown_target"
    with pytest.raises(RelayError) as unknown_auto:
        await bank.auto("gate", source="test")
    assert unknown_auto.value.key == "unknown_target"
    for bad in (0, -5, 86400.5, math.nan, math.inf):
        with pytest.raises(RelayError) as error:
            await bank.set("yard", True, for_s=bad, source="test")
        assert error.value.key == "bad_args"
    assert bank.snapshot()["relays"]["yard"]["on"] is False
    assert rig.events == []


async def test_the_schedules_next_edge_wins_over_a_manual_override(rig: Rig) -> None:
    """A manual switch holds while the schedule repeats the same desire, and the next
    change of the schedule's desire takes the relay back."""
    bank = rig.bank({"yard": relay(17, power_on="schedule")}, {"yard": True})
    await bank.set("yard", False, source="operator")
    await bank.apply_schedule({"yard": True})
    assert bank.snapshot()["relays"]["yard"]["on"] is False
    await bank.apply_schedule({"yard": False})
    yard = bank.snapshot()["relays"]["yard"]
    assert (yard["on"], yard["mode"]) == (False, "schedule")
    await bank.apply_schedule({"yard": True})
    yard = bank.snapshot()["relays"]["yard"]
    assert (yard["on"], yard["mode"], yard["source"]) == (True, "schedule", "schedule")


async def test_auto_hands_back_at_once(rig: Rig) -> None:
    """``relay.auto`` puts the relay in schedule mode and takes the schedule's last
    desire immediately, without waiting for an edge."""
    bank = rig.bank({"yard": relay(17, power_on="schedule")}, {"yard": True})
    await bank.set("yard", False, for_s=600, source="operator")
    state = await bank.auto("yard", source="operator")
    assert (state["on"], state["mode"], state["until"]) == (True, "schedule", None)


async def test_snapshot_state_events_and_file(rig: Rig) -> None:
    """The snapshot has the PROTOCOL.md shape with RFC 3339 times, it is published to the
    State store, every real switch is an event, and the state file is valid JSON."""
    bank = rig.bank({"yard": relay(17, label="Đèn sân")})
    rig.start(bank)
    await bank.set("yard", True, for_s=60, source="web")
    yard = bank.snapshot()["relays"]["yard"]
    assert set(yard) >= {"on", "mode", "until", "changed_at", "source", "label"}
    assert (yard["on"], yard["mode"], yard["source"], yard["label"]) == (
        True,
        "manual",
        "web",
        "Đèn sân",
    )
    for key in ("until", "changed_at"):
        assert datetime.fromisoformat(yard[key]).utcoffset() is not None
    published = rig.store.snapshot("relays")
    assert published is not None
    assert published["relays"]["yard"] == yard
    assert "ts" in published
    assert rig.events == [
        {"type": "relay.switched", "relay": "yard", "on": True, "source": "web", "mode": "manual"}
    ]
    bank.flush()  # the state file is written off the event loop
    saved = json.loads((rig.state_dir / "relays.json").read_text())
    assert saved["relays"]["yard"]["on"] is True
    assert not list(rig.state_dir.glob(".*.tmp"))


async def test_refuses_another_pin_factory(rig: Rig) -> None:
    """gpiozero only warns when it falls back to another pin factory; the bank refuses
    to drive relays through one it was not told to expect."""
    with pytest.raises(RelayError) as error:
        rig.bank({"yard": relay(17)}, expected_factory="lgpio")
    assert error.value.key == "relay.factory_mismatch"
    assert rig.pin(17).output_levels() == []


class _LgpioLine:
    """What the kernel does with one line: claimed as input (floats to the board's pull)
    or as output at a level. ``driven`` lists every level it was driven to."""

    def __init__(self, pulled_up: bool) -> None:
        self.pulled_up = pulled_up
        self.output = False
        self.level = pulled_up
        self.driven: list[bool] = []

    def drive(self, level: bool) -> None:
        self.output = True
        self.level = level
        self.driven.append(level)


def _lgpio_stand_in(lines: dict[int, _LgpioLine]) -> types.ModuleType:
    """A stand-in for the ``lgpio`` C binding with its documented call signatures
    (``gpio_claim_output(handle, gpio, level=0, lFlags=0)``), so gpiozero's real
    ``LGPIOPin`` code runs on this machine, which has no gpiochip."""
    module = types.ModuleType("lgpio")
    module.SET_PULL_NONE = 0  # type: ignore[attr-defined]
    module.SET_PULL_UP = 1  # type: ignore[attr-defined]
    module.SET_PULL_DOWN = 2  # type: ignore[attr-defined]
    module.BOTH_EDGES = 3  # type: ignore[attr-defined]
    module.RISING_EDGE = 1  # type: ignore[attr-defined]
    module.FALLING_EDGE = 2  # type: ignore[attr-defined]
    module.error = RuntimeError  # type: ignore[attr-defined]

    def line(gpio: int) -> _LgpioLine:
        return lines.setdefault(gpio, _LgpioLine(pulled_up=True))

    def claim_input(handle: int, gpio: int, flags: int = 0) -> int:
        line(gpio).output = False
        line(gpio).level = line(gpio).pulled_up
        return 0

    def claim_output(handle: int, gpio: int, level: int = 0, flags: int = 0) -> int:
        line(gpio).drive(bool(level))
        return 0

    def write(handle: int, gpio: int, level: int) -> int:
        line(gpio).drive(bool(level))
        return 0

    module.gpiochip_open = lambda chip: 7  # type: ignore[attr-defined]
    module.gpiochip_close = lambda handle: 0  # type: ignore[attr-defined]
    module.gpio_claim_input = claim_input  # type: ignore[attr-defined]
    module.gpio_claim_output = claim_output  # type: ignore[attr-defined]
    module.gpio_write = write  # type: ignore[attr-defined]
    module.gpio_read = lambda handle, gpio: int(line(gpio).level)  # type: ignore[attr-defined]
    module.gpio_get_mode = lambda handle, gpio: 2 if line(gpio).output else 0  # type: ignore[attr-defined]
    module.gpio_free = lambda handle, gpio: 0  # type: ignore[attr-defined]
    return module


@pytest.fixture
def lgpio_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, dict[int, _LgpioLine]]]:
    """gpiozero's real LGPIOFactory over the lgpio stand-in, on a Pi 3B board table."""
    lines: dict[int, _LgpioLine] = {}
    monkeypatch.setitem(sys.modules, "lgpio", _lgpio_stand_in(lines))
    sys.modules.pop("gpiozero.pins.lgpio", None)
    lgpio_pins = importlib.import_module("gpiozero.pins.lgpio")

    class Pi3Factory(lgpio_pins.LGPIOFactory):  # type: ignore[misc,name-defined]
        def _get_revision(self) -> int:
            return 0xA02082

    made = Pi3Factory(chip=0)
    try:
        yield made, lines
    finally:
        made.close()
        sys.modules.pop("gpiozero.pins.lgpio", None)
        with contextlib.suppress(AttributeError):
            delattr(sys.modules["gpiozero.pins"], "lgpio")


def test_lgpio_claims_low_first_without_the_guard(
    lgpio_factory: tuple[Any, dict[int, _LgpioLine]],
) -> None:
    """On gpiozero's lgpio pins a plain active-low ``DigitalOutputDevice`` that starts
    off drives the line low (relay on) before high: the boot pulse of the issue."""
    factory, lines = lgpio_factory
    device = DigitalOutputDevice(17, active_high=False, initial_value=False, pin_factory=factory)
    try:
        assert lines[17].driven == [False, True]
    finally:
        device.close()


async def test_lgpio_bank_claims_at_the_inactive_level(
    tmp_path: Path, lgpio_factory: tuple[Any, dict[int, _LgpioLine]]
) -> None:
    """The bank on gpiozero's lgpio pins claims each line as an output already at the
    wanted level, for both polarities, and later switches work through gpiozero."""
    factory, lines = lgpio_factory
    bank = RelayBank(
        {"yard": relay(17, active_high=False), "amp": relay(27, active_high=True)},
        state_dir=tmp_path,
        state=StateStore(),
        pin_factory=factory,
        expected_factory="lgpio",
    )
    bank.open({})
    try:
        assert lines[17].driven == [True]  # active-low off: high, never low
        assert lines[27].driven == [False]
        await bank.set("yard", True, source="test")
        assert lines[17].driven == [True, False]
    finally:
        bank.close()
    assert lines[17].driven == [True, False, True]
