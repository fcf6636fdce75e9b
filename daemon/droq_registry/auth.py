"""Bearer-token access control for the data endpoints (`/api/...` and `/metrics`).

Probes (`/health`, `/ready`), the service description, the API contract and the
dashboard page stay open; the page asks for the token and sends it on every request.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from starlette.datastructures import Headers

from . import answers

REALM = "droq-registry"


def protected(path: str) -> bool:
    return path.startswith(("/api/", "/metrics/")) or path in ("/api", "/metrics")


class TokenAuth:
    """Pure ASGI middleware: 401 with `WWW-Authenticate` unless the token matches."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not protected(scope["path"]) or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("authorization")
        challenge = f'Bearer realm="{REALM}"'
        if given:
            challenge += ', error="invalid_token"'
            detail = "the bearer token is not valid"
        else:
            detail = "this endpoint needs an Authorization: Bearer <token> header"
        body = orjson.dumps({"detail": detail})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    *answers.snapshot_headers(scope["app"].state.registry.snapshot),  # as every answer
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", challenge.encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _authorized(self, scope: dict[str, Any]) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return bearer_matches(value, self._token)
        return False


def bearer_matches(value: bytes, token: bytes) -> bool:
    """Whether an Authorization header value (the first one) carries `token` as a Bearer."""
    scheme, _, credentials = value.partition(b" ")
    if scheme.lower() == b"bearer":
        return hmac.compare_digest(credentials.strip(), token)
    return False
