"""Hardware-in-the-loop: the relay bank's outputs read back through wired input pins.

Each relay output pin is wired to an input pin (``VG_HIL_PAIRS="17:5,27:6"``, BCM
numbers, output:input). The same tests run on two rigs (see ``hil/README.md``):

* **real**: ``GPIOZERO_PIN_FACTORY`` names a hardware factory (``lgpio`` on a Pi); the
  pairs must be set, or every test is skipped with the reason; a lock file keeps two runs
  off the rig at once;
* **simulated** (``GPIOZERO_PIN_FACTORY`` unset or ``mock``): gpiozero's MockFactory with
  each output a ``MockConnectedPin`` that drives its input mock pin.

Either way the levels are read by a gpiozero ``DigitalInputDevice`` on the input pin,
and edges are counted through its ``when_activated``/``when_deactivated`` callbacks.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Device, DigitalInputDevice, Factory
from gpiozero.pins.mock import MockConnectedPin, MockFactory

from gateway.component import Health
from gateway.config import RelayConfig
from gateway.lighting.bank import RelayBank
from gateway.state import StateStore

DEFAULT_PAIRS = "17:5,27:6,22:13,23:19"
LOCK_PATH = Path(os.environ.get("VG_HIL_LOCK", "/tmp/village-gateway-hil.lock"))  # noqa: S108


def _pairs(text: str) -> list[tuple[int, int]]:
    pairs = []
    for item in text.split(","):
        out_pin, _, in_pin = item.strip().partition(":")
        pairs.append((int(out_pin), int(in_pin)))
    return pairs


def _factory_env() -> str:
    return os.environ.get("GPIOZERO_PIN_FACTORY", "mock").lower()


SIMULATED = _factory_env() == "mock"


@pytest.fixture(scope="session")
def rig_lock() -> Iterator[None]:
    """On real pins, hold the rig's lock file for the whole run (waits for another run)."""
    if SIMULATED:
        yield
        return
    with LOCK_PATH.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class Probe:
    """An input pin wired to a relay output, with the edges it saw."""

    device: Any
    active_level: bool
    """The electrical level the input device calls "active"."""
    edges: list[tuple[float, bool]] = field(default_factory=list)

    @property
    def level(self) -> bool:
        """The electrical level on the wire (True = high)."""
        return bool(self.device.value) == self.active_level

    def _edge(self, level: bool) -> Callable[[], None]:
        def seen() -> None:
            self.edges.append((time.monotonic(), level))

        return seen

    def watch(self) -> None:
        """Start recording edges."""
        self.edges.clear()
        self.device.when_activated = self._edge(self.active_level)
        self.device.when_deactivated = self._edge(not self.active_level)


