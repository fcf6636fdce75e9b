"""A reverse proxy in front of a real registry, for the tests: switchable, logged, and
optionally speaking issue 12's epochs before the registry does.

    python registry_proxy.py --port P --upstream http://127.0.0.1:Q [--epoch E]

Every request is forwarded to the upstream registry (headers such as If-None-Match and
Authorization included) and logged; `POST /_proxy/upstream` (body: a URL) sends the next
requests to another registry without closing the client's connection, as a load balancer
that moves a client between replicas does. `GET /_proxy/log` lists what was asked and
answered; `DELETE /_proxy/log` empties it.

With `--epoch E` the proxy adds what issue 12 specifies on every answer under /api/v1/:
`X-Registry-Epoch: E` and `X-Registry-Content-Hash` (a digest of every node exactly as the
upstream serves `GET /api/v1/nodes/{id}` at that revision, so two proxies over registries
serving the same files give the same hash), and answers `GET /api/v1/changes` with `410
{detail, revision, epoch, content_hash}` for an `epoch` other than E or a `since` ahead of
the revision. Once the registry speaks issue 12 itself these tests keep their meaning: the
proxy's headers stand in for the registry's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

FORWARDED_REQUEST = ("if-none-match", "authorization", "last-event-id")
FORWARDED_ANSWER = ("etag", "x-registry-revision", "cache-control", "content-type", "www-authenticate")


class Proxy:
    def __init__(self, upstream: str, epoch: str | None) -> None:
        self.upstream = upstream.rstrip("/")
        self.epoch = epoch
        self.log: list[dict[str, Any]] = []
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(10, read=90))
        self.hashes: dict[tuple[str, int], str] = {}

    async def content_hash(self, upstream: str, revision: int, auth: dict[str, str]) -> str | None:
        """A digest of every node as `upstream` serves it at `revision` (None if it moved on)."""
        key = (upstream, revision)
        if key in self.hashes:
            return self.hashes[key]
        listing = await self.http.get(f"{upstream}/api/v1/nodes", params={"status": "all"}, headers=auth)
        if int(listing.headers["x-registry-revision"]) != revision:
            return None
        digest = hashlib.sha256()
        for item in sorted(listing.json()["nodes"], key=lambda n: n["metadata"]["node_id"]):
            node_id = item["metadata"]["node_id"]
            detail = await self.http.get(f"{upstream}/api/v1/nodes/{node_id}", headers=auth)
            if int(detail.headers["x-registry-revision"]) != revision:
                return None
            digest.update(node_id.encode() + b"\0" + detail.content + b"\0")
        self.hashes[key] = value = digest.hexdigest()[:32]
        return value

    async def handle(self, request: Request) -> Response:
        upstream = self.upstream
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED_REQUEST}
        auth = {k: v for k, v in headers.items() if k == "authorization"}
        params = dict(request.query_params)
        path = request.url.path
        entry: dict[str, Any] = {"path": path, "query": str(request.url.query),
                                 "if_none_match": headers.get("if-none-match"), "upstream": upstream}
        self.log.append(entry)
        emulate = self.epoch is not None and path.startswith("/api/v1/")
        if emulate and path == "/api/v1/changes":
            asked = params.pop("epoch", None)
            listing = await self.http.get(f"{upstream}/api/v1/nodes", params={"status": "all"}, headers=auth)
            revision = int(listing.headers["x-registry-revision"])
            since = params.get("since", "0")
            if (asked is not None and asked != self.epoch) or (since.isdigit() and int(since) > revision):
                current, content_hash = await self._settled_hash(upstream, auth)
                body = {"detail": "this cursor is from another history: list again", "revision": current,
                        "epoch": self.epoch, "content_hash": content_hash}
                entry["status"] = 410
                return JSONResponse(body, 410, headers=self._position(current, content_hash))
        answer = await self.http.get(upstream + path, params=params, headers=headers)
        entry["status"] = answer.status_code
        out = {k: v for k, v in answer.headers.items() if k in FORWARDED_ANSWER}
        if emulate and "x-registry-revision" in answer.headers:
            revision = int(answer.headers["x-registry-revision"])
            content_hash = await self.content_hash(upstream, revision, auth)
            out.update(self._position(revision, content_hash))
        return Response(answer.content, answer.status_code, headers=out)

    async def _settled_hash(self, upstream: str, auth: dict[str, str]) -> tuple[int, str | None]:
        """The upstream's current revision and its content hash (retried while it moves)."""
        revision = 0
        for _ in range(20):
            listing = await self.http.get(f"{upstream}/api/v1/nodes", params={"status": "all"}, headers=auth)
            revision = int(listing.headers["x-registry-revision"])
            value = await self.content_hash(upstream, revision, auth)
            if value is not None:
                return revision, value
        return revision, None

    def _position(self, revision: int, content_hash: str | None) -> dict[str, str]:
        headers = {"x-registry-revision": str(revision)}
        if self.epoch is not None:
            headers["x-registry-epoch"] = self.epoch
        if content_hash is not None:
            headers["x-registry-content-hash"] = content_hash
        return headers


def build(proxy: Proxy) -> Starlette:
    async def forward(request: Request) -> Response:
        return await proxy.handle(request)

    async def upstream(request: Request) -> Response:
        proxy.upstream = (await request.body()).decode().strip().rstrip("/")
        return JSONResponse({"upstream": proxy.upstream})

    async def log(request: Request) -> Response:
        if request.method == "DELETE":
            proxy.log.clear()
        return Response(json.dumps(proxy.log), media_type="application/json")

    return Starlette(routes=[
        Route("/_proxy/upstream", upstream, methods=["POST"]),
        Route("/_proxy/log", log, methods=["GET", "DELETE"]),
        Route("/{path:path}", forward, methods=["GET"]),
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--epoch")
    args = parser.parse_args()
    uvicorn.run(build(Proxy(args.upstream, args.epoch)), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
