"""The bytes of an answer on the wire, written as uvicorn's own `send` would write them.

The protocol writes whole answers itself (the hot reads, `direct.py`; the long-polls of a
fan-out, `outlet.py`) and the frames of the event streams (`outlet.py`): `write_whole`
and `chunk` give the very bytes uvicorn would, encoded once for the many answers that
share them. `ANSWERED` is the cycle of a request answered so, which uvicorn's callbacks
find complete.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

Headers = tuple[tuple[bytes, bytes], ...]


class _Answered:
    """The cycle of a request answered by the protocol itself (`direct.DirectReads.answer_here`): complete,
    so uvicorn's callbacks (the rest of its message, a lost connection, shutdown) find
    nothing in progress, as after any complete answer."""

    __slots__ = ()
    response_complete = True
    disconnected = False

    class message_event:  # uvicorn calls `cycle.message_event.set()`
        @staticmethod
        def set() -> None:
            pass


ANSWERED: Any = _Answered()


#: Encoded heads by (status, id of the headers tuple), for uvicorn's default headers `_heads_of`.
_heads: dict[tuple[int, int], tuple[Headers, bytes]] = {}
_heads_of: list[object] = [None]
HEADS_KEPT = 4096


def head(status: int, default: list[tuple[bytes, bytes]], headers: Headers) -> bytes:
    """The status line and header lines of an answer (without the blank line), encoded once
    for each answer's headers while uvicorn's default headers (the date) stay the same
    object: the hot answers and the long-polls of a fan-out within one second."""
    if _heads_of[0] is not default or len(_heads) >= HEADS_KEPT:
        _heads.clear()
        _heads_of[0] = default
    key = (status, id(headers))
    kept = _heads.get(key)
    if kept is not None and kept[0] is headers:
        return kept[1]
    head = b"".join([STATUS_LINE[status], *(b"%s: %s\r\n" % pair for pair in (*default, *headers))])
    _heads[key] = (headers, head)
    return head


def write_whole(transport: asyncio.Transport, default: list[tuple[bytes, bytes]], status: int,
                headers: Headers, body: bytes, keep_alive: bool) -> None:
    """Write a whole answer in one write, as uvicorn's two `send` calls would: its
    default headers (`default`) first, `connection: close` (and the close) when the connection
    is not kept alive. Our headers are our own, valid by construction, so they skip
    uvicorn's checks of each one."""
    # The date is now's (uvicorn's current default headers); answers that share it and
    # their headers share the encoded head (`head`).
    encoded = head(status, default, headers)
    if keep_alive:
        transport.write(b"".join((encoded, b"\r\n", body)))
    else:
        transport.write(b"".join((encoded, b"connection: close\r\n\r\n", body)))
        transport.close()


_last_chunk: tuple[object, bytes] = (None, b"")


def chunk(body: bytes) -> bytes:
    """`body` framed as one chunk of a chunked answer; the last one's bytes again for the
    same object (the event streams of one fan-out that had the same revision)."""
    global _last_chunk
    last = _last_chunk
    if last[0] is body:
        return last[1]
    chunk = b"%x\r\n%b\r\n" % (len(body), body)
    _last_chunk = (body, chunk)
    return chunk
