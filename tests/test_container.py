"""The real image: built from the Dockerfile by deploy/build-image.sh and run with podman.

Nothing here emulates the Dockerfile. The image is built once per session (cached layers make
a rebuild a few seconds), and every test runs it as operators do: published on a port of
127.0.0.1, node files bind-mounted from the host, the database on a volume, under the uids,
flags and signals of real deployments. Outside CI, on a machine without podman, the module
is skipped with the reason; in CI (CI set) that is an error, so CI never passes without it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from support.files import ASSETS, ROOT, node_doc, save, write_json
from support.http import make_settings, open_client
from support.polling import wait_until
from support.server import free_port

PODMAN = shutil.which("podman")
BUILD_SCRIPT = ROOT / "deploy" / "build-image.sh"
#: This checkout's own tag: two checkouts testing at once (a CI clone beside a developer's tree)
#: never run each other's image.
IMAGE = f"localhost/droq-registry:test-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"
DEADLINE = 30.0

if PODMAN is None:
    message = "podman is not installed (apt-get install podman runc mmdebstrap); .ci/run installs it"
    if os.environ.get("CI"):
        raise RuntimeError(message)  # never pass CI without the container tests
    pytest.skip(message, allow_module_level=True)


def podman(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run podman; with `check`, a failure is an assertion error carrying podman's stderr."""
    assert PODMAN is not None
    result = subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def inspect(kind: str, name: str) -> dict[str, Any]:
    return dict(json.loads(podman(kind, "inspect", name).stdout)[0])


def base_of(image: str) -> str:
    """The image it was built on, as the Dockerfile labels it."""
    return str(inspect("image", image)["Labels"]["org.opencontainers.image.base.name"])


@pytest.fixture(scope="session")
def image() -> str:
    """The image of this checkout, built by the documented offline script."""
    build = subprocess.run(["bash", str(BUILD_SCRIPT), "--tag", IMAGE], capture_output=True, text=True,
                           timeout=900, check=False)
    assert build.returncode == 0, build.stderr[-4000:]
    return IMAGE


@dataclass
class Container:
    """A running container of the image, published on a free port of 127.0.0.1."""

    name: str
    port: int
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def wait_ready(self) -> None:
        def ready() -> bool:
            if not self.state()["Running"]:
                raise AssertionError(f"container exited {self.state()['ExitCode']}:\n{self.logs()}")
            try:
                return self.get("/ready").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=DEADLINE, interval=0.05)

    def state(self) -> dict[str, Any]:
        return dict(inspect("container", self.name)["State"])

    def logs(self) -> str:
        """What the service wrote (it logs to stderr; podman logs gives it back there)."""
        result = podman("logs", self.name)
        return result.stdout + result.stderr

    def exec(self, *command: str) -> str:
        return podman("exec", self.name, *command).stdout

    def revision(self) -> int:
        return int(self.get("/ready").json()["revision"])


@pytest.fixture
def run(image: str) -> Iterator[Callable[..., Container]]:
    """`run(*podman_run_options)` -> a started container of the image; removed after the test."""
    started: list[Container] = []

    def start(*options: str) -> Container:
        container = Container(f"droq-test-{uuid.uuid4().hex[:12]}", free_port())
        started.append(container)
        podman("run", "--detach", "--name", container.name, "--publish", f"127.0.0.1:{container.port}:8002",
               *options, image)
        container.wait_ready()
        return container

    yield start
    for container in started:
        container.http.close()
        podman("rm", "--force", "--volumes", container.name, check=False)


@pytest.fixture
def volume() -> Iterator[Callable[[], str]]:
    """`volume()` -> the name of a new, empty named volume; removed after the test."""
    made: list[str] = []

    def make() -> str:
        name = f"droq-test-{uuid.uuid4().hex[:12]}"
        podman("volume", "create", name)
        made.append(name)
        return name

    yield make
    for name in made:
        podman("volume", "rm", "--force", name, check=False)


