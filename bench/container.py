"""The image: build from nothing, rebuilds, size over its base, time to ready, time to stop.

    .venv/bin/python bench/container.py [--runs 5] [--changes 50] [--followers 20]

Everything runs in a podman storage of its own (a temporary graph root, through
CONTAINERS_STORAGE_CONF), so "from nothing" means no base image and no cached layer, and
the machine's own images and containers are left alone:

  build from nothing     deploy/build-image.sh on the empty storage: the stand-in base made
                         from Debian packages (mmdebstrap), then the image
  nothing to ready       that, plus `podman run` until GET /ready answers 200
  cached rebuild         deploy/build-image.sh again, nothing changed
  rebuild, code changed  the same on a copy of the checkout with one package file changed:
                         the dependencies are installed again
  time to ready          `podman run --detach` until /ready answers 200 (median of --runs)
  time to stop           `podman stop` of an idle container, and of one with --followers
                         long-polls and as many event streams open (median); the exit code
  size over the base     the image's size minus its base's (podman image inspect)
  change to visible      a node file written on the host until the lookup of its class
                         answers 200 through the bind mount (p50 and p99 of --changes)

Targets: at most 60 MB over the base, podman stop within 5 s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import common

IMAGE = "localhost/droq-registry:bench"
BUILD = "deploy/build-image.sh"


def podman(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
    return result.stdout


def build(checkout: Path) -> float:
    """Seconds for deploy/build-image.sh in `checkout`."""
    started = time.perf_counter()
    result = subprocess.run(["bash", str(checkout / BUILD), "--tag", IMAGE], capture_output=True, text=True,
                            timeout=1200, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{BUILD} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def ready(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if common.get(port, "/ready", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"no /ready 200 on port {port}")


@contextmanager
def container(*options: str) -> Iterator[tuple[str, int, float]]:
    """A running container: (name, published port, seconds from `podman run` to /ready 200)."""
    name, port = f"droq-bench-{uuid.uuid4().hex[:10]}", common.free_port()
    started = time.perf_counter()
    podman("run", "--detach", "--name", name, "--publish", f"127.0.0.1:{port}:8002", *options, IMAGE)
    try:
        ready(port, time.monotonic() + 60)
        yield name, port, time.perf_counter() - started
    finally:
        subprocess.run(["podman", "rm", "--force", "--volumes", name], capture_output=True, timeout=60, check=False)


def hold(port: int, path: str, opened: threading.Event) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        if path.endswith("events"):
            response = conn.getresponse()
            opened.set()
            response.read()
        else:
            opened.set()
            conn.getresponse().read()
    except (OSError, http.client.HTTPException):
        pass  # what followers get at shutdown is tests/test_container.py's business
    finally:
        opened.set()
        conn.close()


def stop(followers: int) -> tuple[float, int]:
    """(seconds `podman stop --time 5` took, the exit code) with `followers` of each kind open."""
    with container() as (name, port, _):
        revision = json.loads(common.get(port, "/ready")[2])["revision"]
        paths = [f"/api/v1/changes?since={revision}&wait=60"] * followers + ["/api/v1/events"] * followers
        events = [threading.Event() for _ in paths]
        threads = [threading.Thread(target=hold, args=(port, p, e), daemon=True) for p, e in zip(paths, events)]
        for thread in threads:
            thread.start()
        for event in events:
            event.wait(30)
        common.get(port, "/ready")
        started = time.perf_counter()
        podman("stop", "--time", "5", name)
        seconds = time.perf_counter() - started
        code = int(podman("inspect", "--format", "{{.State.ExitCode}}", name).strip())
        for thread in threads:
            thread.join(10)
        return seconds, code


def change_to_visible(changes: int, work: Path) -> list[float]:
    """Milliseconds from writing a node file on the host to its lookup answering 200."""
    nodes = work / "nodes"
    nodes.mkdir()
    for path in (common.ROOT / "assets" / "nodes").glob("*.json"):
        shutil.copy(path, nodes / path.name)
    samples = []
    with container(f"--volume={nodes}:/srv/assets/nodes:ro", "--env=REGISTRY_RESYNC_SECONDS=0") as (_, port, _):
        keep = common.KeepAlive(port)
        for i in range(changes):
            doc = {"node_id": f"bench-{i}", "name": f"Bench {i}", "components": {f"Bench{i}": f"pkg.b{i}"}}
            started = time.perf_counter()
            (nodes / f"bench-{i}.json").write_text(json.dumps(doc))
            while keep.get(f"/api/v1/components/Bench{i}/node")[0] != 200:
                if time.perf_counter() - started > 30:
                    raise RuntimeError(f"bench-{i}.json did not appear within 30 s")
            samples.append((time.perf_counter() - started) * 1000)
        keep.close()
    return samples


def checkout_copy(work: Path) -> Path:
    """The checkout's tracked files as they are now, with one package file changed."""
    copy = work / "checkout"
    files = subprocess.run(["git", "-C", str(common.ROOT), "ls-files", "-z"], capture_output=True, check=True,
                           timeout=60).stdout.decode().split("\0")
    for name in filter(None, files):
        source = common.ROOT / name
        if source.is_file() or source.is_symlink():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name, follow_symlinks=False)
    init = copy / "daemon" / "droq_registry" / "__init__.py"
    init.write_text(init.read_text() + f"\n# bench rebuild {uuid.uuid4().hex}\n")
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="containers started (and stopped) for the medians")
    parser.add_argument("--changes", type=int, default=50, help="node files written for change to visible")
    parser.add_argument("--followers", type=int, default=20, help="long-polls and event streams open at stop")
    parser.add_argument("--name", default="container", help="results file name in bench/results/")
    args = parser.parse_args()
    common.exit_on_sigterm()
    report = common.Report(args.name, "Container image: build, size, start and stop (podman, runc)")
    work = common.temp_workdir("container")
    storage = work / "storage"
    (work / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{storage}/graph"\nrunroot = "{storage}/run"\n'
    )
    os.environ["CONTAINERS_STORAGE_CONF"] = str(work / "storage.conf")
    try:
        from_nothing = build(common.ROOT)
        with container() as (_, _, first_ready):
            pass
        cached = build(common.ROOT)
        changed = build(checkout_copy(work))
        build(common.ROOT)  # the benchmark's image is this checkout's again
        readies = []
        for _ in range(args.runs):
            with container() as (_, _, seconds):
                readies.append(seconds)
        idle = [stop(0) for _ in range(args.runs)]
        busy = [stop(args.followers) for _ in range(args.runs)]
        visible = change_to_visible(args.changes, work)
        inspect = json.loads(podman("image", "inspect", IMAGE))[0]
        base = inspect["Labels"]["org.opencontainers.image.base.name"]
        base_size = json.loads(podman("image", "inspect", base))[0]["Size"]
        over = (inspect["Size"] - base_size) / 1e6
    finally:
        # Empty the benchmark's own storage (not `podman system reset`, which also resets
        # the machine's network configuration), then remove it.
        for command in (["rm", "--all", "--force", "--volumes"], ["rmi", "--all", "--force"]):
            subprocess.run(["podman", *command], capture_output=True, timeout=300, check=False)
        common.remove_tree(work)

    report.table(
        "Build",
        ["step", "seconds"],
        [
            ["build from nothing (base from Debian packages, then the image)", common.fmt(from_nothing)],
            ["nothing to ready (that, then podman run to /ready 200)", common.fmt(from_nothing + first_ready)],
            ["cached rebuild, nothing changed", common.fmt(cached)],
            ["rebuild after a package file changed (dependencies installed again)", common.fmt(changed)],
        ],
    )
    report.table(
        f"Run (median of {args.runs})",
        ["measure", "value"],
        [
            ["podman run to /ready 200", f"{common.fmt(statistics.median(readies), 2)} s"],
            ["podman stop, idle", f"{common.fmt(statistics.median(s for s, _ in idle), 2)} s"],
            [f"podman stop, {args.followers} long-polls + {args.followers} event streams open",
             f"{common.fmt(statistics.median(s for s, _ in busy), 2)} s"],
            ["exit codes after podman stop", " ".join(str(c) for _, c in idle + busy)],
            [f"change to visible through the bind mount, p50 / p99 of {args.changes} (the slowest, which change)",
             (f"{common.fmt(common.percentile(visible, 50))} / {common.fmt(common.percentile(visible, 99))} ms "
              f"({common.fmt(max(visible))} ms, #{visible.index(max(visible)) + 1})")],
            ["image size / base size / over the base",
             f"{inspect['Size'] / 1e6:.1f} / {base_size / 1e6:.1f} / {over:.1f} MB"],
        ],
    )
    report.note(f"Base: `{base}`. Sizes are podman's (uncompressed layers, MB = 10^6 bytes).")
    report.figures.update(
        build_from_nothing_s=from_nothing, nothing_to_ready_s=from_nothing + first_ready, cached_rebuild_s=cached,
        code_change_rebuild_s=changed, ready_s=readies, stop_idle=idle, stop_busy=busy,
        visible_ms_p50=common.percentile(visible, 50), visible_ms_p99=common.percentile(visible, 99), visible_ms=visible,
        image_bytes=inspect["Size"], base_bytes=base_size,
    )
    report.check("size over the base", over, 60, "MB")
    report.check("podman stop with followers open, slowest", max(s for s, _ in idle + busy), 5, "s")
    report.check("exit codes other than 0 after podman stop", sum(1 for _, c in idle + busy if c != 0), 0)
    report.write()


if __name__ == "__main__":
    main()
