"""Reference server for the read benchmark: a bare Starlette app with a constant body.

    .venv/bin/python bench/reference_app.py --body-file BODY.json [--host H] [--port P]

Every GET (any path) answers 200 with the bytes of BODY.json (or of $REF_BODY_FILE), media
type application/json, built once at start-up. It is served by uvicorn with the options
`droq_registry serve` uses (daemon/droq_registry/cli.py): the default loop and HTTP
implementations (uvloop and httptools with uvicorn[standard]), one worker, the same
logging configuration at LOG_LEVEL (default warning, so no access lines),
timeout_graceful_shutdown=2 and server_header=False. The difference between the two
servers is then the registry's own work per request.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

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
    args = parser.parse_args(argv)
    if args.body_file is None:
        parser.error("give --body-file or set REF_BODY_FILE")
    body = args.body_file.read_bytes()
    settings = Settings(host=args.host, port=args.port, log_level=args.log_level)
    config = uvicorn.Config(
        create_app(body),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings),
        timeout_graceful_shutdown=2,
        server_header=False,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
