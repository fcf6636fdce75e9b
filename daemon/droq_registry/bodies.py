"""The bodies of the answers, and the words of their 404s: pure functions of a snapshot.

Each gives the exact bytes a client receives (and the ETag where the answer has one);
`answers.py` wraps them with status and headers. `detail` and `lookup` join a node's
pre-serialised parts (`snapshot.NodeView`); `node_list`, `candidates` and `sources` walk
the snapshot, so their callers run the big ones in a worker thread (`offload.py`).
"""

from __future__ import annotations

import orjson

from .snapshot import NodeView, Snapshot, etag_of, exact

# --- messages ------------------------------------------------------------------------------


def quote(value: str) -> str:
    """A path parameter as it goes back into a message: shortened and quoted."""
    return "'" + (value if len(value) <= 256 else value[:253] + "...") + "'"


def component_missing_detail(component_class: str) -> str:
    return f"Component {quote(component_class)} not found in any executor node"


def node_missing_detail(node_id: str) -> str:
    return f"Node {quote(node_id)} not found in registry"


# --- bodies --------------------------------------------------------------------------------


def detail(view: NodeView) -> tuple[bytes, str]:
    """Body and ETag of `GET /api/v1/nodes/{id}`."""
    body = b"".join((b'{"node":', view.node_json, b',"components":', view.components_json, b"}"))
    return body, etag_of(body)


def lookup(view: NodeView, component_class: str) -> tuple[bytes, str]:
    """Body and ETag of `GET /api/v1/components/{class}/node` answered by `view`."""
    module = orjson.dumps(view.paths[component_class])
    body = b"".join(
        (b'{"node":', view.node_json, b',"components":', view.components_json, b',"module_path":', module, b"}")
    )
    return body, etag_of(b"lookup", view.served_hash, module)


def node_list_key(status: str) -> tuple[str, str]:
    """Where the snapshot keeps the body of `GET /api/v1/nodes?status=...` once built."""
    return ("nodes", status)


def node_list(snap: Snapshot, status: str) -> tuple[bytes, str]:
    """Body and ETag of the node list: a walk of every node (run it off the event loop)."""
    views = [v for _, v in sorted(snap.nodes.items()) if status == "all" or v.status == status]
    parts = [
        b'{"metadata":' + v.node_json + b',"components_count":' + str(len(v.paths)).encode() + b"}"
        for v in views
    ]
    body = b'{"nodes":[' + b",".join(parts) + b'],"total_nodes":' + str(len(views)).encode() + b"}"
    return body, etag_of(body)


def candidates(snap: Snapshot, component_class: str, nodes: tuple[str, ...]) -> bytes:
    """Body of `GET /api/v1/components/{class}/nodes`: every candidate's whole node."""
    parts = [
        b'{"node":' + snap.nodes[n].node_json + b',"module_path":' + orjson.dumps(snap.nodes[n].paths[component_class])
        + b"}"
        for n in nodes
    ]
    return (
        b'{"component_class":' + orjson.dumps(component_class) + b',"nodes":['
        + b",".join(parts) + b'],"total_nodes":' + str(len(nodes)).encode() + b"}"
    )


def sources(snap: Snapshot) -> tuple[bytes, str]:
    """Body and ETag of `GET /api/v1/sources`: every file with its state (off the loop)."""
    rows = [
        {
            "path": s.path,
            "node_id": s.node_id,
            "state": s.state,
            "error": s.error,
            "content_hash": s.content_hash,
            "applied_at": s.applied_at,
            "updated_at": s.updated_at,
            # a refused file whose node is still served from its last good version
            "serving_last_good": s.state != "ok" and s.node_id is not None
            and s.node_id in snap.nodes and snap.nodes[s.node_id].source == s.path,
        }
        for _, s in sorted(snap.sources.items())
    ]
    body = exact(orjson.dumps(  # kept in the snapshot
        {"sources": rows, "total_sources": len(rows), "errors": sum(1 for r in rows if r["state"] != "ok")}
    ))
    return body, etag_of(body)