@pytest.fixture
def nodes(tmp_path: Path) -> Path:
    """A host folder holding copies of the shipped assets/nodes, to bind-mount read-only."""
    folder = tmp_path / "nodes"
    folder.mkdir()
    for path in sorted(ASSETS.glob("*.json")):
        shutil.copy(path, folder / path.name)
    return folder


def mount(folder: Path) -> str:
    return f"--volume={folder}:/srv/assets/nodes:ro"


def uids_of_pid_1(container: Container) -> list[list[str]]:
    """Real, effective, saved and file-system uids, then gids, of the container's PID 1."""
    status = dict(line.split(":", 1) for line in container.exec("cat", "/proc/1/status").splitlines())
    return [status["Uid"].split(), status["Gid"].split()]


# -- the image itself ---------------------------------------------------------------------


def test_image_keeps_its_healthcheck_user_port_volume_and_command(image: str) -> None:
    config = inspect("image", image)
    assert config["Healthcheck"] == {
        "Test": ["CMD", "droq-registry", "probe", "/health"],
        "Interval": 15_000_000_000,
        "Timeout": 3_000_000_000,
        "StartPeriod": 30_000_000_000,
        "Retries": 3,
    }
    assert config["Config"]["User"] == "10001:10001"
    assert config["Config"]["ExposedPorts"] == {"8002/tcp": {}}
    assert config["Config"]["Volumes"] == {"/data": {}}
    assert config["Config"]["Cmd"] == ["droq-registry", "serve"]  # exec form: the server is PID 1
    assert config["Config"].get("Entrypoint") is None
    assert config["Config"]["WorkingDir"] == "/srv"


@pytest.fixture(scope="module")
def layers(image: str) -> Iterator[tuple[Path, list[str]]]:
    """(the image's file system mounted read-only on the host, what its layers add to the base)."""
    diff = podman("image", "diff", image, base_of(image)).stdout
    changed = [line.split(" ", 1)[1] for line in diff.splitlines()]
    root = Path(podman("image", "mount", image).stdout.strip())
    try:
        yield root, changed
    finally:
        podman("image", "unmount", image, check=False)


def test_image_adds_only_the_service_to_its_base(image: str, layers: tuple[Path, list[str]]) -> None:
    _, changed = layers
    venv = sorted(p for p in changed if p.startswith("/opt/venv/"))
    outside = sorted(p for p in changed if not p.startswith(("/opt/venv/", "/srv/assets/nodes/")))
    assert outside == sorted([
        "/data", "/etc", "/etc/group", "/etc/gshadow", "/etc/gshadow-", "/etc/passwd", "/etc/passwd-",
        "/etc/shadow", "/etc/shadow-", "/opt", "/opt/venv", "/srv", "/srv/assets", "/srv/assets/nodes",
    ])
    assert sorted(p for p in changed if p.startswith("/srv/assets/nodes/")) == sorted(
        f"/srv/assets/nodes/{path.name}" for path in ASSETS.glob("*.json")
    )
    site = "/opt/venv/lib/python3.11/site-packages/"
    packages = {p[len(site):].split("/")[0] for p in venv if p.startswith(site)}
    assert "droq_registry" in packages and "uvicorn" in packages
    # No build tools or caches came along, and of the checkout only the package itself.
    assert not {p for p in packages if p.split("-")[0] in ("pip", "setuptools", "_distutils_hack", "wheel")}
    assert not [p for p in changed if p.rsplit("/", 1)[-1] in (".git", ".cache", "pip", "pip3", "gcc", "cc", "make")]
    package = ROOT / "daemon" / "droq_registry"
    assert {p[len(site):] for p in venv if p.startswith(f"{site}droq_registry/") and "__pycache__" not in p} == {
        f"droq_registry/{p.relative_to(package)}" for p in package.rglob("*") if "__pycache__" not in p.parts
    }
    added = inspect("image", image)["Size"] - inspect("image", base_of(image))["Size"]
    assert added <= 60_000_000, f"{added / 1e6:.1f} MB over the base"


