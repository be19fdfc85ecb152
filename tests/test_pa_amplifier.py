"""The amplifier's relay, switched through the relay bank's narrow port (``drive``).

A real :class:`~gateway.lighting.bank.RelayBank` on gpiozero's MockFactory, its run loop going,
so the bank's own rules (the minimum interval between switches) apply: the amplifier
must wait for a deferred switch to happen, and never trust a line that is about to go
off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from gateway.component import Health
from gateway.config import RelayConfig
from gateway.lighting.bank import RelayBank
from gateway.pa.amplifier import Amplifier
from gateway.state import StateStore
from tests.test_app import wait_for
from tests.test_relays import factory  # noqa: F401 - the fixture: mock pins as gpiozero's default

PIN = 22


@dataclass
class Bank:
    """A running relay bank with one relay, ``amp``, and what it emitted."""

    bank: RelayBank
    events: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> bool:
        return bool(self.bank.is_on("amp"))

    def switches(self) -> list[tuple[bool, str]]:
        return [(e["on"], e["source"]) for e in self.events if e["type"] == "relay.switched"]


@pytest.fixture
def make_bank(
    tmp_path: Path,
    factory: MockFactory,  # noqa: F811 - pytest passes the fixture imported above
) -> Callable[[float], Any]:
    """``async with make_bank(min_interval_s) as b``: a bank running its loop, on the
    mock pins ``factory`` installed as gpiozero's default."""
    del factory

    @asynccontextmanager
    async def running(min_interval_s: float) -> AsyncIterator[Bank]:
        events: list[dict[str, Any]] = []
        config = RelayConfig(pin=PIN, min_switch_interval_s=min_interval_s)
        bank = RelayBank(
            {"amp": config},
            state_dir=tmp_path,
            state=StateStore(),
            on_event=events.append,
            expected_factory="mock",
        )
        bank.open({})
        task = asyncio.create_task(
            bank.run(Health(name="relays", critical=True, heartbeat_timeout_s=30))
        )
        try:
            yield Bank(bank, events)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            bank.close(shutdown=False)

    return running


async def test_on_through_the_bank_warm_up_then_off_after_the_idle_time(
    make_bank: Callable[[float], Any],
) -> None:
    """acquire() switches the line on (source ``pa``, a relay.switched event, no command)
    and returns only after the warm-up; release() switches it off after the idle time."""
    async with make_bank(0.0) as b:
        amp = Amplifier("amp", b.bank, warmup_s=0.3, idle_off_s=0.3)
        assert not amp.ready()
        started = time.monotonic()
        await amp.acquire()
        assert time.monotonic() - started >= 0.3
        assert b.line()
        assert amp.on
        assert amp.ready()
        amp.release()
        released = time.monotonic()
        await wait_for(lambda: not b.line(), 3)
        assert time.monotonic() - released >= 0.3 - 0.05
        assert b.switches() == [(True, "pa"), (False, "pa")]
        assert all(e["type"] != "command" for e in b.events)


async def test_a_deferred_switch_is_waited_for(make_bank: Callable[[float], Any]) -> None:
    """With a minimum interval between switches, off_now() returns once the line really
    went off (not when it was asked), and the next acquire() waits for the interval too."""
    async with make_bank(0.5) as b:
        amp = Amplifier("amp", b.bank, warmup_s=0.0, idle_off_s=30)
        await amp.acquire()
        on_at = time.monotonic()  # no warm-up: the line went on just now
        await amp.off_now("bad_audio")
        assert not b.line()
        assert time.monotonic() - on_at >= 0.5 - 0.05
        off_at = time.monotonic()
        await amp.acquire()
        assert b.line()
        assert time.monotonic() - off_at >= 0.5 - 0.05


async def test_playing_again_during_a_deferred_idle_off_keeps_the_line_on(
    make_bank: Callable[[float], Any],
) -> None:
    """The idle-off asks for off, the bank defers it (minimum interval), and a new item
    comes meanwhile: the amplifier asks for on again rather than trust a line that is
    about to go off, so the line is still on after the interval has passed."""
    async with make_bank(0.6) as b:
        amp = Amplifier("amp", b.bank, warmup_s=0.05, idle_off_s=0.05)
        await amp.acquire()
        amp.release()
        await asyncio.sleep(0.2)  # the idle-off now waits for the bank
        assert b.line()
        assert not amp.ready()  # cancels that idle-off
        await amp.acquire()
        await asyncio.sleep(0.8)  # past the moment the deferred off would have happened
        assert b.line()
        assert amp.ready()


async def test_force_off_is_synchronous_and_final(make_bank: Callable[[float], Any]) -> None:
    """SIGTERM: force_off() drops the line before it returns, whatever the interval, and
    an idle timer started later does nothing."""
    async with make_bank(5.0) as b:
        amp = Amplifier("amp", b.bank, warmup_s=0.0, idle_off_s=0.05)
        await amp.acquire()
        assert b.line()
        amp.force_off()
        assert not b.line()
        amp.release()
        await asyncio.sleep(0.2)
        assert not b.line()


class StuckPort:
    """A bank whose line never changes (an interlock partner held on, a closed bank)."""

    def __init__(self) -> None:
        self.asked: list[bool] = []

    async def drive(self, name: str, on: bool, *, source: str, timeout_s: float = 5.0) -> bool:
        self.asked.append(on)
        await asyncio.sleep(0.05)
        return False

    def is_on(self, name: str) -> bool | None:
        return False

    def force_off(self, name: str) -> None:
        """Nothing to drive."""


async def test_a_line_that_does_not_come_on_does_not_hold_up_the_sound() -> None:
    """If the line does not come on, acquire() logs it and returns without a warm-up:
    the line output still plays; the next item asks again."""
    port = StuckPort()
    amp = Amplifier("amp", port, warmup_s=5.0, idle_off_s=30)
    started = time.monotonic()
    await amp.acquire()
    assert time.monotonic() - started < 1.0
    assert not amp.ready()
    await amp.acquire()
    assert port.asked == [True, True]


async def test_no_relay_means_nothing_to_switch() -> None:
    """No ``pa.amp_relay`` (or no bank): always ready, never switches, never on."""
    for amp in (
        Amplifier(None, StuckPort(), warmup_s=2, idle_off_s=1),
        Amplifier("amp", None, warmup_s=2, idle_off_s=1),
    ):
        assert amp.ready()
        await amp.acquire()
        await amp.off_now("test")
        amp.release()
        amp.force_off()
        assert not amp.on
