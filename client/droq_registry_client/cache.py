"""The last known state on disk, so an executor that starts during an outage can route.

The file is JSON Lines: a header line (format, version, where and when the state was
confirmed, its cursor, the node count), then one line per node (`etag`, `node`,
`components`). It is written whole to a temporary file beside it, flushed to disk and
renamed over the old one, so a reader sees the old file or the new one, never a mix. A file
that does not read back exactly is ignored with a warning naming the file and the line;
the client then starts without it. `Writer` is the follower's side: when to write, and
what a failed write costs (a warning, nothing else).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .state import Entry, State, build, entry_from

LOG = logging.getLogger("droq_registry_client")

FORMAT = "droq-registry-client-cache"
VERSION = 1


class CacheError(Exception):
    """The cache file cannot be used; the message names the file and the place."""


@dataclass(frozen=True, slots=True)
class Cached:
    state: State
    url: str | None
    confirmed_at: float | None


def save(path: Path, state: State, url: str | None, confirmed_at: float | None) -> None:
    """Write `state` to `path` atomically (temporary file, fsync, rename, fsync the folder)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "url": url,
        "confirmed_at": confirmed_at,
        "epoch": state.epoch,
        "revision": state.revision,
        "content_hash": state.content_hash,
        "nodes": len(state.nodes),
    }
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(json.dumps(header) + "\n")
            # One node at a time: each dumps is short, so other threads get the GIL between.
            for _, entry in sorted(state.nodes.items()):
                line = {"etag": entry.etag, "node": entry.node, "components": entry.components_copy()}
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def load(path: Path) -> Cached | None:
    """The cached state, None if there is no file; CacheError if it cannot be used."""
    try:
        # Split on "\n" alone, never with splitlines(): JSON leaves U+2028, U+2029 and U+0085
        # unescaped inside strings, and splitlines() would cut a node's text there.
        lines = path.read_bytes().decode("utf-8").split("\n")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CacheError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CacheError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if lines[-1] == "":
        lines.pop()  # after the last line's newline
    if not lines:
        raise CacheError(f"{path}: empty file")
    header = _line(path, lines, 0)
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise CacheError(f"{path} line 1: not a {FORMAT} file of version {VERSION}")
    revision, count = header.get("revision"), header.get("nodes")
    if not isinstance(revision, int) or not isinstance(count, int) or count != len(lines) - 1:
        raise CacheError(f"{path} line 1: says {count!r} nodes at revision {revision!r}; {len(lines) - 1} follow")
    entries: list[Entry] = []
    for number in range(1, len(lines)):
        item = _line(path, lines, number)
        node, components, etag = item.get("node"), item.get("components"), item.get("etag")
        if (
            not isinstance(node, dict)
            or not isinstance(node.get("node_id"), str)
            or not isinstance(components, dict)
            or not all(isinstance(v, str) for v in components.values())
            or not (etag is None or isinstance(etag, str))
        ):
            raise CacheError(f"{path} line {number + 1}: not a node with its components and ETag")
        entries.append(entry_from(node, components, etag))
    url, confirmed_at = header.get("url"), header.get("confirmed_at")
    epoch, content_hash = header.get("epoch"), header.get("content_hash")
    return Cached(
        state=build(
            entries,
            epoch if isinstance(epoch, str) else None,
            revision,
            content_hash if isinstance(content_hash, str) else None,
        ),
        url=url if isinstance(url, str) else None,
        confirmed_at=float(confirmed_at) if isinstance(confirmed_at, (int, float)) else None,
    )


def _line(path: Path, lines: list[str], number: int) -> dict[str, Any]:
    try:
        value = json.loads(lines[number])
    except ValueError as exc:
        raise CacheError(f"{path} line {number + 1}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CacheError(f"{path} line {number + 1}: not a JSON object")
    return value


class Writer:
    """Writes the client's state to the cache file: at most once per `interval` seconds
    after it changed, in a worker thread, and a last time on `flush()`.

    A failed write (full disk, no permission) is logged once per distinct error and costs
    nothing else: the previous file stays whole, lookups are not affected.
    """

    def __init__(
        self, path: Path, interval: float, current: Callable[[], tuple[State | None, str | None, float | None]]
    ) -> None:
        self.path = path
        self.interval = interval
        self._current = current  # (state, url, confirmed_at) now
        self._dirty = asyncio.Event()
        # A write cancelled on close keeps running in its thread: the last one waits for it.
        self._lock = threading.Lock()
        self._saved: State | None = None  # the state the file holds
        self._error: str | None = None

    def changed(self) -> None:
        self._dirty.set()

    def holds(self, state: State) -> None:
        """The file already holds `state` (it was just loaded from it)."""
        self._saved = state

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            await self.flush()
            await asyncio.sleep(self.interval)

    async def flush(self) -> None:
        """Write the current state if the file does not hold it yet."""
        self._dirty.clear()
        try:
            await asyncio.to_thread(self._write)
        except OSError as exc:
            message = f"cannot write the cache file {self.path}: {exc.strerror or exc}"
            if message != self._error:
                LOG.warning("%s; lookups are not affected", message)
            self._error = message
            return
        if self._error is not None:
            LOG.info("the cache file %s is written again", self.path)
        self._error = None

    def _write(self) -> None:
        with self._lock:
            state, url, confirmed_at = self._current()
            if state is None or state is self._saved:
                return
            save(self.path, state, url, confirmed_at)
            self._saved = state
