"""Which files a pass must read: the watcher's batch classified, and each file's stat
compared with the one it had when it was last read.

A batch is only a hint of where to look (`classify`); the stat decides (`SeenFiles`). A
file is read again when its stat moved, when it was read too soon after it was written to
trust the stat (`RACY_NS`), or when a components file it points to moved.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .folder import file_sig, is_node_file, storable
from .model import FileSig, Source

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
