"""Reading Server-Sent Events from a streaming httpx response, as a browser would."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx


class Events:
    """Server-Sent Events read from a streaming httpx response; comment lines kept apart."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.iter_lines()
        self.comments: list[str] = []
        #: The id of the last event that had one: what a browser sends as Last-Event-ID.
        self.last_id: str | None = None
        #: The history the stream's ids count in (its X-Registry-Epoch).
        self.epoch = response.headers["x-registry-epoch"]

    def next(self) -> dict[str, str]:
        event: dict[str, str] = {}
        for line in self._lines:
            if _take_line(line, event, self.comments):
                if "id" in event:
                    self.last_id = event["id"]
                return event
        raise AssertionError("the event stream ended")


class AsyncEvents:
    """`Events` for httpx.AsyncClient streams."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines: AsyncIterator[str] = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self) -> dict[str, str]:
        event: dict[str, str] = {}
        async for line in self._lines:
            if _take_line(line, event, self.comments):
                return event
        raise AssertionError("the event stream ended")

    async def next_comment(self) -> str:
        seen = len(self.comments)
        async for line in self._lines:
            _take_line(line, {}, self.comments)
            if len(self.comments) > seen:
                return self.comments[-1]
        raise AssertionError("the event stream ended")


def _take_line(line: str, event: dict[str, str], comments: list[str]) -> bool:
    """Add one line to `event`; True when the line ends a non-empty event."""
    if line == "":
        return bool(event)
    if line.startswith(":"):
        comments.append(line)
        return False
    name, _, value = line.partition(":")
    value = value.removeprefix(" ")
    event[name] = event[name] + "\n" + value if name == "data" and name in event else value
    return False