def test_image_files_are_roots_and_read_only_to_the_service_except_data(layers: tuple[Path, list[str]]) -> None:
    root, changed = layers
    writable_or_not_roots: dict[str, tuple[int, int, str]] = {}
    for path in changed:
        st = (root / path.lstrip("/")).lstat()
        if os.path.islink(root / path.lstrip("/")):
            continue
        if st.st_uid != 0 or (st.st_gid != 0 and st.st_mode & 0o020) or st.st_mode & 0o002:
            writable_or_not_roots[path] = (st.st_uid, st.st_gid, oct(st.st_mode & 0o7777))
    # /data: the service user's, and group 0's for an arbitrary uid (OpenShift).
    assert writable_or_not_roots == {"/data": (10001, 0, "0o775")}


# -- running it ---------------------------------------------------------------------------


def test_the_server_is_pid_1_and_runs_as_uid_10001(run: Callable[..., Container], volume: Callable[[], str]) -> None:
    container = run(f"--volume={volume()}:/data")
    assert container.exec("cat", "/proc/1/cmdline").split("\0") == [
        "/opt/venv/bin/python", "/opt/venv/bin/droq-registry", "serve", ""
    ]
    assert uids_of_pid_1(container) == [["10001"] * 4, ["10001"] * 4]
    assert container.exec("stat", "-c", "%u:%g %a", "/data/registry.db").strip() == "10001:10001 644"


def test_a_read_only_bind_mount_of_the_shipped_nodes_is_served_as_in_process(
    run: Callable[..., Container], nodes: Path, tmp_path: Path
) -> None:
    container = run(mount(nodes))
    assert container.get("/ready").json() == {"status": "ready", "revision": 1}
    local: TestClient = open_client(make_settings(nodes, db_path=tmp_path / "local.db"))
    try:
        # The same files give the same answers, byte for byte, with the same ETag.
        for path in ("/api/v1/components/Multiply/node", "/api/v1/nodes", "/api/v1/nodes/dfx-math-executor-node"):
            answer, expected = container.get(path), local.get(path)
            assert (answer.status_code, answer.headers["etag"], answer.content) == (
                expected.status_code, expected.headers["etag"], expected.content
            ), path
    finally:
        local.__exit__(None, None, None)
    lookup = container.get("/api/v1/components/Multiply/node").json()
    assert (lookup["node"]["node_id"], lookup["module_path"]) == ("dfx-math-executor-node", "dfx.math.component.multiply")
    assert {row["path"] for row in container.get("/api/v1/sources").json()["sources"]} == {
        p.name for p in nodes.glob("*.json")
    }


def test_node_files_written_on_the_host_appear_through_the_bind_mount_by_file_events(
    run: Callable[..., Container], nodes: Path
) -> None:
    # No periodic rescan: only inotify events crossing the bind mount can make them appear.
    container = run(mount(nodes), "--env=REGISTRY_RESYNC_SECONDS=0")
    wait_until(lambda: container.get("/health").json()["watcher"]["state"] == "watching", DEADLINE)

    write_json(nodes / "written.json", node_doc("written", {"Written": "pkg.written"}))
    wait_until(lambda: container.get("/api/v1/components/Written/node").status_code == 200, DEADLINE)
    save(nodes / "renamed.json", node_doc("renamed", {"Renamed": "pkg.renamed"}))
    wait_until(lambda: container.get("/api/v1/components/Renamed/node").status_code == 200, DEADLINE)
    (nodes / "written.json").unlink()
    wait_until(lambda: container.get("/api/v1/components/Written/node").status_code == 404, DEADLINE)

    assert container.get("/api/v1/components/Renamed/node").json()["module_path"] == "pkg.renamed"
    assert [(c["kind"], c["node_id"]) for c in container.get("/api/v1/changes?since=1").json()["changes"]] == [
        ("added", "written"), ("added", "renamed"), ("removed", "written")
    ]


