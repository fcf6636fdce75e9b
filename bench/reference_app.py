"""Reference servers for the read benchmark: a constant body, bare Starlette or bare ASGI.

    .venv/bin/python bench/reference_app.py --body-file BODY.json [--host H] [--port P]
    .venv/bin/python bench/reference_app.py --bare --body-file BODY.json --headers-file H.json

Every GET (any path) answers 200 with the bytes of BODY.json (or of $REF_BODY_FILE), media
type application/json, built once at start-up. With --bare it is not Starlette but a bare
ASGI callable: two `send` calls per request, with the status and the headers of
--headers-file (a JSON list of [name, value] pairs, the registry's own answer's headers in
their order), so it sends the very bytes the registry sends; what remains is uvicorn's
own cost per request. It is served by uvicorn with the options
`droq_registry serve` uses (daemon/droq_registry/cli.py): the default loop and HTTP
implementations (uvloop and httptools with uvicorn[standard]), one worker, the same
logging configuration at LOG_LEVEL (default warning, so no access lines),
timeout_graceful_shutdown=2 and server_header=False. The difference between the two
servers is then the registry's own work per request.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from droq_registry.logs import uvicorn_log_config
from droq_registry.settings import Settings


def create_app(body: bytes) -> Starlette:
    """An app answering every GET with `body`."""

    async def constant(request: Request) -> Response:
        return Response(body, 200, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", constant, methods=["GET"])])


def create_bare_app(body: bytes, status: int, headers: list[tuple[bytes, bytes]]) -> Any:
    """A bare ASGI callable answering every request with `status`, `headers` and `body`."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        # fresh messages per request, as the registry's fast path sends them
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        await send({"type": "http.response.body", "body": body})

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--body-file",
        type=Path,
        default=os.environ.get("REF_BODY_FILE"),
        help="file whose bytes are the body (default $REF_BODY_FILE)",
    )
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8099")))
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "warning"))
    parser.add_argument("--bare", action="store_true", help="a bare ASGI callable instead of Starlette")
    parser.add_argument("--headers-file", type=Path, help="with --bare: the headers, a JSON list of pairs")
    parser.add_argument("--status", type=int, default=200, help="with --bare: the status (default 200)")
    args = parser.parse_args(argv)
    if args.body_file is None:
        parser.error("give --body-file or set REF_BODY_FILE")
    body = args.body_file.read_bytes()
    settings = Settings(host=args.host, port=args.port, log_level=args.log_level)
    if args.bare:
        pairs = json.loads(args.headers_file.read_text()) if args.headers_file else []
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]
        app: Any = create_bare_app(body, args.status, headers)
    else:
        app = create_app(body)
    # The options `droq_registry serve` gives uvicorn (server.run), less its own protocol
    # and connection gate: those are the registry's cost, measured against this.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings),
        ws="none",
        timeout_graceful_shutdown=2,
        server_header=False,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
