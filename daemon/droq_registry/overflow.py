"""Noticing file events the kernel dropped: a Linux inotify queue overflow.

The watcher (watchfiles, with Rust's notify underneath) reads its inotify queue in a thread
of its own. When the process is stopped or starved long enough for that queue to fill
(`fs.inotify.max_queued_events`, 16,384 events by default; a new file costs about four),
the kernel drops every further event and queues one IN_Q_OVERFLOW. notify turns it into a
"rescan" event that names no path, and watchfiles drops events that name no path, so
nothing tells the registry that changes were lost.

`LostEvents` is a second inotify instance on the same folders with the same event mask as
notify's, read only to look for IN_Q_OVERFLOW. It receives the same events as the watcher's
queue and is emptied less often (every half second, and once per batch), so it overflows
whenever the watcher's queue does. It may also overflow when the watcher's did not (more
than 16,384 events within half a second); that costs one unneeded rescan, nothing more.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("droq_registry.watch")

try:  # Linux only; elsewhere the periodic rescan is the only net for lost events
    import inotify_simple  # type: ignore[import-untyped]
except (ImportError, OSError):  # pragma: no cover - not Linux
    inotify_simple = None

#: How often the queue is emptied between batches.
DRAIN_SECONDS = 0.5

# notify 8's inotify mask (`add_single_watch` in notify/src/inotify.rs), with DELETE_SELF
# and MOVE_SELF, which it adds for the folders it was asked to watch.
_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE, _IN_OPEN = 0x2, 0x4, 0x8, 0x20
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF, _IN_Q_OVERFLOW, _IN_ISDIR = 0x400, 0x800, 0x4000, 0x40000000
MASK = (
    _IN_ATTRIB | _IN_CREATE | _IN_OPEN | _IN_DELETE | _IN_CLOSE_WRITE | _IN_MODIFY
    | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_DELETE_SELF | _IN_MOVE_SELF
)
_NEW_FOLDER = _IN_CREATE | _IN_MOVED_TO

QUEUE_LIMIT_FILE = Path("/proc/sys/fs/inotify/max_queued_events")


def queue_limit() -> str:
    """The kernel's per-watcher event queue length, for the log line ("unknown" if unreadable)."""
    try:
        return QUEUE_LIMIT_FILE.read_text().strip()
    except OSError:
        return "unknown"


class LostEvents:
    """Tells whether the kernel dropped file events for these folders since the last look.

    `tree` is watched with every folder below it (as the watcher watches the assets
    folder), `folders` each on its own. Without inotify (not Linux, or no instance or
    watch to be had) it never reports anything and the periodic rescan stays the net.
    Everything here is blocking file system work (walking the tree, reading up to a full
    queue takes tens of milliseconds), so the watcher calls it from a worker thread; a
    lock keeps two threads from reading the queue at once.
    """

    def __init__(self, tree: str, folders: Iterable[str] = ()) -> None:
        self._inotify: Any = None  # an inotify_simple.INotify
        self._paths: dict[int, str] = {}
        self._overflowed = False
        self._lock = threading.Lock()
        if inotify_simple is None:  # pragma: no cover - not Linux
            return
        try:
            self._inotify = inotify_simple.INotify(nonblocking=True)
        except OSError as exc:
            _say_once("cannot watch for lost file events (%s); relying on the periodic rescan", exc)
            return
        self._add_tree(tree)
        for folder in folders:
            self._add(folder)

    @property
    def active(self) -> bool:
        """Whether lost events can be noticed at all."""
        return self._inotify is not None

    def overflowed(self) -> bool:
        """True once after the kernel dropped events: everything must be looked at again."""
        with self._lock:
            self._drain()
            overflowed, self._overflowed = self._overflowed, False
            return overflowed

    def drain(self) -> None:
        """Empty the queue, remembering an overflow and watching folders created meanwhile."""
        with self._lock:
            self._drain()

    def _drain(self) -> None:
        inotify = self._inotify
        if inotify is None:
            return
        try:
            events = inotify.read(timeout=0)
        except OSError as exc:  # the instance itself failed: say so once, stop looking
            _say_once("cannot watch for lost file events (%s); relying on the periodic rescan", exc)
            self._close()
            return
        for event in events:
            if event.mask & _IN_Q_OVERFLOW:
                self._overflowed = True
            elif event.mask & _IN_ISDIR and event.mask & _NEW_FOLDER and event.wd in self._paths:
                # The watcher watches new folders inside the tree too (recursive watch).
                self._add_tree(os.path.join(self._paths[event.wd], event.name))

    def close(self) -> None:
        """Give back the inotify instance; idempotent."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        inotify, self._inotify = self._inotify, None
        if inotify is not None:
            inotify.close()

    def _add_tree(self, top: str) -> None:
        # notify follows symbolic links into folders; the (device, inode) guard stops loops.
        seen: set[tuple[int, int]] = set()
        for folder, subfolders, _ in os.walk(top, followlinks=True):
            try:
                st = os.stat(folder)
            except OSError:
                subfolders.clear()
                continue
            if (st.st_dev, st.st_ino) in seen:
                subfolders.clear()
                continue
            seen.add((st.st_dev, st.st_ino))
            self._add(folder)

    def _add(self, folder: str) -> None:
        inotify = self._inotify
        if inotify is None:
            return
        try:
            wd = inotify.add_watch(folder, MASK)
        except FileNotFoundError:
            return  # gone already; the watcher has nothing there either
        except OSError as exc:  # e.g. fs.inotify.max_user_watches reached
            _say_once("cannot watch every folder for lost file events (%s, at %s); the periodic rescan "
                      "covers the rest", exc.strerror or exc, folder)
            return
        self._paths[wd] = folder


_said: set[str] = set()


def _say_once(message: str, *args: object) -> None:
    """Warn about a limit once per process: every new life of the watcher would meet it again."""
    if message not in _said:
        _said.add(message)
        log.warning(message, *args)
