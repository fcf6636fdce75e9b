"""The README's executor example works as printed, against a real server."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from support.files import ROOT, node_doc, write_json
from support.polling import wait_until
from support.server import ServerProcess


def example_code() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    (code,) = [b for b in blocks if "def node_for" in b and "def follow" in b]
    return code


def test_executor_example_caches_with_etag_and_follows_changes(
    real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = server({"REGISTRY_ASSETS_DIR": str(real_assets), "REGISTRY_DB_PATH": str(tmp_path / "r.db")},
                 tmp_path / "server.log")
    code = example_code().replace('"http://localhost:8002"', repr(srv.url))
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102  # the README's own code, its last lines too

    with httpx.Client(base_url=srv.url) as client:
        first = namespace["node_for"](client, "Multiply")
        assert first["node"]["node_id"] == "dfx-math-executor-node"
        etag = namespace["cache"]["Multiply"][0]
        # Revalidation: the server answers 304 and the cached answer is returned.
        assert client.get("/api/v1/components/Multiply/node", headers={"If-None-Match": etag}).status_code == 304
        assert namespace["node_for"](client, "Multiply") == first

        # follow() drops the cache when a node changes; run it until it has.
        polling = threading.Event()
        follower = threading.Thread(target=lambda: _follow_once(namespace, srv.url, polling), daemon=True)
        follower.start()
        assert polling.wait(10), "the example never long-polled /api/v1/changes"
        write_json(real_assets / "faster-math.json",
                   node_doc("a-faster-math", {"Multiply": "fast.multiply"}, priority=5))
        wait_until(lambda: "Multiply" not in namespace["cache"], timeout=10)
        assert namespace["node_for"](client, "Multiply")["node"]["node_id"] == "a-faster-math"


class _Client(httpx.Client):
    """Says when the example starts its first long-poll (after it has read the revision)."""

    def __init__(self, polling: threading.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.polling = polling

    def get(self, url: Any, **kwargs: Any) -> httpx.Response:  # type: ignore[override]
        if str(url).startswith("/api/v1/changes"):
            self.polling.set()
        return super().get(url, **kwargs)


def _follow_once(namespace: dict[str, Any], url: str, polling: threading.Event) -> None:
    with _Client(polling, base_url=url) as client:
        try:
            namespace["follow"](client)
        except Exception:  # noqa: BLE001, S110  # the server stops at the end of the test
            pass


class _Switch(httpx.HTTPTransport):
    """Sends every request to one replica's port; `switch_after_next(port)` moves to another
    once the answer in flight arrives, and holds the next request until `release()`."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.polling = threading.Event()
        self.held = threading.Event()
        self._go = threading.Event()
        self._go.set()
        self._next: int | None = None
        self.answers: list[tuple[int, str, int]] = []

    def switch_after_next(self, port: int) -> None:
        self._next = port

    def release(self) -> None:
        self._go.set()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self._go.is_set():
            self.held.set()
            assert self._go.wait(60)
        port = self.port
        request.url = request.url.copy_with(port=port)
        if request.url.path == "/api/v1/changes":
            self.polling.set()
        response = super().handle_request(request)
        self.answers.append((port, request.url.path, response.status_code))
        if self._next is not None:
            self.port, self._next = self._next, None
            self._go.clear()
        return response


def _put(path: Path, data: bytes) -> None:
    """Write a file whole (a rename), so each replica sees exactly one change."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _sources(url: str) -> dict[str, Any]:
    return {s["path"]: s for s in httpx.get(f"{url}/api/v1/sources").json()["sources"]}


def _revision(url: str) -> int:
    return int(httpx.get(f"{url}/api/v1/nodes").headers["x-registry-revision"])


def test_follow_example_moved_between_two_replicas_misses_no_change(
    real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    def replica(name: str) -> ServerProcess:
        return server({"REGISTRY_ASSETS_DIR": str(real_assets), "REGISTRY_DB_PATH": str(tmp_path / f"{name}.db")},
                      tmp_path / f"{name}.log")

    a = replica("a")
    # A alone sees a file go into error and recover: A counts two revisions more than B will.
    _put(real_assets / "flaky.json", b"{")
    wait_until(lambda: _sources(a.url).get("flaky.json", {}).get("state") == "error")
    _put(real_assets / "flaky.json", orjson.dumps(node_doc("flaky")))
    wait_until(lambda: _sources(a.url).get("flaky.json", {}).get("state") == "ok")
    b = replica("b")
    wait_until(lambda: _sources(b.url).get("flaky.json", {}).get("state") == "ok")
    assert _revision(a.url) == _revision(b.url) + 2

    namespace: dict[str, Any] = {}
    exec(compile(example_code().replace('"http://localhost:8002"', repr(a.url)), "README.md", "exec"), namespace)  # noqa: S102
    cache, node_for = namespace["cache"], namespace["node_for"]
    lookups = httpx.Client(base_url=a.url)
    assert node_for(lookups, "Multiply")["node"]["node_id"] == "dfx-math-executor-node"

    switch = _Switch(a.port)
    follower = httpx.Client(base_url=a.url, transport=switch)
    threading.Thread(target=lambda: _run(namespace["follow"], follower), daemon=True).start()
    assert switch.polling.wait(10), "the example never long-polled /api/v1/changes"

    # X: A answers the long-poll with it; the follower's next request goes to B and is held.
    switch.switch_after_next(b.port)
    faster = real_assets / "faster-math.json"
    _put(faster, orjson.dumps(node_doc("a-faster-math", {"Multiply": "fast.multiply"}, priority=5)))
    wait_until(lambda: "Multiply" not in cache)
    assert switch.held.wait(10)
    cursor = _revision(a.url)  # where the follower stands, in A's history
    assert node_for(lookups, "Multiply")["node"]["node_id"] == "a-faster-math"  # cached again

    # Y, while the follower is between replicas: the faster node goes away again...
    faster.unlink()
    wait_until(lambda: "faster-math.json" not in _sources(b.url) and "faster-math.json" not in _sources(a.url))
    y = _revision(b.url)
    # ... then a file the registry refuses twice: records that change no node.
    for junk in (b"[]", b"{"):
        before = _revision(b.url), _revision(a.url)
        _put(real_assets / "junk.json", junk)
        wait_until(lambda then=before: (_revision(b.url), _revision(a.url)) == (then[0] + 1, then[1] + 1))
    # B's revision counts past the follower's cursor, and Y is below it: `since` alone would be
    # answered from B's history with the two refusals only, and Y would be missed.
    assert y <= cursor < _revision(b.url)

    switch.release()
    wait_until(lambda: "Multiply" not in cache)  # the 410's content hash differed: the cache went
    assert (b.port, "/api/v1/changes", 410) in switch.answers
    assert node_for(lookups, "Multiply")["node"]["node_id"] == "dfx-math-executor-node"

    # and from B's cursor it sees every later change
    _put(faster, orjson.dumps(node_doc("a-faster-math", {"Multiply": "fast.multiply"}, priority=5)))
    wait_until(lambda: "Multiply" not in cache)
    assert switch.answers[-1][:2] == (b.port, "/api/v1/changes")
    lookups.close()


def _run(follow: Callable[[httpx.Client], None], client: httpx.Client) -> None:
    try:
        follow(client)
    except Exception:  # noqa: BLE001, S110  # the servers stop at the end of the test
        pass
