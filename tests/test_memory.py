"""What a commit leaves behind: nothing of the revisions before it.

The server freezes everything the cyclic garbage collector tracks after each commit
(`server.freeze_after_commit`), so a reference cycle through a snapshot is never collected:
each such cycle keeps a whole revision alive for the life of the process (the soak benchmark
saw 1.4 GiB grow to 7.5 GiB over 10,000 commits when the prepared answers lived in the
snapshot's own cache). This test runs that policy through the real app, real files and every
read route, and proves that only the served snapshot is alive afterwards.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from starlette.testclient import TestClient

from droq_registry.app import create_app
from droq_registry.server import freeze_after_commit
from support.files import node_doc, write_json
from support.http import make_settings, reconcile_now
from support.polling import wait_until

READS = (
    "/api/v1/components/C00/node", "/api/v1/components/C00/nodes", "/api/v1/components/Nope/node",
    "/api/v1/nodes/n0", "/api/v1/nodes/nope", "/api/v1/nodes", "/api/v1/nodes?status=all",
    "/api/v1/nodes/n0/components", "/api/v1/search?q=c0", "/api/v1/sources", "/api/v1/shared-classes",
    "/api/v1/changes?since=0", "/api/v1/changes?since=0&wait=0", "/metrics", "/health", "/ready", "/",
    "/openapi.json",
)


def test_under_the_freeze_policy_no_revision_outlives_the_commit_after_it(assets: Path) -> None:
    for i in range(4):
        write_json(assets / f"n{i}.json", node_doc(f"n{i}", {f"C{i}{j}": "m.c" for j in range(20)}))
    gc.collect()
    app = create_app(make_settings(assets), after_commit=freeze_after_commit)
    revisions: list[weakref.ref[object]] = []
    try:
        with TestClient(app) as client:
            wait_until(lambda: client.get("/ready").status_code == 200)
            for k in range(25):
                write_json(assets / "n0.json", node_doc("n0", {f"C0{j}": f"m.c{k}" for j in range(20)}))
                reconcile_now(client)
                revisions.append(weakref.ref(app.state.registry.snapshot))
                for path in READS:
                    assert client.get(path).status_code < 500, path
                client.get("/api/v1/nodes/n0", headers={"If-None-Match": "*"})
            alive = [ref() for ref in revisions]
            assert [snap is not None for snap in alive] == [False] * 24 + [True]
            del alive
    finally:
        gc.unfreeze()  # the rest of the suite runs with the collector as it was
        gc.collect()
