"""What may sit at REGISTRY_DB_PATH, and the lock that makes one service its only writer.

The database is a derived index, so the service may rebuild it, but it must never harm a
file that is not its own. `check` looks before anything is opened: the path may not be
the assets folder or lie inside it, may not be a directory, and an existing file must
start with SQLite's header and be readable and writable by this process, in a folder it
can write (SQLite creates its `-wal` and `-shm` files there). Each refusal is one line
that says what is wrong; nothing is renamed or changed.

`WriterLock` is an exclusive `flock` on a sidecar file (`registry.db.lock`). The service
takes it before it opens the database, so a second service on the same file waits, not
ready, until the first one exits (a rolling update on a shared volume), and only then
loads the state from the database. A lock file already there must be one this registry
wrote (empty, or its holder's note): `<db>.lock` may be another program's file, such as
`poetry.lock` beside `REGISTRY_DB_PATH=poetry`, and taking the lock writes over it.

The lock file also remembers how far the database's history was served (`served`:
`<epoch>:<revision>`, written after every commit). It lives beside the database but is not
in it, so a database put back to an older copy of itself (a backup restored with `cp`, which
keeps the file and its inode) is found out at start-up: its history is older than what was
served, so it becomes a new one (`reconcile.Reconciler.attach`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import stat
import tempfile
from pathlib import Path

from .model import EPOCH_PATTERN

#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"


class StoreError(RuntimeError):
    """The database cannot be opened or written; the message says where and why."""


class StorageFault(StoreError):
    """A database fault with a cause operators can act on (a metric label, bounded)."""

    CAUSES = (
        "disk_full", "io_error", "read_only", "permission", "locked", "damaged",
        "deleted", "replaced", "not_a_database", "foreign", "other",
    )

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause if cause in self.CAUSES else "other"


def check(db_path: Path, assets_dir: Path) -> None:
    """Refuse a database path that could harm the operator's files; raise StoreError."""
    db, assets = os.path.abspath(db_path), os.path.abspath(assets_dir)
    for mine, theirs in ((db, assets), (os.path.realpath(db), os.path.realpath(assets))):
        if mine == theirs:
            raise StoreError(f"REGISTRY_DB_PATH={str(db_path)!r} is the assets folder; "
                             "point it at a file outside that folder")
        if os.path.commonpath([mine, theirs]) == theirs:
            raise StoreError(f"REGISTRY_DB_PATH={str(db_path)!r} lies inside the assets folder {assets}; "
                             "point it at a file outside that folder")
    # The rest is about the file itself: SQLite follows a symbolic link (its -wal and -shm go
    # beside the file), and so does the lock (`Settings.db_file`).
    db_file = Path(os.path.realpath(db_path))
    check_file(db_file)
    check_side_files(db_file)
    lock = lock_path(db_file)
    if os.path.lexists(lock):
        st = _stat(lock, "its lock file")
        if not stat.S_ISREG(st.st_mode):
            raise StorageFault("not_a_database", f"{lock}: is not a regular file, so not this registry's lock "
                               "file; point REGISTRY_DB_PATH elsewhere")
        note = _probe_open(lock, "its lock file", _NOTE_BYTES)
        if not is_lock_note(note):
            # `<db>.lock` may be another program's file (`poetry.lock` beside REGISTRY_DB_PATH=poetry):
            # taking the lock writes the holder's note over it.
            raise StorageFault("not_a_database", f"{lock}: is not this registry's lock file (it starts with "
                               f"{note[:16]!r}); refusing to touch it, point REGISTRY_DB_PATH elsewhere")


#: The files SQLite keeps beside a database, and how each of its own begins: a WAL file with
#: its magic number (either byte order), a rollback journal with its header. (The shared
#: memory file has no fixed start; it is recreated from the WAL, so it needs only to be a
#: regular file.) SQLite deletes or truncates a side file it takes for its own.
_SIDE_FILES = {
    "-wal": (bytes.fromhex("377f0682"), bytes.fromhex("377f0683")),
    "-journal": (bytes.fromhex("d9d505f920a163d7"),),
    "-shm": (),
}


