"""ASGI middleware loaded into vLLM (`--middleware ie_engine_guard.EngineGuard`): every route needs the key.

vLLM's own `--api-key` guards only `/v1`-style prefixes; `/invocations`, `/tokenize`,
`/detokenize`, `/scale_elastic_ep`, `/docs` and the rest answer anyone who reaches the
engine's port. This guard refuses every request without `Authorization: Bearer
$VLLM_API_KEY` except `GET /health` and `GET /metrics` (the platform's probe and scrape,
which generate nothing). It fails closed: with no key set, only those two answer.

Standalone on purpose (standard library only, no project imports): the runtimes put this
file's directory on the engine's PYTHONPATH, inside the official vLLM image too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN = frozenset({("GET", "/health"), ("HEAD", "/health"), ("GET", "/metrics")})
KEY_ENV = "VLLM_API_KEY"
REFUSAL = json.dumps({"error": {"message": "This engine answers only its gateway.",
                                "type": "unauthorized", "code": 401}}).encode()


class EngineGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        key = os.environ.get(KEY_ENV, "")
        self._digest = hashlib.sha256(key.encode()).digest() if key else None

    def allowed(self, scope: Scope) -> bool:
        method = scope.get("method", "GET") if scope["type"] == "http" else "GET"
        if scope["type"] == "http" and (method, scope.get("path", "")) in OPEN:
            return True
        if self._digest is None:
            return False
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                given = hashlib.sha256(token.strip().encode()).digest()
                return scheme.lower() == "bearer" and hmac.compare_digest(given, self._digest)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allowed(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:  # refused before the body is read
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"www-authenticate", b"Bearer"),
                                    (b"content-length", str(len(REFUSAL)).encode())]})
            await send({"type": "http.response.body", "body": REFUSAL})
