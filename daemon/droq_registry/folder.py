"""The assets folder as the service reads it: listing, stat, reading, and one node file
(with the components file its `components_json_path` names) turned into an outcome.

Everything that touches the node files is here, so `validate` (cli.py) and the reconciler
read them the same way. A file can only ever cost itself: whatever is wrong with it is its
`Failed` outcome; only a shortage of the process (`TransientError`) is raised.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import Any

from . import nodebytes, nodefile
from .model import Failed, FileSig, Gone, Node, Outcome, Parsed, Source
from .nodefile import Schema
from .refusal import NodeFileError, printable

# Its lines are the reconcile's as operators have always read them (the logger name is in
# their alerts), though the reading now lives here.
log = logging.getLogger("droq_registry.reconcile")



def is_node_file(name: str) -> bool:
    """Node files: `*.json` directly in the folder, not hidden (`.swp`, Kubernetes' `..data`)."""
    return name.endswith(".json") and not name.startswith(".")


#: errno values that say the process is short of something, not that a file is bad: out
#: of descriptors or memory, a read that was interrupted or would block.
TRANSIENT_ERRNOS = frozenset(
    (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EINTR, errno.EAGAIN)
)


class TransientError(Exception):
    """Reading failed for a reason of the process, not of the file (see TRANSIENT_ERRNOS, or
    MemoryError). It fails the whole pass before anything is written, so no file changes
    state; the pass is simply tried again."""


class NotRegularFile(OSError):
    """The name is there, but is a directory, FIFO, socket or device: the file's error."""


def raise_if_transient(exc: BaseException, path: str) -> None:
    """Turn `exc` into a TransientError when it, or what caused it, is a shortage of the
    process (a failed import while out of descriptors is one)."""
    cause: BaseException | None = exc
    for _ in range(8):  # causes can form a cycle
        if cause is None:
            return
        if isinstance(cause, MemoryError) or (isinstance(cause, OSError) and cause.errno in TRANSIENT_ERRNOS):
            why = "out of memory" if isinstance(cause, MemoryError) else (cause.strerror or os.strerror(cause.errno or 0))
            raise TransientError(f"{path}: {why}") from exc
        cause = cause.__cause__ or cause.__context__


def describe(exc: OSError) -> str:
    """Why a name that is there cannot be read, as a file's error says it."""
    if isinstance(exc, NotRegularFile):
        return str(exc.strerror)
    if exc.errno == errno.ELOOP:
        return "not a regular file (a symbolic link loop)"
    return f"cannot read the file: {exc.strerror or exc}"


#: What `stat` (which follows links) can find at a name instead of a regular file:
#: FileSig.kind, and how an error says it.
_KINDS = {
    stat.S_IFDIR: ("directory", "a directory"),
    stat.S_IFIFO: ("fifo", "a named pipe"),
    stat.S_IFSOCK: ("socket", "a socket"),
    stat.S_IFCHR: ("device", "a device"),
    stat.S_IFBLK: ("device", "a device"),
}
_OTHER = ("other", "something else")


def _not_regular(mode: int) -> NotRegularFile:
    return NotRegularFile(0, f"not a regular file ({_KINDS.get(stat.S_IFMT(mode), _OTHER)[1]})")


def file_sig(path: str) -> FileSig | None:
    """Stat through symbolic links. None when nothing is there, a dangling link included
    (Kubernetes leaves one for a moment while it swaps a ConfigMap); otherwise the signature,
    whose `kind` says whether it is a regular file. Raises TransientError."""
    try:
        st = os.stat(path)
        kind = "file" if stat.S_ISREG(st.st_mode) else _KINDS.get(stat.S_IFMT(st.st_mode), _OTHER)[0]
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:  # a link loop, a link into a folder we may not search
        raise_if_transient(exc, path)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as again:
            raise_if_transient(again, path)
            return FileSig(0, 0, 0, 0, 0, "unresolved")
        kind = "unresolved"
    return FileSig(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, kind)


def read_file(path: str) -> bytes:
    """The bytes of the regular file at `path` (reading stops a little past MAX_FILE_BYTES).

    Raises FileNotFoundError when it is gone; `NotRegularFile` or another OSError when the
    name is not a readable regular file (the file's error, see `describe`); TransientError
    when the process is short of descriptors or memory. A FIFO, socket or device is refused
    from its stat, never opened (opening one can block or act on it)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(st.st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # replaced between the stat and the open
                raise _not_regular(st.st_mode)
            chunks = []
            total = 0
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
                total += len(chunk)
                if total > nodefile.MAX_FILE_BYTES:
                    break
            return b"".join(chunks)
        finally:
            os.close(fd)
    except (OSError, MemoryError) as exc:
        raise_if_transient(exc, path)
        raise


def list_folder(folder: Path) -> dict[str, FileSig] | None:
    """Every node file in `folder` with its stat, also those that are not regular files (they
    are in error); None when the folder is not there. Raises TransientError."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise_if_transient(exc, str(folder))
        raise
    found = {}
    for entry in entries:
        if not storable(entry.name):
            continue
        if is_node_file(entry.name):
            sig = file_sig(entry.path)
            if sig is not None:
                found[entry.name] = sig
    return found


_unnameable: set[str] = set()


def storable(name: str) -> bool:
    """A file name that is not valid UTF-8 cannot be stored or shown: skip it, say so once."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        if name not in _unnameable:
            _unnameable.add(name)
            log.warning("ignoring %s: its name is not valid UTF-8", name)
        return False
    return True


def resolve_components_path(folder: Path, ref: str) -> str:
    """Where `components_json_path` points: inside the assets folder's parent, or inside the
    assets folder itself when that parent is `/` (a root that would allow every file)."""
    if "\0" in ref:
        raise NodeFileError("", "components_json_path", "must not contain a NUL character")
    root = os.path.abspath(folder.parent)
    target = os.path.abspath(os.path.join(folder, ref))
    real_root = os.path.realpath(root)
    if os.sep in (root, real_root):
        root, real_root = os.path.abspath(folder), os.path.realpath(folder)
    for candidate, base in ((target, root), (os.path.realpath(target), real_root)):
        if base == os.sep or os.path.commonpath([candidate, base]) != base:
            raise NodeFileError(
                "", "components_json_path", f"{ref!r} resolves outside {root} (not allowed)"
            )
    return target


def read_source(
    folder: Path, name: str, schema: Schema, known: Source | None = None
) -> tuple[Outcome | None, dict[str, FileSig | None]]:
    """Read one node file (and its components file) -> an outcome and the deps' stats.

    A file can only ever cost itself: whatever goes wrong with it, even an unexpected
    exception, is its `Failed` outcome. Only a shortage of the process (TransientError)
    is raised, and then nothing about the file has changed.

    With `known` (what the store has for the file), content that hashes the same is not
    parsed again: the outcome is None, "unchanged". That keeps a restart cheap."""
    path = os.path.join(folder, name)
    try:
        raw = read_file(path)
    except FileNotFoundError:
        return Gone(), {}
    except OSError as exc:
        return Failed(describe(exc)), {}
    content = hashlib.sha256(raw)  # becomes the content hash
    if known is not None and known.content_hash is not None:
        same, sigs = _same_content(content.copy(), known)
        if same:
            return None, sigs
    try:
        return _outcome(folder, name, raw, content, schema)
    except TransientError:
        raise
    except Exception as exc:  # a bug, or a limit of a library: still only this file's error
        raise_if_transient(exc, path)
        log.debug("%s: unexpected error while parsing it", path, exc_info=True)
        why = printable(f"cannot be used: unexpected {type(exc).__name__}: {exc}")[:500]
        return Failed(why, "sha256:" + content.hexdigest()), {}


def _outcome(
    folder: Path, name: str, raw: bytes, content: Any, schema: Schema
) -> tuple[Outcome, dict[str, FileSig | None]]:
    try:
        document = nodefile.parse_document(raw, name, schema)
        ref = document.get("components_json_path")
        if ref is None:
            node = nodefile.build_node(document, document["components"])
            return _parsed(node, name, "sha256:" + content.hexdigest()), {}
    except NodeFileError as exc:
        return Failed(exc.message, "sha256:" + content.hexdigest()), {}
    try:
        target = resolve_components_path(folder, ref)
    except NodeFileError as exc:
        content.update(b"\0escapes")
        return Failed(printable(exc.message), "sha256:" + content.hexdigest()), {}
    shown = printable(ref)
    if not _is_text(target):  # the store keeps the path (an assets folder named in Latin-1?)
        content.update(b"\0unstorable")
        return Failed(f"components_json_path: {shown}: the path it resolves to is not valid UTF-8",
                      "sha256:" + content.hexdigest()), {}
    deps = (target,)
    sigs = {target: file_sig(target)}
    try:
        extra = read_file(target)
    except OSError as exc:
        content.update(b"\0missing")
        why = "no such file" if isinstance(exc, FileNotFoundError) else describe(exc)
        return Failed(f"components_json_path: {shown}: {why}", "sha256:" + content.hexdigest(), deps), sigs
    content.update(b"\0" + extra)
    content_hash = "sha256:" + content.hexdigest()
    try:
        components = nodefile.parse_components(extra, ref, schema)
    except NodeFileError as exc:
        return Failed(f"components_json_path: {exc}", content_hash, deps), sigs
    try:
        return _parsed(nodefile.build_node(document, components), name, content_hash, deps), sigs
    except NodeFileError as exc:  # the node as a whole: not the components file's fault
        return Failed(exc.message, content_hash, deps), sigs


def _is_text(path: str) -> bool:
    """Whether `path` is text the store can keep (not bytes that are not UTF-8)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _same_content(content: Any, known: Source) -> tuple[bool, dict[str, FileSig | None]]:
    """Whether the file and the components file it pointed to still hash as `known`."""
    sigs: dict[str, FileSig | None] = {}
    for dep in known.deps:
        sigs[dep] = file_sig(dep)
        try:
            content.update(b"\0" + read_file(dep))
        except OSError:
            content.update(b"\0missing")
    return "sha256:" + content.hexdigest() == known.content_hash, sigs


def _parsed(node: Node, path: str, content_hash: str, deps: tuple[str, ...] = ()) -> Parsed:
    canonical = nodefile.canonical(node, path)
    return Parsed(node.node_id, nodebytes.pack(canonical), nodebytes.fingerprint(canonical), content_hash, deps)
