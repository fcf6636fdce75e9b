"""Storage faults, made real, against real server processes.

A full disk is a tiny tmpfs; an I/O error is the running process's file-size limit
(SQLite reports the failed write as SQLITE_IOERR, "disk I/O error"); permissions are
enforced by running the server as `nobody`; a read-only file system is a tmpfs mounted
`ro`; another program's lock is a real SQLite transaction held by this test; the database
is deleted and replaced under the running process. Every fault must turn /health
`degraded` with its real cause, count in the metrics, log one line, keep serving the last
committed state without a 5xx, and heal on its own within seconds of the fault clearing.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from support.expect import TIMESTAMP_FORMAT
from support.files import REAL_NODES, ROOT, copy_real_nodes, node_doc, write_json
from support.http import metric
from support.polling import wait_until
from support.server import free_port, server_env

NOBODY = 65534
#: Long enough for the retry backoff (at most 5 s) on a busy shared machine.
HEAL = 30.0


def big_node(node_id: str, count: int = 400) -> dict[str, Any]:
    """A node large enough that committing it must grow the database's files."""
    return node_doc(node_id, components={f"Comp{i}": f"pkg.{node_id.replace('-', '_')}.mod{i}" for i in range(count)})


def reachable_as_nobody() -> list[str]:
    """The command prefix that runs a program as `nobody` with this interpreter.

    The interpreter may live in a folder `nobody` cannot enter (pyenv under /root, mode
    0700). Then, in a private mount namespace only the server sees, that folder is covered
    by an empty 0755 tmpfs holding just the interpreter's installation."""
    prefix = Path(sys.base_prefix).resolve()
    closed = next(
        (p for p in reversed(prefix.parents) if p != Path("/") and not os.stat(p).st_mode & stat.S_IXOTH),
        None,
    )
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    if closed is None:
        return drop
    stage = tempfile.mkdtemp(prefix="droq-interpreter-")
    inside = prefix.relative_to(closed)
    script = (
        f'mount --bind "{prefix}" "{stage}" && mount -t tmpfs -o mode=0755,size=1m tmpfs "{closed}"'
        f' && mkdir -p "{closed / inside}" && mount --bind "{stage}" "{closed / inside}" && exec "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *drop]


class Service:
    """`droq-registry serve` as a real process; its log is read through a pipe, so that a
    file-size limit on the process does not stop the log."""

    def __init__(self, env: dict[str, str], as_nobody: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "REGISTRY_RESYNC_SECONDS": "0", **env}
        command = [sys.executable, "-m", "droq_registry", "serve"]
        if as_nobody:
            command = reachable_as_nobody() + command
        self.proc = subprocess.Popen(command, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def get(self, path: str) -> httpx.Response:
        response = self.http.get(path)
        assert response.status_code < 500, (path, response.status_code, response.text)
        return response

    def health(self) -> dict[str, Any]:
        return self.get("/health").json()  # type: ignore[no-any-return]

    def metric(self, sample: str) -> float:
        return metric(self, sample)

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return self.http.get("/ready").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=30, interval=0.05)

    def log(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.http.close()
        return self.proc.returncode


@pytest.fixture
def services() -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(env: dict[str, str], as_nobody: bool = False, ready: bool = True) -> Service:
        service = Service(env, as_nobody)
        started.append(service)
        if ready:
            service.wait_ready()
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder `nobody` can enter (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="droq-faults-"))
    path.chmod(0o755)
    yield path
    for folder, _, _ in os.walk(path):
        os.chmod(folder, 0o755)  # a test may have left one read-only
    shutil.rmtree(path)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs; unmounted after the services that used it have stopped."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def env_for(assets: Path, db: Path, **extra: str) -> dict[str, str]:
    return server_env(assets, db, RELOAD="true", **extra)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; return it (delete it to give the space back)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC
    with pytest.raises(OSError, match="No space left"):
        (disk / "one-more").write_bytes(b"\0" * 8192)
    return filler


def failing(service: Service) -> dict[str, Any]:
    health = service.health()
    return health if health["database"]["state"] == "failing" else {}


def assert_degraded_serving(service: Service, error: str, revision: int, nodes: int) -> None:
    """/health says degraded with `error`; the last committed state is what is served."""
    health = service.health()
    assert health["status"] == "degraded"
    assert (health["ready"], health["revision"], health["nodes"]) == (True, revision, nodes)
    assert health["last_reconcile_error"] == error
    database = health["database"]
    assert TIMESTAMP_FORMAT.fullmatch(database.pop("failing_since"))
    assert database == {"path": database["path"], "state": "failing", "error": error}
    assert service.get("/ready").json() == {"status": "ready", "revision": revision}
    assert service.get("/api/v1/nodes?status=all").json()["total_nodes"] == nodes
    assert service.get("/api/v1/components/Multiply/node").status_code == 200


def assert_healthy(service: Service, revision: int) -> None:
    """Healthy again (the commit is served a moment before the pass has noted its success)."""
    health = wait_until(lambda: (h := service.health())["status"] == "healthy" and h)
    assert (health["status"], health["revision"], health["last_reconcile_error"]) == ("healthy", revision, None)
    assert {k: v for k, v in health["database"].items() if k != "path"} == {
        "state": "ok", "error": None, "failing_since": None,
    }


def lines_with(service: Service, text: str) -> list[str]:
    return [line for line in service.lines if text in line]


# --- a full disk ----------------------------------------------------------------------------


def test_a_full_disk_turns_health_degraded_keeps_serving_and_commits_within_seconds_of_space_returning(
    tiny_disk: Path, tmp_path: Path, services: Callable[..., Service]
) -> None:
    assets = tmp_path / "assets" / "nodes"
    copy_real_nodes(assets)
    db = tiny_disk / "registry.db"
    service = services(env_for(assets, db))
    filler = fill(tiny_disk)

    write_json(assets / "new.json", big_node("new-node"))
    health = wait_until(lambda: failing(service))
    error = f"{db}: cannot write revision 2: the disk is full (database or disk is full)"
    assert health["database"]["error"] == error
    # Several retries, still one line in the log.
    wait_until(lambda: service.metric('droq_registry_storage_failures_total{cause="disk_full"}') >= 3, HEAL)
    assert service.metric('droq_registry_reconciles_total{result="failed"}') >= 3
    assert_degraded_serving(service, error, revision=1, nodes=4)
    assert service.get("/api/v1/nodes/new-node").status_code == 404
    assert lines_with(service, "disk is full") == [
        next(line for line in service.lines if "disk is full" in line)
    ]
    assert re.search(r"ERROR +droq_registry.reconcile: reconcile failed: " + re.escape(error)
                     + r"; serving revision 1 and trying again$", lines_with(service, "disk is full")[0])

    filler.unlink()  # no file event, no periodic rescan (REGISTRY_RESYNC_SECONDS=0): the retry commits
    wait_until(lambda: service.get("/api/v1/nodes/new-node").status_code == 200, HEAL)
    assert_healthy(service, revision=2)
    assert len(lines_with(service, "reconcile works again after")) == 1
    assert "Traceback" not in service.log()
    assert "cannot rollback" not in service.log()
    assert service.stop() == 0
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone() == ("2",)
        assert conn.execute("SELECT count(*) FROM components WHERE node_id = 'new-node'").fetchone() == (400,)


# --- an I/O error -----------------------------------------------------------------------------


def test_an_io_error_is_reported_as_such_and_the_change_commits_once_writes_work_again(
    tmp_path: Path, services: Callable[..., Service]
) -> None:
    assets = tmp_path / "assets" / "nodes"
    copy_real_nodes(assets)
    db = tmp_path / "data" / "registry.db"
    service = services(env_for(assets, db))
    wal = db.with_name(db.name + "-wal")
    assert wal.stat().st_size > 0
    # From now on no file of the process may grow: SQLite's next append to its WAL fails
    # with EFBIG, which it reports as SQLITE_IOERR. (Only the soft limit: it can be raised again.)
    resource.prlimit(service.proc.pid, resource.RLIMIT_FSIZE, (wal.stat().st_size, resource.RLIM_INFINITY))
    try:
        write_json(assets / "new.json", big_node("new-node"))
        wait_until(lambda: failing(service))
        error = f"{db}: cannot write revision 2: an I/O error (disk I/O error)"
        wait_until(lambda: service.metric('droq_registry_storage_failures_total{cause="io_error"}') >= 2, HEAL)
        assert_degraded_serving(service, error, revision=1, nodes=4)
        assert len(lines_with(service, "disk I/O error")) == 1
    finally:
        resource.prlimit(service.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    wait_until(lambda: service.get("/api/v1/nodes/new-node").status_code == 200, HEAL)
    assert_healthy(service, revision=2)
    assert "Traceback" not in service.log()


# --- a lock held by another program ---------------------------------------------------------


def test_a_lock_held_by_another_program_is_reported_and_the_change_commits_when_it_lets_go(
    tmp_path: Path, services: Callable[..., Service]
) -> None:
    assets = tmp_path / "assets" / "nodes"
    copy_real_nodes(assets)
    db = tmp_path / "registry.db"
    service = services(env_for(assets, db))
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # e.g. a backup tool or someone in the sqlite3 shell
        write_json(assets / "new.json", node_doc("new-node"))
        wait_until(lambda: failing(service), HEAL)
        error = f"{db}: cannot write revision 2: another program holds a lock on the database (database is locked)"
        wait_until(lambda: service.metric('droq_registry_storage_failures_total{cause="locked"}') >= 1, HEAL)
        assert_degraded_serving(service, error, revision=1, nodes=4)
    finally:
        other.execute("ROLLBACK")
        other.close()
    wait_until(lambda: service.get("/api/v1/nodes/new-node").status_code == 200, HEAL)
    assert_healthy(service, revision=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("registry")) == [
        "registry.db", "registry.db-shm", "registry.db-wal", "registry.db.lock",
    ]


# --- the database deleted or replaced under the running service -----------------------------


def db_state(db: Path) -> tuple[Any, ...]:
    with closing(sqlite3.connect(db)) as conn:
        return (
            # the history token is random: only its shape is known
            [(k, bool(re.fullmatch(r"[A-Za-z0-9_-]{22}", v)) if k == "history" else v)
             for k, v in conn.execute("SELECT key, value FROM meta ORDER BY key")],
            conn.execute("SELECT node_id, source FROM nodes ORDER BY node_id").fetchall(),
            conn.execute("SELECT count(*) FROM components").fetchone(),
            conn.execute("SELECT path, state, node_id FROM sources ORDER BY path").fetchall(),
            conn.execute("SELECT revision, kind, node_id, source FROM changes ORDER BY seq").fetchall(),
        )


def expected_state(revision: int, nodes: dict[str, str], components: int, changes: list[Any]) -> tuple[Any, ...]:
    return (
        [("changes_floor", "0"), ("history", True), ("revision", str(revision)), ("schema_version", "2")]
        if revision else [],
        sorted(nodes.items()),
        (components,),
        sorted((path, "ok", node_id) for node_id, path in nodes.items()),
        changes,
    )


def real_files() -> dict[str, str]:
    return {orjson.loads(p.read_bytes())["node_id"]: p.name for p in sorted(REAL_NODES.glob("*.json"))}


def real_components() -> int:
    return sum(len(orjson.loads(p.read_bytes())["components"]) for p in REAL_NODES.glob("*.json"))


FIRST_LOAD = [(1, "added", node_id, path) for node_id, path in sorted(real_files().items())]


@pytest.mark.parametrize("with_wal", [False, True], ids=["the file", "the file with its wal and shm"])
def test_a_database_deleted_under_the_running_service_is_written_again_with_the_served_state(
    with_wal: bool, tmp_path: Path, services: Callable[..., Service]
) -> None:
    assets = tmp_path / "assets" / "nodes"
    copy_real_nodes(assets)
    db = tmp_path / "registry.db"
    service = services(env_for(assets, db))
    db.unlink()
    if with_wal:
        db.with_name(db.name + "-wal").unlink()
        db.with_name(db.name + "-shm").unlink()
    # Left as they are, the old WAL would be replayed into the new file.

    write_json(assets / "new.json", node_doc("new-node"))  # the next pass notices
    wait_until(lambda: service.get("/api/v1/nodes/new-node").status_code == 200, HEAL)
    assert_healthy(service, revision=2)
    assert lines_with(service, "under the running service") == [
        lines_with(service, f"database {db} was deleted under the running service; "
                            "revision 1 is written to it again")[0]
    ]
    nodes = {**real_files(), "new-node": "new.json"}
    assert db_state(db) == expected_state(
        2, nodes, real_components() + 1, [*FIRST_LOAD, (2, "added", "new-node", "new.json")]
    )
    assert service.stop() == 0
    # A restart finds everything in the new file: nothing changes, the revision stays.
    again = services(env_for(assets, db))
    assert again.get("/ready").json() == {"status": "ready", "revision": 2}


def test_a_database_replaced_by_an_older_copy_is_given_the_served_state(
    tmp_path: Path, services: Callable[..., Service]
) -> None:
    assets = tmp_path / "assets" / "nodes"
    copy_real_nodes(assets)
    db = tmp_path / "registry.db"
    service = services(env_for(assets, db))
    backup = tmp_path / "backup.db"
    with closing(sqlite3.connect(db)) as src, closing(sqlite3.connect(backup)) as dst:
        src.backup(dst)
    write_json(assets / "new.json", node_doc("new-node"))
    wait_until(lambda: service.health()["revision"] == 2)

    os.replace(backup, db)  # a restore of yesterday's file, say
    (assets / "new.json").unlink()
    wait_until(lambda: service.get("/api/v1/nodes/new-node").status_code == 404, HEAL)
    assert_healthy(service, revision=3)
    assert len(lines_with(service, f"database {db} was replaced under the running service; "
                                   "revision 2 is written to it again")) == 1
    assert db_state(db) == expected_state(
        3, real_files(), real_components(),
        [*FIRST_LOAD, (2, "added", "new-node", "new.json"), (3, "removed", "new-node", "new.json")],
    )


def test_a_database_overwritten_in_place_is_noticed_by_its_revision_and_given_the_served_state(
    tmp_path: Path, services: Callable[..., Service]
) -> None:
    assets = tmp_path / "assets" / "nodes"
    copy_real_nodes(assets)
    db = tmp_path / "registry.db"
    service = services(env_for(assets, db))
    write_json(assets / "new.json", node_doc("new-node"))
    wait_until(lambda: service.health()["revision"] == 2)
    # Another program writes to the file (same inode): its revision no longer follows ours.
    with closing(sqlite3.connect(db, isolation_level=None)) as other:
        other.execute("UPDATE meta SET value = '7' WHERE key = 'revision'")
        other.execute("DELETE FROM nodes")

    (assets / "new.json").unlink()
    error = f"{db}: the database is at revision 7, expected 2: another program changed it"
    wait_until(lambda: service.get("/api/v1/nodes/new-node").status_code == 404, HEAL)
    assert_healthy(service, revision=3)
    assert len(lines_with(service, error)) == 1
    assert len(lines_with(service, f"database {db} was replaced under the running service")) == 1
    assert service.metric('droq_registry_storage_failures_total{cause="replaced"}') == 1
    assert db_state(db) == expected_state(
        3, real_files(), real_components(),
        [*FIRST_LOAD, (2, "added", "new-node", "new.json"), (3, "removed", "new-node", "new.json")],
    )


def test_a_database_replaced_by_a_file_that_is_not_sqlite_is_left_alone_and_served_around(
    tmp_path: Path, services: Callable[..., Service]
) -> None:
    assets = tmp_path / "assets" / "nodes"
    copy_real_nodes(assets)
    db = tmp_path / "registry.db"
    service = services(env_for(assets, db))
    stranger = tmp_path / "notes.txt"
    stranger.write_bytes(b"someone's notes, not a database\n" * 100)
    os.replace(stranger, db)

    write_json(assets / "new.json", node_doc("new-node"))
    error = (f"the database was replaced under the running service; writing it again failed: {db}: "
             f"is not a SQLite database (it starts with {db.read_bytes()[:16]!r}); refusing to touch it")
    wait_until(lambda: failing(service), HEAL)
    wait_until(lambda: service.metric('droq_registry_storage_failures_total{cause="not_a_database"}') >= 2, HEAL)
    assert_degraded_serving(service, error, revision=1, nodes=4)
    assert db.read_bytes() == b"someone's notes, not a database\n" * 100
    assert not db.with_name(db.name + ".unusable").exists()
    assert len(lines_with(service, "refusing to touch it")) == 1

    db.unlink()  # the operator takes it away: the service writes its state to a new file
    wait_until(lambda: service.get("/api/v1/nodes/new-node").status_code == 200, HEAL)
    assert_healthy(service, revision=2)
    assert db_state(db) == expected_state(
        2, {**real_files(), "new-node": "new.json"}, real_components() + 1,
        [*FIRST_LOAD, (2, "added", "new-node", "new.json")],
    )


# --- permissions and read-only storage (the server runs as nobody) --------------------------


def nobody_folders(root: Path) -> tuple[Path, Path]:
    """The assets folder (readable by all) and a database folder owned by nobody."""
    assets = root / "assets" / "nodes"
    copy_real_nodes(assets)
    (root / "assets").chmod(0o755)
    assets.chmod(0o755)
    data = root / "data"
    data.mkdir()
    os.chown(data, NOBODY, NOBODY)
    return assets, data


def test_the_server_really_runs_as_nobody(open_tmp: Path, services: Callable[..., Service]) -> None:
    assets, data = nobody_folders(open_tmp)
    service = services(env_for(assets, data / "registry.db"), as_nobody=True)
    status = Path(f"/proc/{service_pid(service)}/status").read_text()
    assert re.search(r"^Uid:\s+65534\s+65534\s+65534\s+65534$", status, re.MULTILINE)
    assert (data / "registry.db").stat().st_uid == NOBODY


def service_pid(service: Service) -> int:
    """The server's own pid: the one listening on its port (the launcher execs into it)."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{service.port}"], capture_output=True, text=True, check=True)
    return int(re.search(r"pid=(\d+)", out.stdout).group(1))  # type: ignore[union-attr]


def tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mode, None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def _root_only_file(data: Path) -> str:
    db = data / "registry.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    os.chown(db, 0, 0)
    db.chmod(0o600)
    return f"{db}: cannot open the database for writing: Permission denied (running as uid {NOBODY})"


def _read_only_file(data: Path) -> str:
    db = data / "registry.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    os.chown(db, NOBODY, NOBODY)
    db.chmod(0o444)
    return f"{db}: cannot open the database for writing: Permission denied (running as uid {NOBODY})"


def _read_only_folder(data: Path) -> str:
    os.chown(data, 0, 0)
    data.chmod(0o755)
    return f"{data}: cannot create files in the database's folder: Permission denied (running as uid {NOBODY})"


def _lock_file_of_root(data: Path) -> str:
    lock = data / "registry.db.lock"
    lock.write_bytes(b"pid 1 on elsewhere\n")
    lock.chmod(0o600)
    return f"{lock}: cannot open its lock file for writing: Permission denied (running as uid {NOBODY})"


@pytest.mark.parametrize("spoil", [_root_only_file, _read_only_file, _read_only_folder, _lock_file_of_root])
def test_start_up_refuses_a_database_it_may_not_write_with_one_line_and_renames_nothing(
    spoil: Callable[[Path], str], open_tmp: Path
) -> None:
    assets, data = nobody_folders(open_tmp)
    message = spoil(data)
    before = tree(open_tmp)
    env = {**os.environ, **env_for(assets, data / "registry.db"), "HOST": "127.0.0.1", "PORT": str(free_port())}
    done = subprocess.run(reachable_as_nobody() + [sys.executable, "-m", "droq_registry", "serve"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert (done.returncode, done.stdout, done.stderr.splitlines()) == (2, "", ["droq-registry: " + message])
    assert tree(open_tmp) == before


def test_start_up_refuses_a_database_on_a_read_only_file_system(tmp_path: Path) -> None:
    assets = tmp_path / "assets" / "nodes"
    copy_real_nodes(assets)
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(disk)], check=True)
    try:
        env = {**os.environ, **env_for(assets, disk / "registry.db"), "HOST": "127.0.0.1", "PORT": str(free_port())}
        done = subprocess.run([sys.executable, "-m", "droq_registry", "serve"],
                              env=env, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
        assert (done.returncode, done.stdout, done.stderr.splitlines()) == (
            2, "", [f"droq-registry: {disk}: cannot create files in the database's folder: Read-only file system"],
        )
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_read_only_database_put_in_place_while_running_is_reported_and_heals_when_writable(
    open_tmp: Path, services: Callable[..., Service]
) -> None:
    assets, data = nobody_folders(open_tmp)
    db = data / "registry.db"
    service = services(env_for(assets, db), as_nobody=True)
    copy = data / "copy.db"
    with closing(sqlite3.connect(db)) as src, closing(sqlite3.connect(copy)) as dst:
        src.backup(dst)
    os.chown(copy, NOBODY, NOBODY)
    copy.chmod(0o444)
    os.replace(copy, db)  # e.g. restored from a read-only snapshot

    write_json(assets / "new.json", node_doc("new-node"))
    error = (f"the database was replaced under the running service; writing it again failed: {db}: "
             f"cannot open the database for writing: Permission denied (running as uid {NOBODY})")
    wait_until(lambda: failing(service), HEAL)
    wait_until(lambda: service.metric('droq_registry_storage_failures_total{cause="permission"}') >= 2, HEAL)
    assert_degraded_serving(service, error, revision=1, nodes=4)
    assert sorted(p.name for p in data.iterdir()) == ["registry.db", "registry.db.lock"]

    db.chmod(0o644)
    wait_until(lambda: service.get("/api/v1/nodes/new-node").status_code == 200, HEAL)
    assert_healthy(service, revision=2)
    assert len(lines_with(service, "Permission denied")) == 1
