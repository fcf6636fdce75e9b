"""Faults found by attacking the hardened service: real server processes, real disks.

Each test here reproduces a defect found from outside, through the real path, and stays
as the proof that it is fixed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from support.files import copy_real_nodes, write_json
from support.polling import wait_until
from test_faults import (  # noqa: F401  # fixtures, used by name
    HEAL,
    Service,
    assert_healthy,
    big_node,
    env_for,
    failing,
    fill,
    services,
    tiny_disk,
)


def test_a_file_event_that_changes_nothing_does_not_end_the_retries_of_a_failed_pass(
    tiny_disk: Path, tmp_path: Path, services: Callable[..., Service]  # noqa: F811  # the fixtures
) -> None:
    """A pass failed (full disk) with a new node pending. Then an event names a node file
    whose content did not change (`touch`): that pass has nothing to write, so it
    succeeded even on the full disk, and it used to count as "works again": /health said
    healthy, the retries stopped, and the pending node never committed once space came
    back (with REGISTRY_RESYNC_SECONDS=0 never; by default a minute later)."""
    assets = tmp_path / "assets" / "nodes"
    copy_real_nodes(assets)
    db = tiny_disk / "registry.db"
    service = services(env_for(assets, db))
    filler = fill(tiny_disk)

    write_json(assets / "new.json", big_node("new-node"))
    wait_until(lambda: failing(service))
    failed = service.metric('droq_registry_reconciles_total{result="failed"}')
    unchanged = service.metric('droq_registry_reconciles_total{result="unchanged"}')
    touched = next(iter(sorted(assets.glob("*.json"))))
    os.utime(touched)  # an event for a file whose content is what the store has
    # The pass that event causes fails too (the new node is still pending), and /health
    # keeps saying why.
    wait_until(lambda: service.metric('droq_registry_reconciles_total{result="failed"}') >= failed + 2, HEAL)
    assert service.health()["status"] == "degraded"
    assert service.metric('droq_registry_reconciles_total{result="unchanged"}') == unchanged
    assert service.get("/api/v1/nodes/new-node").status_code == 404

    filler.unlink()  # no file event, no periodic rescan: only the retries can commit it
    wait_until(lambda: service.get("/api/v1/nodes/new-node").status_code == 200, HEAL)
    assert_healthy(service, revision=2)
    assert service.stop() == 0
