"""Bearer-token access control for the data endpoints (`/api/...` and `/metrics`).

Probes (`/health`, `/ready`), the service description, the API contract and the
dashboard page stay open; the page asks for the token and sends it on every request.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any

from starlette.datastructures import Headers

from . import answers

REALM = "droq-registry"


def protected(path: str) -> bool:
    """Whether a path (or a route's template) is behind the token when one is set."""
    return path.startswith(("/api/", "/metrics/")) or path in ("/api", "/metrics")


class TokenAuth:
    """Pure ASGI middleware: 401 with `WWW-Authenticate` unless the token matches."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not protected(scope["path"]) or authorized(scope["headers"], self._token):
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("authorization")
        challenge = f'Bearer realm="{REALM}"'
        if given:
            challenge += ', error="invalid_token"'
            detail = "the bearer token is not valid"
        else:
            detail = "this endpoint needs an Authorization: Bearer <token> header"
        answer = answers.of(scope["app"].state.registry.snapshot).unauthorized(detail, challenge)
        await send({"type": "http.response.start", "status": answer.status, "headers": list(answer.headers)})
        await send({"type": "http.response.body", "body": answer.body})


def authorized(headers: Iterable[tuple[bytes, bytes]], token: bytes) -> bool:
    """Whether the first Authorization header of `headers` carries `token` as a Bearer."""
    for name, value in headers:
        if name == b"authorization":
            return bearer_matches(value, token)
    return False


def bearer_matches(value: bytes, token: bytes) -> bool:
    """Whether an Authorization header value (the first one) carries `token` as a Bearer."""
    scheme, _, credentials = value.partition(b" ")
    if scheme.lower() == b"bearer":
        return hmac.compare_digest(credentials.strip(), token)
    return False