def check_side_files(db_path: Path) -> None:
    """Refuse a database path beside which a `-wal`, `-shm` or `-journal` file is not
    SQLite's: opening the database would delete or overwrite it (`notes-wal` may be the
    operator's, beside REGISTRY_DB_PATH=notes)."""
    for suffix, magics in _SIDE_FILES.items():
        side = db_path.with_name(db_path.name + suffix)
        if not os.path.lexists(side):
            continue
        st = _stat(side, "a file SQLite keeps beside it")
        if not stat.S_ISREG(st.st_mode):
            raise StorageFault("not_a_database", f"{side}: is not a regular file, so not SQLite's; "
                               "refusing to touch it, point REGISTRY_DB_PATH elsewhere")
        if not magics or st.st_size == 0:
            continue
        start = _probe_open(side, "a file SQLite keeps beside it", 16)
        if not any(start.startswith(m) for m in magics):
            raise StorageFault("not_a_database", f"{side}: is not SQLite's {suffix[1:]} file (it starts with "
                               f"{start[:16]!r}); refusing to touch it, point REGISTRY_DB_PATH elsewhere")


def check_file(db_path: Path) -> None:
    """What `check` asks of the file and its folder (also before a reopen while running);
    raises StorageFault. The folder is created when it is missing."""
    try:
        st = os.stat(db_path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise os_fault(exc, f"{db_path}: cannot look at it") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise StorageFault("not_a_database", f"{db_path}: is a directory, not a database file; "
                               "point REGISTRY_DB_PATH at a file")
        if not stat.S_ISREG(st.st_mode):
            raise StorageFault("not_a_database", f"{db_path}: is not a regular file; "
                               "point REGISTRY_DB_PATH at a file")
        if st.st_nlink > 1:
            # Another name for the same file would take a lock of its own (`<name>.lock`) and
            # a WAL of its own: two writers, one damaged file, one epoch for two histories.
            raise StorageFault("not_a_database", f"{db_path}: has {st.st_nlink} hard links; two names for one "
                               "database file would let two services write it. Give each service its own file")
        head = _probe_open(db_path, "the database")
        if st.st_size > 0 and head != SQLITE_HEADER:
            raise StorageFault("not_a_database", f"{db_path}: is not a SQLite database "
                               f"(it starts with {head[:16]!r}); refusing to touch it")
    folder = db_path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # SQLite creates `-wal` and `-shm` files beside the database: the folder must take them.
        fd, probe = tempfile.mkstemp(prefix=".droq-registry-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise os_fault(exc, f"{folder}: cannot create files in the database's folder") from None


def _stat(path: Path | str, what: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as exc:
        raise os_fault(exc, f"{path}: cannot look at {what}") from None


def _probe_open(path: Path | str, what: str, size: int = len(SQLITE_HEADER)) -> bytes:
    """Open `path` for reading and writing (changing nothing); return its first `size` bytes."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise os_fault(exc, f"{path}: cannot open {what} for writing") from None
    try:
        return os.pread(fd, size, 0)
    except OSError as exc:
        raise os_fault(exc, f"{path}: cannot read {what}") from None
    finally:
        os.close(fd)


def os_fault(exc: OSError, doing: str) -> StorageFault:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StorageFault("permission", f"{doing}: {reason} (running as uid {os.geteuid()})")
    if exc.errno == errno.EROFS:
        return StorageFault("read_only", f"{doing}: {reason}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFault("disk_full", f"{doing}: {reason}")
    if exc.errno == errno.EIO:
        return StorageFault("io_error", f"{doing}: {reason}")
    return StorageFault("other", f"{doing}: {reason}")


def lock_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".lock")


#: What `WriterLock` writes into its lock file; a file holding anything else is not ours:
#: one line, who holds it and how far its holder served the database's history
#: ("pid 123 on host served <epoch>:<revision>"; a host name has no spaces). One line, so
#: earlier releases, which take exactly this pattern, take it again after a rollback.
_NOTE = re.compile(rb"(pid [0-9]+ on [^\r\n]*\n)?")
_SERVED = re.compile(rb" served (%b):([0-9]{1,20})\n\Z" % EPOCH_PATTERN.encode())
_NOTE_BYTES = 512


def is_lock_note(data: bytes) -> bool:
    """Whether `data` (the start of a lock file) is what this registry writes there, or nothing."""
    return len(data) < _NOTE_BYTES and _NOTE.fullmatch(data) is not None


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path` now, or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class WriterLock:
    """An exclusive lock on `<db>.lock`, held for as long as this service writes the database.

    `flock` locks belong to the open file, so the lock goes with the process however it
    ends (even SIGKILL), and a lock file left behind is harmless: it holds only who took
    it last, for the messages of whoever waits."""

    def __init__(self, db_path: Path) -> None:
        self.path = lock_path(db_path)
        self._fd: int | None = None
        #: Who holds it, as the note says, once this service wrote it (a lock file of ours).
        self._holder = b""
        #: How far the database's history was served, as the lock file said when this
        #: service took it (and as `served` has said since): (epoch, revision), or None.
        self.served_to: tuple[str, int] | None = None

    def acquire(self) -> bool:
        """Take the lock if it is free; False while another process holds it."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise os_fault(exc, f"{self.path}: cannot open the database's lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            raise os_fault(exc, f"{self.path}: cannot lock the database's lock file") from None
        self._fd = fd
        try:
            note = os.pread(fd, _NOTE_BYTES, 0)
            if not is_lock_note(note):
                return True  # not ours (put there while running): lock it, write nothing into it
            served = _SERVED.search(note)
            if served is not None:
                self.served_to = (served[1].decode("ascii"), int(served[2]))
            self._holder = f"pid {os.getpid()} on {socket.gethostname()}".encode()
            self._write_note()
        except OSError:
            pass  # the note is for people; the lock itself is held
        return True

    def served(self, epoch: str, revision: int) -> None:
        """Note that revision `revision` of history `epoch` is committed and about to be
        served (call it after the commit, before publishing). Not synced: after a power loss
        it says at most what the database holds, never more."""
        if self._fd is None or not self._holder or self.served_to == (epoch, revision):
            return  # not locked, or a lock file that is not ours to write into
        self.served_to = (epoch, revision)
        try:
            self._write_note()
        except OSError:
            pass  # only the check of a restored backup is lost; the lock itself is held

    def _write_note(self) -> None:
        assert self._fd is not None
        note = self._holder
        if self.served_to is not None:
            note += f" served {self.served_to[0]}:{self.served_to[1]}".encode()
        note += b"\n"
        # Written over the old note, then cut to length: never an empty or torn lock file.
        os.pwrite(self._fd, note, 0)
        os.ftruncate(self._fd, len(note))

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it ("pid 123 on host"), or "unknown"."""
        try:
            note = self.path.read_bytes()[:200].decode("utf-8", "replace").partition(" served ")[0].strip()
        except OSError:
            note = ""
        return note if note.isprintable() and note else "unknown"

    def held(self) -> bool:
        """Whether this process holds the lock on the file that is at the lock's path now
        (someone may have deleted or replaced the lock file)."""
        if self._fd is None:
            return False
        st = os.fstat(self._fd)
        return identity(self.path) == (st.st_dev, st.st_ino)

    def retake(self) -> bool:
        """Lock the file that is at the lock's path now (after the one this process locked
        was deleted or replaced); False when another process holds it."""
        self.release()
        return self.acquire()

    def release(self) -> None:
        """Let the next service take over (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None
            self._holder = b""