class HilRig:
    """The wired pairs, their probes, and banks built on them."""

    def __init__(self, factory: Factory, pairs: list[tuple[int, int]], state_dir: Path) -> None:
        self.factory = factory
        self.pairs = pairs
        self.state_dir = state_dir
        self.probes: dict[int, Probe] = {}
        self.banks: list[RelayBank] = []
        self.tasks: list[asyncio.Task[None]] = []
        for out_pin, in_pin in pairs:
            if SIMULATED:
                factory.pin(out_pin, pin_class=MockConnectedPin, input_pin=factory.pin(in_pin))
            if SIMULATED:
                # The connected mock output drives this input on every change.
                device = DigitalInputDevice(
                    in_pin, pull_up=None, active_state=True, pin_factory=factory
                )
                self.probes[out_pin] = Probe(device, active_level=True)
            else:
                # The Pi's weak pull-up holds the wire high, like an active-low board's
                # input, until the output drives it: a low pulse at claim time shows.
                device = DigitalInputDevice(in_pin, pull_up=True, pin_factory=factory)
                self.probes[out_pin] = Probe(device, active_level=False)

    def bank(
        self, relays: dict[str, RelayConfig], desired: dict[str, bool] | None = None
    ) -> RelayBank:
        """An opened bank on this rig's factory."""
        bank = RelayBank(
            relays,
            state_dir=self.state_dir,
            state=StateStore(),
            pin_factory=self.factory,
            expected_factory=_factory_env(),
        )
        bank.open(desired or {})
        self.banks.append(bank)
        return bank

    def start(self, bank: RelayBank) -> None:
        """Run the bank's timer loop."""
        health = Health(name="relays", critical=True, heartbeat_timeout_s=30)
        self.tasks.append(asyncio.create_task(bank.run(health)))

    async def close(self) -> None:
        """Stop loops, close banks and probes."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for bank in self.banks:
            bank.close(shutdown=True)
        for probe in self.probes.values():
            probe.device.close()


@pytest.fixture
async def rig(rig_lock: None, tmp_path: Path) -> AsyncIterator[HilRig]:
    """The rig: real pins when GPIOZERO_PIN_FACTORY names hardware, else simulated."""
    pairs_text = os.environ.get("VG_HIL_PAIRS")
    saved = Device.pin_factory
    if SIMULATED:
        factory: Any = MockFactory()
    else:
        if not pairs_text:
            pytest.skip(
                f"real pins ({_factory_env()}) but VG_HIL_PAIRS is unset: "
                "wire each relay output to an input and set VG_HIL_PAIRS (see hil/README.md)"
            )
        Device.ensure_pin_factory()
        factory = Device.pin_factory
    made = HilRig(factory, _pairs(pairs_text or DEFAULT_PAIRS), tmp_path)
    try:
        yield made
    finally:
        await made.close()
        if SIMULATED:
            factory.reset()
        Device.pin_factory = saved


def _electrical(on: bool, active_high: bool) -> bool:
    return on == active_high


def _relay(pin: int, **options: Any) -> RelayConfig:
    options.setdefault("min_switch_interval_s", 0.0)
    return RelayConfig(pin=pin, **options)


@pytest.mark.parametrize("active_high", [False, True])
@pytest.mark.parametrize("policy", ["off", "on", "schedule"])
async def test_power_on_policy_reads_back(rig: HilRig, policy: str, active_high: bool) -> None:
    """Each power-on policy puts the wire at the right level at start, with no edge to the
    active level for a relay that starts off (the boot pulse of an active-low board)."""
    out_pin = rig.pairs[0][0]
    probe = rig.probes[out_pin]
    probe.watch()
    rig.bank(
        {"r": _relay(out_pin, active_high=active_high, power_on=policy)},
        {"r": True},
    )
    expected_on = policy != "off"
    await asyncio.sleep(0.05)  # let real edge callbacks arrive
    assert probe.level is _electrical(expected_on, active_high)
    if not expected_on:
        active = _electrical(True, active_high)
        assert all(level is not active for _, level in probe.edges)


async def test_restore_reads_back(rig: HilRig) -> None:
    """``restore`` brings back the state persisted before the stop, seen on the wire."""
    out_pin = rig.pairs[0][0]
    config = {"r": _relay(out_pin, power_on="restore", shutdown="off")}
    first = rig.bank(config)
    await first.set("r", True, source="hil")
    first.close()
    second = rig.bank(config)
    assert second.snapshot()["relays"]["r"]["on"] is True
    assert rig.probes[out_pin].level is False  # active-low: on is low


async def test_switching_every_pair_reads_back(rig: HilRig) -> None:
    """Every wired relay switches on and off, and only its own input follows."""
    relays = {f"r{i}": _relay(out_pin) for i, (out_pin, _) in enumerate(rig.pairs)}
    bank = rig.bank(relays)
    for name in relays:
        await bank.set(name, True, source="hil")
        await asyncio.sleep(0.01)
        levels = {n: rig.probes[c.pin].level for n, c in relays.items()}
        assert levels == {n: n != name for n in relays}  # active-low: on is low
        await bank.set(name, False, source="hil")


async def test_for_s_reverts_on_the_wire(rig: HilRig) -> None:
    """A timed switch shows on the wire and goes back after ``for_s``."""
    out_pin = rig.pairs[0][0]
    bank = rig.bank({"r": _relay(out_pin, active_high=True)})
    rig.start(bank)
    await bank.set("r", True, for_s=0.2, source="hil")
    assert rig.probes[out_pin].level is True
    await asyncio.sleep(0.5)
    assert rig.probes[out_pin].level is False


async def test_burst_edges_respect_the_minimum_interval(rig: HilRig) -> None:
    """A burst of commands makes at most one edge per minimum interval on the wire and
    ends at the last command's level."""
    interval = 0.2
    out_pin = rig.pairs[0][0]
    probe = rig.probes[out_pin]
    bank = rig.bank({"r": _relay(out_pin, active_high=True, min_switch_interval_s=interval)})
    rig.start(bank)
    probe.watch()
    last = False
    for i in range(60):
        last = i % 2 == 0 or i == 59
        await bank.set("r", last, source="hil")
        await asyncio.sleep(0.01)
    await asyncio.sleep(interval * 2)
    assert probe.level is last
    times = [t for t, _ in probe.edges]
    assert len(times) >= 2
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= interval * 0.9 for gap in gaps)
