"""The lean stand-ins a connection holds (`lean.Signal` for asyncio.Event, `lean.Pipeline`
for uvicorn's deque of pipelined requests) behave as what they replace."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from droq_registry.lean import Pipeline, Signal


def _run(events: Any) -> list[str]:
    """What happens, in order, to waiters on `events()` (a Signal or an asyncio.Event):
    two wait, one is cancelled, the event is set (the other wakes), cleared, and waited
    on again until set again; a wait on a set event returns at once."""

    async def scenario() -> list[str]:
        event = events()
        seen: list[str] = []

        async def wait(name: str) -> None:
            seen.append(f"{name} woke {await event.wait()}")

        first = asyncio.create_task(wait("first"))
        second = asyncio.create_task(wait("second"))
        await asyncio.sleep(0)
        second.cancel()
        await asyncio.sleep(0)
        seen.append(f"set before: {event.is_set()}")
        event.set()
        await first
        seen.append(f"set after: {event.is_set()}, second cancelled: {second.cancelled()}")
        event.clear()
        third = asyncio.create_task(wait("third"))
        await asyncio.sleep(0)
        seen.append(f"third waits: {not third.done()}")
        event.set()
        event.set()  # a second set wakes nobody twice
        await third
        await wait("at once")
        return seen

    return asyncio.run(scenario())


def test_a_signal_wakes_and_forgets_its_waiters_as_an_asyncio_event_does() -> None:
    expected = [
        "set before: False",
        "first woke True",
        "set after: True, second cancelled: True",
        "third waits: True",
        "third woke True",
        "at once woke True",
    ]
    assert _run(asyncio.Event) == expected
    assert _run(Signal) == expected


def test_a_signal_made_set_does_not_wait() -> None:
    async def scenario() -> tuple[bool, bool]:
        signal = Signal(True)
        return signal.is_set(), await signal.wait()

    assert asyncio.run(scenario()) == (True, True)


def test_a_pipeline_gives_the_oldest_request_first_as_uvicorns_deque_does() -> None:
    def use(queue: Any) -> list[Any]:
        seen = [bool(queue)]
        queue.appendleft("first")
        queue.appendleft("second")
        queue.appendleft("third")
        seen += [bool(queue), queue[-1], queue.pop(), queue[-1], queue.pop(), queue.pop(), bool(queue)]
        return seen

    assert use(Pipeline()) == use(collections.deque()) == [
        False, True, "first", "first", "second", "second", "third", False
    ]
