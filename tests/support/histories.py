"""Replicas and the positions their answers give (issue 12's epochs and content hashes):
what the history tests start, read and expect."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from .server import ServerProcess, server_env


def replica(
    server: Callable[..., ServerProcess], assets: Path, db: Path, ready: bool = True, **env: str
) -> ServerProcess:
    """A `droq-registry serve` process on `assets` with the database `db` (waited for
    until it is ready, unless `ready` is False), from the `server` fixture."""
    return server(
        server_env(assets, db, **env),
        db.with_suffix(f".{len(list(db.parent.glob('*.log')))}.log"),
        ready,
    )


def position(response: httpx.Response) -> dict[str, Any]:
    """Where an answer's headers say it stands: revision, epoch and content hash."""
    return {
        "revision": int(response.headers["x-registry-revision"]),
        "epoch": response.headers["x-registry-epoch"],
        "content_hash": response.headers["x-registry-content-hash"],
    }


def where(srv: ServerProcess) -> dict[str, Any]:
    """Where a running registry stands now."""
    return position(srv.get("/api/v1/nodes?status=all"))


def then(pos: dict[str, Any]) -> str:
    """The end of every 410's detail: what a client does next, from `pos`."""
    return (
        f"list the registry again, unless your state has content hash {pos['content_hash']}, and follow "
        f"changes from revision {pos['revision']} of epoch {pos['epoch']}"
    )


def other_epoch(asked: str, pos: dict[str, Any]) -> dict[str, Any]:
    """The 410 body for a cursor of epoch `asked` on a registry at `pos`."""
    return {"detail": f"epoch {asked} is another history than this registry's (epoch {pos['epoch']}); {then(pos)}",
            **pos}


def ahead(since: int, pos: dict[str, Any], name: str = "since") -> dict[str, Any]:
    """The 410 body for a cursor `since` ahead of the revision of a registry at `pos`."""
    return {
        "detail": f"{name}={since} is ahead of this registry's revision {pos['revision']}, so it counts in "
                  f"another history; {then(pos)}",
        **pos,
    }


def expired(since: int, floor: int, pos: dict[str, Any]) -> dict[str, Any]:
    """The 410 body for a cursor `since` older than the log of a registry at `pos` keeps."""
    return {
        "detail": f"changes after revision {since} are no longer kept (the log starts after revision "
        f"{floor}); {then(pos)}",
        **pos,
    }


def records(response: httpx.Response) -> list[dict[str, Any]]:
    """The change records of a 200 answer of /api/v1/changes, without their times."""
    assert response.status_code == 200, response.text
    return [{k: v for k, v in c.items() if k != "at"} for c in response.json()["changes"]]


def has_node(srv: ServerProcess, node_id: str) -> bool:
    return srv.get(f"/api/v1/nodes/{node_id}").status_code == 200