def test_a_host_file_the_service_user_cannot_read_is_that_files_error_only(
    run: Callable[..., Container], nodes: Path
) -> None:
    container = run(mount(nodes), "--env=REGISTRY_RESYNC_SECONDS=0")
    wait_until(lambda: container.get("/health").json()["watcher"]["state"] == "watching", DEADLINE)
    # Written on the host by root, mode 0600: uid 10001 in the container may not read it.
    secret = nodes / "secret.json"
    secret.touch(mode=0o600)
    secret.write_bytes(orjson.dumps(node_doc("secret", {"Secret": "pkg.secret"})))

    def row() -> tuple[Any, ...] | None:
        rows = {r["path"]: r for r in container.get("/api/v1/sources").json()["sources"]}
        found = rows.get("secret.json")
        return found and (found["state"], found["node_id"], found["error"], found["serving_last_good"])

    assert wait_until(row, DEADLINE) == ("error", None, "cannot read the file: Permission denied", False)
    assert container.get("/api/v1/nodes").json()["total_nodes"] == len(list(ASSETS.glob("*.json")))

    secret.chmod(0o644)
    secret.write_bytes(orjson.dumps(node_doc("secret", {"Secret": "pkg.secret"})))
    wait_until(lambda: container.get("/api/v1/components/Secret/node").status_code == 200, DEADLINE)
    assert row() == ("ok", "secret", None, False)


def healthcheck(container: Container) -> tuple[int, str]:
    """`podman healthcheck run`: exit code and output (nothing when healthy)."""
    result = podman("healthcheck", "run", container.name, check=False)
    return result.returncode, result.stdout.strip()


def test_healthcheck_passes_while_the_service_answers_and_fails_while_it_does_not(
    run: Callable[..., Container],
) -> None:
    container = run()
    assert healthcheck(container) == (0, "")
    # A hung service: PID 1 stopped, its socket still accepting, nothing answering.
    podman("kill", "--signal", "SIGSTOP", container.name)
    try:
        assert healthcheck(container) == (1, "unhealthy")
    finally:
        podman("kill", "--signal", "SIGCONT", container.name)
    assert healthcheck(container) == (0, "")
    log = [(entry["ExitCode"], entry["Output"]) for entry in container.state()["Health"]["Log"]]
    assert log == [(0, ""), (1, "droq-registry: http://127.0.0.1:8002/health: timed out"), (0, "")]


def test_healthcheck_probes_where_the_service_listens_with_host_set_to_ipv6(image: str) -> None:
    # HOST=:: (IPv6-only clusters) listens on IPv6 alone; the probe asked 127.0.0.1 and the
    # healthy service was reported unhealthy (Connection refused).
    if not Path("/proc/net/if_inet6").exists():
        pytest.skip("this machine has no IPv6, so HOST=:: cannot listen")
    name = f"droq-test-{uuid.uuid4().hex[:12]}"
    try:
        podman("run", "--detach", "--name", name, "--env=HOST=::", image)
        container = Container(name, 0)
        wait_until(lambda: "Uvicorn running on http://[::]:8002" in container.logs(), DEADLINE)
        assert healthcheck(container) == (0, "")
        assert container.exec("droq-registry", "probe", "/ready") == ""
        container.http.close()
    finally:
        podman("rm", "--force", "--volumes", name, check=False)


@dataclass
class Follower:
    """A long-poll or an event stream held open over its own connection."""

    kind: str
    port: int
    since: int
    status: int | None = None
    body: bytes = b""
    error: BaseException | None = None
    headers_seen: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        path = f"/api/v1/changes?since={self.since}&wait=60" if self.kind == "poll" else "/api/v1/events"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            self.status = response.status
            self.headers_seen.set()
            self.body = response.read()  # a stream cut off before its end raises IncompleteRead
        except (OSError, http.client.HTTPException) as exc:  # kept, and asserted on by the test
            self.error = exc
        finally:
            self.headers_seen.set()
            conn.close()


