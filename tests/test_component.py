"""``wait_for_event``: what every component loop does between two rounds."""

from __future__ import annotations

import asyncio

import pytest

from gateway.component import wait_for_event


async def test_a_set_event_answers_at_once_and_a_timeout_says_false() -> None:
    event = asyncio.Event()
    event.set()
    assert await wait_for_event(event, 60) is True
    event.clear()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await wait_for_event(event, 0.05) is False
    assert loop.time() - started >= 0.05


async def test_a_set_during_the_wait_wakes_it_without_a_task_of_its_own() -> None:
    """The point of it: no task wrapped around ``event.wait()`` (asyncio.wait_for makes
    one per round), so an idle daemon's loop turns over less often."""
    event = asyncio.Event()
    tasks_before = len(asyncio.all_tasks())
    waiting = asyncio.create_task(wait_for_event(event, 60))
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == tasks_before + 1  # the waiter alone
    event.set()
    assert await asyncio.wait_for(waiting, 5) is True


async def test_a_cancel_from_outside_is_not_taken_for_a_timeout() -> None:
    """A supervisor stopping the component must stop it, not start its next round."""
    waiting = asyncio.create_task(wait_for_event(asyncio.Event(), 60))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
