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
from .api import NODE_ID, error, node_missing_detail, ok, snapshot_of
from .snapshot import NodeView, Snapshot, etag_of

MAX_RESULTS = 50
MAX_QUERY = 200


async def node_components(request: Request) -> Response:
    """`GET /api/v1/nodes/{id}/components`: every component with display name and description."""
    snap = snapshot_of(request)
    node_id = request.path_params["node_id"]
    view = snap.nodes.get(node_id) if NODE_ID.fullmatch(node_id) else None
    if view is None:
        return error(snap, 404, node_missing_detail(node_id))

    def build() -> tuple[bytes, str]:
        info = _info(snap, view)
        rows = [
            {**info.get(cls, {}), "component_class": cls, "module_path": path}
            for cls, path in view.paths.items()
        ]
        body = orjson.dumps({"node_id": view.node_id, "components": rows, "total_components": len(rows)})
        return body, etag_of(body)

    return ok(request, snap, *snap.cached(("components", node_id), build))


def _info(snap: Snapshot, view: NodeView) -> dict[str, Mapping[str, Any]]:
    """Display names, descriptions and the like: only people ask, so they are not kept in
    the snapshot but read back from the node's last good document when asked."""
    source = snap.sources.get(view.source)
    if source is None or source.doc is None:
        return {}
    return {c.component_class: c.info for c in nodefile.unpack(source.doc).components if c.info}


def _candidates(snap: Snapshot, cls: str) -> list[str]:
    return list(snap.index.get(cls, ()))


async def search(request: Request) -> Response:
    """`GET /api/v1/search?q=text`: components whose class, display name or description
    contains the text (any case), each with the node a lookup would choose."""
    snap = snapshot_of(request)
    query = request.query_params.get("q", "").strip()
    if not query:
        return error(snap, 400, "q must be a non-empty search text")
    if len(query) > MAX_QUERY:
        return error(snap, 400, f"q must be at most {MAX_QUERY} characters")
    needle = query.casefold()
    seen: set[str] = set()
    results: list[dict[str, Any]] = []
    truncated = False
    for node_id in sorted(snap.nodes):
        view = snap.nodes[node_id]
        infos = _info(snap, view)
        for cls, path in view.paths.items():
            if cls in seen:
                continue
            info = infos.get(cls, {})
            display = info.get("display_name")
            description = info.get("description")
            haystack = [cls]
            haystack += [v for v in (display, description) if isinstance(v, str)]
            if not any(needle in text.casefold() for text in haystack):
                continue
            seen.add(cls)
            if len(results) == MAX_RESULTS:
                truncated = True
                break
            candidates = _candidates(snap, cls)
            results.append(
                {
                    "component_class": cls,
                    "display_name": display if isinstance(display, str) else None,
                    "description": description if isinstance(description, str) else None,
                    "module_path": snap.nodes[candidates[0]].paths[cls] if candidates else path,
                    "node_id": candidates[0] if candidates else None,
                    "candidates": candidates,
                    "declared_by": node_id if not candidates else candidates[0],
                }
            )
        if truncated:
            break
    results.sort(key=lambda r: (not r["component_class"].casefold().startswith(needle), r["component_class"]))
    body = orjson.dumps({"query": query, "results": results, "truncated": truncated})
    return ok(request, snap, body, etag_of(body))


async def shared_classes(request: Request) -> Response:
    """`GET /api/v1/shared-classes`: classes declared by more than one active node."""
    snap = snapshot_of(request)

    def build() -> tuple[bytes, str]:
        rows = [
            {"component_class": cls, "nodes": list(nodes), "chosen": nodes[0]}
            for cls, nodes in sorted(snap.index.items())
            if len(nodes) > 1
        ]
        body = orjson.dumps({"classes": rows, "total_classes": len(rows)})
        return body, etag_of(body)

    return ok(request, snap, *snap.cached("shared", build))


def routes() -> list[Route]:
    return [
        Route("/api/v1/nodes/{node_id}/components", node_components, methods=["GET"]),
        Route("/api/v1/search", search, methods=["GET"]),
        Route("/api/v1/shared-classes", shared_classes, methods=["GET"]),
    ]