def test_podman_stop_exits_0_within_5_seconds_and_no_follower_gets_a_5xx(
    run: Callable[..., Container],
) -> None:
    container = run()
    revision = container.revision()
    followers = [Follower("poll", container.port, revision) for _ in range(20)]
    followers += [Follower("stream", container.port, revision) for _ in range(20)]
    threads = [threading.Thread(target=f.run, daemon=True) for f in followers]
    for thread in threads:
        thread.start()
    for follower in followers:
        if follower.kind == "stream":
            assert follower.headers_seen.wait(DEADLINE) and follower.status == 200, follower.error
    # A request on a fresh connection answered after every long-poll was sent: they are held.
    assert container.get("/ready").status_code == 200

    # --time 5: if the server has not exited 5 s after SIGTERM, podman kills it (exit 137).
    stop = podman("stop", "--time", "5", container.name, timeout=30)
    for thread in threads:
        thread.join(DEADLINE)

    assert stop.returncode == 0
    state = container.state()
    assert (state["Running"], state["ExitCode"]) == (False, 0)
    polls = [f for f in followers if f.kind == "poll"]
    assert [(f.error, f.status) for f in polls] == [(None, 200)] * len(polls)
    assert [orjson.loads(f.body) for f in polls] == [{"revision": revision, "changes": []}] * len(polls)
    streams = [f for f in followers if f.kind == "stream"]
    assert [(f.error, f.status) for f in streams] == [(None, 200)] * len(streams)
    log = container.logs()
    assert "Traceback" not in log and " ERROR " not in log, log


def test_podman_stop_at_once_after_start_stops_it_cleanly(image: str, nodes: Path) -> None:
    # PID 1 with no handler for SIGTERM has it dropped by the kernel: a stop sent before the
    # server's handlers are in place was lost, and podman killed it after --time (exit 137).
    # Many node files make start-up long, so the stop lands in it wherever the race goes.
    for n in range(2000):
        write_json(nodes / f"many-{n}.json", node_doc(f"many-{n}", {f"Many{n}": f"pkg.many{n}"}))
    name = f"droq-test-{uuid.uuid4().hex[:12]}"
    try:
        podman("run", "--detach", "--name", name, mount(nodes), image)
        stop = podman("stop", "--time", "5", name, timeout=30)
        state = inspect("container", name)["State"]
        assert (stop.returncode, state["Running"], state["ExitCode"]) == (0, False, 0)
        log = podman("logs", name)
        assert "Traceback" not in log.stdout + log.stderr, log.stdout + log.stderr
    finally:
        podman("rm", "--force", "--volumes", name, check=False)


def test_read_only_root_file_system_with_the_data_volume(
    run: Callable[..., Container], volume: Callable[[], str], nodes: Path
) -> None:
    # As docker's --read-only: no writable /tmp either (podman would add tmpfs mounts).
    container = run("--read-only", "--read-only-tmpfs=false", f"--volume={volume()}:/data", mount(nodes))
    assert container.exec("sh", "-c", "touch /srv/x 2>&1 || true").strip() == (
        "touch: cannot touch '/srv/x': Read-only file system"
    )
    write_json(nodes / "more.json", node_doc("more", {"More": "pkg.more"}))
    wait_until(lambda: container.get("/api/v1/components/More/node").status_code == 200, DEADLINE)
    assert container.get("/ready").json() == {"status": "ready", "revision": 2}
    # All it wrote is the database (and SQLite's files beside it), on the volume.
    written = container.exec("ls", "/data").split()
    assert "registry.db" in written and all(name.startswith("registry.db") for name in written), written


def test_an_arbitrary_uid_in_group_0_writes_its_database_and_serves(
    run: Callable[..., Container], volume: Callable[[], str]
) -> None:
    container = run("--user=12345:0", f"--volume={volume()}:/data")
    assert uids_of_pid_1(container) == [["12345"] * 4, ["0"] * 4]
    assert container.exec("stat", "-c", "%u:%g", "/data/registry.db").strip() == "12345:0"
    assert container.get("/api/v1/components/Multiply/node").json()["module_path"] == "dfx.math.component.multiply"


def visible_state(container: Container) -> dict[str, Any]:
    """What a client sees of the stored state, and the database file's identity."""
    sources = container.get("/api/v1/sources")
    return {
        "ready": container.get("/ready").json(),
        "revision": sources.headers["x-registry-revision"],
        # Issue 12 adds an epoch to every /api/v1 answer: it must survive a restart too
        # (None on both sides until it exists).
        "epoch": sources.headers.get("x-registry-epoch"),
        "sources": sources.json(),
        "changes": container.get("/api/v1/changes?since=0").json(),
        "db": container.exec("stat", "-c", "%i %W", "/data/registry.db").strip(),
    }


