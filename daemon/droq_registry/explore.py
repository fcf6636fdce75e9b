"""What people read (the dashboard): its files, and the endpoints it asks: components with
their details, search, and classes that several nodes claim.

Same rules as `api`: one snapshot per answer, sent as `answers.py` prepares it (ETag, 304,
the snapshot's headers); the bodies that only people ask for are built here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from . import bodies, nodebytes
from .api import answers_of, offload_of, respond
from .search import MAX_QUERY
from .search import search as search_body
from .snapshot import NodeView, Snapshot, etag_of, exact


async def node_components(request: Request) -> Response:
    """`GET /api/v1/nodes/{id}/components`: every component with display name and description."""
    prepared = answers_of(request)
    snap = prepared.snap
    assert snap is not None
    node_id = request.path_params["node_id"]
    view = snap.nodes.get(node_id)
    if view is None:
        return respond(request, prepared.error(404, bodies.node_missing_detail(node_id)))

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
    return respond(request, prepared.ok(body, etag_of(body)))


def _info(snap: Snapshot, view: NodeView) -> dict[str, Mapping[str, Any]]:
    """Display names, descriptions and the like: only people ask, so they are not kept in
    the snapshot but read back from the node's last good document when asked."""
    source = snap.sources.get(view.source)
    if source is None or source.packed is None:
        return {}
    return {c.component_class: c.info for c in nodebytes.unpack(source.packed).components if c.info}


async def search(request: Request) -> Response:
    """`GET /api/v1/search?q=text`: components whose class, display name or description
    contains the text (any case), each with the node a lookup would choose (`search.py`)."""
    prepared = answers_of(request)
    snap = prepared.snap
    assert snap is not None
    query = request.query_params.get("q", "").strip()
    if not query:
        return respond(request, prepared.error(400, "q must be a non-empty search text"))
    if len(query) > MAX_QUERY:
        return respond(request, prepared.error(400, f"q must be at most {MAX_QUERY} characters"))
    body = await offload_of(request).search(search_body, snap, query)
    return respond(request, prepared.ok(body, etag_of(body)))


async def shared_classes(request: Request) -> Response:
    """`GET /api/v1/shared-classes`: classes declared by more than one active node."""
    prepared = answers_of(request)
    snap = prepared.snap
    assert snap is not None

    def build() -> tuple[bytes, str]:  # a walk of every class: off the event loop
        rows = [
            {"component_class": cls, "nodes": list(nodes), "chosen": nodes[0]}
            for cls, nodes in sorted(snap.index.items())
            if len(nodes) > 1
        ]
        body = exact(orjson.dumps({"classes": rows, "total_classes": len(rows)}))  # kept in the snapshot
        return body, etag_of(body)

    return respond(request, prepared.ok(*await offload_of(request).once(snap, "shared", build)))


#: The dashboard: plain HTML, CSS and JavaScript shipped in the package, no build step.
UI_DIR = Path(__file__).resolve().parent / "ui"


class UIFiles(StaticFiles):
    """The dashboard's files, with a policy that lets the page load nothing from elsewhere."""

    POLICY = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["content-security-policy"] = self.POLICY
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["cache-control"] = "no-cache"
        return response
