"""Read endpoints for people (the dashboard): components with their details, search, and
classes that several nodes claim. Same rules as `api`: one snapshot per answer, ETags.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import nodefile
from .api import NODE_ID, error, node_missing_detail, offload_of, ok, snapshot_of
from .search import MAX_QUERY
from .search import search as search_body
from .snapshot import NodeView, Snapshot, etag_of


async def node_components(request: Request) -> Response:
    """`GET /api/v1/nodes/{id}/components`: every component with display name and description."""
    snap = snapshot_of(request)
    node_id = request.path_params["node_id"]
    view = snap.nodes.get(node_id) if NODE_ID.fullmatch(node_id) else None
    if view is None:
        return error(snap, 404, node_missing_detail(node_id))

    def build() -> bytes:
        info = _info(snap, view)
        rows = [
            {**info.get(cls, {}), "component_class": cls, "module_path": path}
            for cls, path in view.paths.items()
        ]
        return orjson.dumps({"node_id": view.node_id, "components": rows, "total_components": len(rows)})

    # Not kept: people ask for one node at a time, and a cache keyed by the node asked
    # for would hold a body per node. Building it reads one node's document.
    body = await offload_of(request).run(build)
    return ok(request, snap, body, etag_of(body))


def _info(snap: Snapshot, view: NodeView) -> dict[str, Mapping[str, Any]]:
    """Display names, descriptions and the like: only people ask, so they are not kept in
    the snapshot but read back from the node's last good document when asked."""
    source = snap.sources.get(view.source)
    if source is None or source.packed is None:
        return {}
    return {c.component_class: c.info for c in nodefile.unpack(source.packed).components if c.info}


async def search(request: Request) -> Response:
    """`GET /api/v1/search?q=text`: components whose class, display name or description
    contains the text (any case), each with the node a lookup would choose (`search.py`)."""
    snap = snapshot_of(request)
    query = request.query_params.get("q", "").strip()
    if not query:
        return error(snap, 400, "q must be a non-empty search text")
    if len(query) > MAX_QUERY:
        return error(snap, 400, f"q must be at most {MAX_QUERY} characters")
    body = await offload_of(request).search(search_body, snap, query)
    return ok(request, snap, body, etag_of(body))


async def shared_classes(request: Request) -> Response:
    """`GET /api/v1/shared-classes`: classes declared by more than one active node."""
    snap = snapshot_of(request)

    def build() -> tuple[bytes, str]:  # a walk of every class: off the event loop
        rows = [
            {"component_class": cls, "nodes": list(nodes), "chosen": nodes[0]}
            for cls, nodes in sorted(snap.index.items())
            if len(nodes) > 1
        ]
        body = orjson.dumps({"classes": rows, "total_classes": len(rows)})
        return body, etag_of(body)

    return ok(request, snap, *await offload_of(request).once(snap, "shared", build))


def routes() -> list[Route]:
    return [
        Route("/api/v1/nodes/{node_id}/components", node_components, methods=["GET"]),
        Route("/api/v1/search", search, methods=["GET"]),
        Route("/api/v1/shared-classes", shared_classes, methods=["GET"]),
    ]