def test_the_database_on_the_volume_survives_a_restart_and_a_new_container(
    run: Callable[..., Container], volume: Callable[[], str], nodes: Path
) -> None:
    data = volume()
    write_json(nodes / "extra.json", node_doc("extra"))
    first = run(f"--volume={data}:/data", mount(nodes))
    before = visible_state(first)
    assert before["ready"] == {"status": "ready", "revision": 1}

    podman("restart", "--time", "5", first.name)
    first.wait_ready()
    assert visible_state(first) == before  # nothing re-applied: every applied_at as it was
    podman("stop", "--time", "5", first.name)

    second = run(f"--volume={data}:/data", mount(nodes))
    assert visible_state(second) == before
    assert "reconciled revision" not in second.logs()  # the start-up pass committed nothing


def test_log_format_json_gives_one_json_object_per_line(run: Callable[..., Container]) -> None:
    container = run("--env=LOG_FORMAT=json")
    container.get("/api/v1/nodes")
    wait_until(lambda: "GET /api/v1/nodes" in container.logs(), DEADLINE)
    lines = [line for line in container.logs().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) and {"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert {r["logger"] for r in records} >= {"uvicorn.error", "uvicorn.access", "droq_registry"}


# -- compose ------------------------------------------------------------------------------

PODMAN_COMPOSE = shutil.which("podman-compose", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def test_compose_serves_the_mounted_nodes_and_down_keeps_the_volume(image: str, tmp_path: Path) -> None:
    assert PODMAN_COMPOSE, "podman-compose is a test dependency (pip install -e '.[test]')"
    # An operator's folder: the project's compose.yml as shipped, beside their own node files.
    shutil.copy(ROOT / "compose.yml", tmp_path / "compose.yml")
    nodes = tmp_path / "assets" / "nodes"
    nodes.mkdir(parents=True)
    write_json(nodes / "theirs.json", node_doc("theirs", {"Theirs": "pkg.theirs"}))
    project = f"droq-test-{uuid.uuid4().hex[:12]}"
    port = free_port()
    # The image this suite built (compose would build droq-registry:latest if it were missing).
    env = {**os.environ, "REGISTRY_PUBLISH": f"127.0.0.1:{port}", "REGISTRY_IMAGE": image}

    def compose(*args: str) -> None:
        assert PODMAN_COMPOSE is not None
        result = subprocess.run([PODMAN_COMPOSE, "--project-name", project, *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stdout + result.stderr

    def container() -> Container:
        names = podman("ps", "--all", "--filter", f"label=io.podman.compose.project={project}",
                       "--format", "{{.Names}}").stdout.split()
        assert len(names) == 1, names
        found = Container(names[0], port)
        found.wait_ready()
        return found

    try:
        compose("up", "-d")
        first = container()
        assert [n["metadata"]["node_id"] for n in first.get("/api/v1/nodes").json()["nodes"]] == ["theirs"]
        write_json(nodes / "added.json", node_doc("added", {"Added": "pkg.added"}))
        wait_until(lambda: first.get("/api/v1/components/Added/node").status_code == 200, DEADLINE)
        # compose.yml's own health check (readiness) replaces the image's, and passes.
        assert inspect("container", first.name)["Config"]["Healthcheck"]["Test"] == [
            "CMD", "droq-registry", "probe", "/ready"
        ]
        assert healthcheck(first) == (0, "")
        mounts = {m["Destination"]: (m["Type"], m["RW"]) for m in inspect("container", first.name)["Mounts"]}
        assert mounts == {"/srv/assets/nodes": ("bind", False), "/data": ("volume", True)}
        before = visible_state(first)
        first.http.close()

        compose("down")
        assert podman("volume", "exists", f"{project}_registry-data", check=False).returncode == 0

        compose("up", "-d")
        second = container()
        assert visible_state(second) == before  # the same database, on the kept volume
        second.http.close()
    finally:
        compose("down", "--volumes")
    assert podman("volume", "exists", f"{project}_registry-data", check=False).returncode == 1
