"""The read step of a pass: which files to read, and what reading them found.

A watcher's batch is only a hint of where to look (`classify`); the stat decides
(`SeenFiles`). A file is read again when its stat moved, when it was read too soon after it
was written to trust the stat (`RACY_NS`), or when a components file it points to moved.
`read_moved` reads those files (`folder.read_source`) and keeps the outcomes that differ
from what is known: what `diff.plan` then turns into a change.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .folder import file_sig, is_node_file, read_source, storable
from .model import Failed, FileSig, Gone, Outcome, Source
from .nodefile import Schema

#: A file modified this close to when it was read may change again with the same stat
#: (file-system clocks tick coarsely), so a rescan reads it again (git's "racy clean").
RACY_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class Seen:
    """A file's stat when it was last read, and when that was."""

    sig: FileSig
    read_ns: int

    def still(self, sig: FileSig | None) -> bool:
        # What an unresolved name leads to is not in its stat: look at it on every pass.
        return sig == self.sig and sig.kind != "unresolved" and self.read_ns - sig.mtime_ns > RACY_NS


class SeenFiles:
    """What each node file and components file looked like when a committed pass read it.
    Only a commit adds to it, so a failed pass leaves every file to be read again."""

    def __init__(self) -> None:
        self._files: dict[str, Seen] = {}
        self._deps: dict[str, Seen | None] = {}

    def unchanged(self, name: str, sig: FileSig, known: Source) -> bool:
        """Whether the node file `name` (now `sig`) and its components files need no read."""
        seen = self._files.get(name)
        if seen is None or not seen.still(sig):
            return False
        for dep in known.deps:
            if dep not in self._deps:
                return False
            before, now_sig = self._deps[dep], file_sig(dep)
            if (before is None) != (now_sig is None) or (before is not None and not before.still(now_sig)):
                return False
        return True

    def remember(
        self, files: Mapping[str, Seen], deps: Mapping[str, Seen | None], dropped: Iterable[str]
    ) -> None:
        """After a commit: what this pass read, and which node files are gone."""
        self._files.update(files)
        self._deps.update(deps)
        for name in dropped:
            self._files.pop(name, None)


def classify(named: set[str] | None, folder: Path, sources: Mapping[str, Source]) -> tuple[set[str], bool]:
    """Names to read regardless of stat, and whether they are all that needs a look.

    A batch that names node files (or components files) is handled by reading just
    those, also when it names temporary files beside them (editors, `sed -i` and rsync
    write a temporary file and rename it over the node file, and the event names both).
    Anything that may change node files without naming them (Kubernetes' `..data`
    swap, a directory or a symbolic link, the folder itself) asks for a full scan.
    """
    if named is None:
        return set(), False
    root = os.path.abspath(folder)
    users: dict[str, list[str]] = {}
    for source in sources.values():
        for dep in source.deps:
            users.setdefault(dep, []).append(source.path)
    forced: set[str] = set()
    targeted = True
    for path in named:
        path = os.path.abspath(path)
        parent, name = os.path.split(path)
        if path in users:
            forced.update(users[path])
        elif parent == root:
            if is_node_file(name) and storable(name):
                forced.add(name)
            elif name.startswith("..") or os.path.isdir(path) or os.path.islink(path):
                targeted = False
            # else: a temporary or unrelated file beside the node files: nothing to read
        elif path == root or path.startswith(root + os.sep):
            targeted = False  # inside a subfolder: node files may link into it
    return forced, targeted and bool(forced)


class Stopped(Exception):
    """The service is stopping; the pass gave up before writing anything."""


@dataclass
class Reading:
    """What one pass read: the outcomes that differ from what is known, the stat of every
    file it read (remembered once the pass commits), and how many files it read."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    seen: dict[str, Seen] = field(default_factory=dict)
    deps_seen: dict[str, Seen | None] = field(default_factory=dict)
    read: int = 0


def read_moved(
    folder: Path,
    listing: Mapping[str, FileSig | None],
    forced: set[str],
    sources: Mapping[str, Source],
    seen: SeenFiles,
    schema: Schema,
    stopping: threading.Event,
) -> Reading:
    """Read the node files of `listing` (name -> stat now, None: gone) whose stat moved, or
    that are `forced`; raises Stopped (before anything is written) once `stopping` is set."""
    reading = Reading()
    outcomes = reading.outcomes
    for name, sig in listing.items():
        known = sources.get(name)
        if sig is None:
            if known is not None:
                outcomes[name] = Gone()
            continue
        if name not in forced and known is not None and seen.unchanged(name, sig, known):
            continue
        if stopping.is_set():
            raise Stopped("the service is stopping; nothing was written")
        read_ns = time.time_ns()
        outcome, dep_sigs = read_source(folder, name, schema, known)
        reading.read += 1
        reading.seen[name] = Seen(sig, read_ns)
        for dep, dep_sig in dep_sigs.items():
            reading.deps_seen[dep] = None if dep_sig is None else Seen(dep_sig, read_ns)
        if outcome is None:
            continue
        if isinstance(outcome, Gone):
            if known is not None:
                outcomes[name] = outcome
        elif (
            known is None
            or outcome.content_hash != known.content_hash
            or (isinstance(outcome, Failed) and outcome.error != known.error)
        ):
            outcomes[name] = outcome
    return reading
