"""A reverse proxy in front of real registries, for the tests: what executors often reach
the registry through (an ingress, nginx, a sidecar), with its two behaviours that a direct
connection to a replica cannot show.

    python registry_proxy.py --port P --upstream http://127.0.0.1:Q

- Every request is forwarded to the upstream registry with its headers (If-None-Match,
  Authorization) and answered with the upstream's status, headers and body as they are.
- `POST /_proxy/upstream` (body: a URL) sends the next requests to another registry without
  closing the client's connection, as a load balancer moving a client between replicas
  does: the client keeps one URL and cannot tell that the history behind it changed.
  `GET /_proxy/upstream` says where requests go.
- While the upstream cannot be reached the proxy answers `502 Bad Gateway` with an HTML
  page and none of the registry's headers, as nginx does.

The registry speaks issue 12 itself (epochs, content hashes, 410 for another history's
cursor): the proxy adds nothing to what it answers.
"""

from __future__ import annotations

import argparse

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

#: Hop-by-hop and framing headers: the proxy's own connection sets them.
NOT_FORWARDED = frozenset(("connection", "keep-alive", "transfer-encoding", "content-length", "host",
                           "content-encoding"))
BAD_GATEWAY = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center>" \
    "<hr><center>nginx</center></body></html>\n"


def build(upstream: str) -> Starlette:
    where = {"upstream": upstream.rstrip("/")}
    http = httpx.AsyncClient(timeout=httpx.Timeout(10, read=90))

    async def forward(request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k not in NOT_FORWARDED}
        try:
            answer = await http.get(where["upstream"] + request.url.path, params=request.query_params,
                                    headers=headers)
        except httpx.TransportError:
            return HTMLResponse(BAD_GATEWAY, 502)
        out = {k: v for k, v in answer.headers.items() if k not in NOT_FORWARDED}
        return Response(answer.content, answer.status_code, headers=out)

    async def upstream_of(request: Request) -> Response:
        if request.method == "POST":
            where["upstream"] = (await request.body()).decode().strip().rstrip("/")
        return JSONResponse(where)

    return Starlette(routes=[
        Route("/_proxy/upstream", upstream_of, methods=["GET", "POST"]),
        Route("/{path:path}", forward, methods=["GET"]),
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvicorn.run(build(args.upstream), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
