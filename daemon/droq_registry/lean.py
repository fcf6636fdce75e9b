"""Lean stand-ins for the small objects every connection holds while it waits.

A connection held by a follower for minutes keeps whatever uvicorn made for it: an
`asyncio.Event` is some 1.1 KiB (its dict and an empty `collections.deque` of 760 bytes)
and uvicorn makes two per connection, plus a deque for the requests pipelined behind the
one in progress, which nearly always stays empty. Ten thousand followers keep 30 MiB of
those. `Signal` and `Pipeline` behave as the objects they replace (`protocol.py` puts them
in), and cost 56 to 80 bytes until they are used.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl


class Signal:
    """`asyncio.Event`'s `set`, `clear`, `is_set` and `wait`, with its list of waiters
    made only when one waits."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: bool = False) -> None:
        self._value = value
        self._waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        """Whether it is set."""
        return self._value

    def set(self) -> None:
        """Set it, and wake every waiter."""
        if not self._value:
            self._value = True
            waiters, self._waiters = self._waiters, None
            for waiter in waiters or ():
                if not waiter.done():
                    waiter.set_result(True)

    def clear(self) -> None:
        """Unset it: `wait` waits again."""
        self._value = False

    async def wait(self) -> bool:
        """Until it is set (True)."""
        if self._value:
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        waiters = self._waiters
        waiters.append(waiter)
        try:
            return await waiter
        finally:
            if waiter in waiters:  # cancelled: `set` drops the list it woke
                waiters.remove(waiter)


class Pipeline(list[Any]):
    """The deque of pipelined requests uvicorn keeps (`appendleft`, `pop`, `[-1]`, `bool`),
    as a list: it holds at most a few."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        """Add `item` at the left end (the newest; `pop` takes the oldest, at the right)."""
        self.insert(0, item)


class Flow(FlowControl):
    """uvicorn's flow control, with a lean event (`lean.Signal`): a connection keeps it
    for its whole life."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__(transport)
        self._is_writable_event = Signal(True)  # type: ignore[assignment]  # an Event's methods
