"""Bounds in front of the console and REST API: a body size limit, and 401 before any body is read.

The checkpoint upload route has a limit of its own (`uploads`); every other body has `max_body`.

FastAPI reads and parses a request's body before its dependencies run, so without this an
unauthenticated caller's 10 MB body would be parsed (and its errors echoed) before the 401.
Plain ASGI, outermost: it answers from the headers alone.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
KeyCheck = Callable[[str], bool]

API_PREFIX = "/api/v1/"
DEFAULT_MAX_BODY = 1024 * 1024


def _problem(code: str, field: str, message: str, hint: str) -> bytes:
    return json.dumps({"problems": [{"code": code, "field": field, "message": message,
                                     "hint": hint}]}).encode()


class ApiGuard:
    """`key_is_valid` is the registry's lookup (run in a worker thread: it is blocking I/O)."""

    def __init__(self, app: ASGIApp, key_is_valid: KeyCheck, max_body: int = DEFAULT_MAX_BODY,
                 uploads: dict[str, int] | None = None):
        self.app = app
        self.key_is_valid = key_is_valid
        self.max_body = max_body
        self.uploads = uploads or {}  # POST path -> its own body limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        if scope.get("path", "").startswith(API_PREFIX) and not await self._authorized(headers):
            await _answer(send, 401, _problem(
                "unauthorized", "authorization", "Missing, unknown or revoked API key.",
                "Send `Authorization: Bearer <your organization's API key>`."),
                [(b"www-authenticate", b"Bearer")])
            return
        limit = self.max_body
        if scope.get("method") == "POST":
            limit = self.uploads.get(scope.get("path", ""), limit)
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > limit:
            await _answer(send, 413, self._too_large(limit))
            return
        await self.app(scope, self._counting(receive, limit), send)

    async def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return await anyio.to_thread.run_sync(self.key_is_valid, token.strip())

    def _too_large(self, limit: int) -> bytes:
        hint = ("Upload a smaller archive (the console's IE_CONSOLE_MAX_UPLOAD_BYTES), or place the "
                "checkpoint in an import root and register it by path." if limit != self.max_body else
                "Send a smaller body; checkpoints are registered by path or uploaded to "
                "/api/v1/checkpoints/upload.")
        return _problem("body_too_large", "body", f"The request body is over {limit:,} bytes.", hint)

    def _counting(self, receive: Receive, limit: int) -> Receive:
        """A body sent without a length (chunked) is cut off once it passes the limit."""
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, f"The request body is over {limit:,} bytes.")
            return message

        return counted


async def _answer(send: Send, status: int, body: bytes,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
