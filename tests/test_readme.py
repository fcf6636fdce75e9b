"""The README's executor example works as printed, against a real server."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

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
    exec(compile(code, "README.md", "exec"), namespace)  # runs the example's own last lines too

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
        except Exception:  # the server stops at the end of the test
            pass
