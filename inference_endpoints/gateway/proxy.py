"""Forwarding one request to a backend and streaming the answer back, chunk by chunk.

Why it looks like this:
- One shared httpx client (connection pool) for all backends; requests are built
  directly (no client default headers, cookies or redirects are added).
- Bodies are never buffered: the request body is streamed up when it arrives in
  pieces, and each response chunk is written to the caller as soon as it is read.
- A caller that hangs up is noticed even while the backend is silent (a watcher
  waits on `http.disconnect`); the upstream response is then closed, which closes
  its connection, and vLLM aborts the generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from inference_endpoints.gateway.asgi import Receive, Scope, Send
from inference_endpoints.gateway.config import GatewayConfig
from inference_endpoints.gateway.resolver import Route
from inference_endpoints.gateway.responses import bad_gateway_body, error_body, send_bytes

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
                        b"proxy-connection", b"te", b"trailer", b"trailers", b"transfer-encoding",
                        b"upgrade"})
# Never forwarded upstream: the caller's key (the backend gets its own) and the caller's Host.
REQUEST_DROP = HOP_BY_HOP | {b"authorization", b"host"}
CLIENT_CLOSED = 499  # nginx's code for "caller hung up first"; recorded, never sent


class ClientDisconnected(Exception):
    """The caller went away while its request body was still being read."""


@dataclass(slots=True)
class Outcome:
    status: int
    error: bool = False  # backend unreachable, or it broke the response off
    disconnected: bool = False


def upstream_headers(scope: Scope, route: Route) -> list[tuple[bytes, bytes]]:
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    drop = REQUEST_DROP
    for name, value in raw:
        if name == b"connection":  # headers the caller marked hop-by-hop
            drop = drop | {t.strip().lower() for t in value.split(b",")}
    headers = [(n, v) for n, v in raw if n not in drop]
    headers.append((b"authorization", route.backend_auth))
    client = scope.get("client")
    if client:
        headers.append((b"x-forwarded-for", client[0].encode("latin-1")))
    return headers


def downstream_headers(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in response.headers.raw:
        lowered = name.lower()
        if lowered not in HOP_BY_HOP:
            out.append((lowered, value))
    return out


class _Call:
    """One proxied request's link between its handler task and its hang-up watcher.

    The watcher is a single small task that waits on `http.disconnect` once the
    request body is read; if the caller leaves before the response is finished it
    cancels the handler, whose cleanup closes the upstream response.
    """

    __slots__ = ("disconnected", "finished", "receive", "task", "watcher")

    def __init__(self, receive: Receive):
        self.receive = receive
        self.task = asyncio.current_task()
        self.watcher: asyncio.Future[None] | None = None
        self.finished = False  # set before the last message: a later disconnect is normal
        self.disconnected = False

    def watch(self) -> None:
        self.watcher = asyncio.ensure_future(self._watch())

    def unwatch(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        if not self.finished and self.task is not None:
            self.disconnected = True
            self.task.cancel()

    async def stream_body(self, first: bytes) -> AsyncIterator[bytes]:
        if first:
            yield first
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                self.watch()
                return


def new_client(config: GatewayConfig) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=config.max_connections,
                          max_keepalive_connections=config.max_keepalive_connections,
                          keepalive_expiry=4.0)  # below uvicorn's (and vLLM's) 5 s idle close
    return httpx.AsyncClient(
        limits=limits, trust_env=False, follow_redirects=False,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


class Proxy:
    def __init__(self, client: httpx.AsyncClient, config: GatewayConfig):
        self.client = client
        self.timeout = {"connect": config.connect_timeout_s, "read": None, "write": None,
                        "pool": config.pool_timeout_s}

    async def forward(self, scope: Scope, receive: Receive, send: Send, route: Route,
                      path: bytes) -> Outcome:
        first = await receive()
        if first["type"] == "http.disconnect":
            return Outcome(CLIENT_CLOSED, disconnected=True)
        call = _Call(receive)
        content: bytes | AsyncIterator[bytes]
        if first.get("more_body", False):
            content = call.stream_body(first.get("body", b""))
        else:
            content = first.get("body", b"")
            call.watch()
        request = httpx.Request(
            scope["method"], f"{route.backend_url}{path.decode('latin-1')}",
            headers=upstream_headers(scope, route), content=content,
            extensions={"timeout": self.timeout},
        )
        try:
            return await self._exchange(request, send, route, call)
        except asyncio.CancelledError:
            if not call.disconnected or call.task is None:
                raise
            call.task.uncancel()  # our own cancellation: the caller hung up
            return Outcome(CLIENT_CLOSED, disconnected=True)
        finally:
            call.unwatch()

    async def _exchange(self, request: httpx.Request, send: Send, route: Route,
                        call: _Call) -> Outcome:
        try:
            response = await self.client.send(request, stream=True)
        except ClientDisconnected:
            return Outcome(CLIENT_CLOSED, disconnected=True)
        except httpx.PoolTimeout:
            call.finished = True
            await send_bytes(send, 503, error_body(
                "The gateway is at its upstream connection limit; retry shortly.",
                "service_unavailable", "gateway_busy"), [(b"retry-after", b"1")])
            return Outcome(503, error=True)
        except httpx.TransportError as exc:
            call.finished = True
            await send_bytes(send, 502, bad_gateway_body(route.name, type(exc).__name__))
            return Outcome(502, error=True)
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": downstream_headers(response)})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            call.finished = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except httpx.TransportError:
            # The backend broke off mid-response: leave the response unfinished so the
            # caller sees a truncated stream, not a clean end.
            return Outcome(response.status_code, error=True)
        finally:
            await response.aclose()
        return Outcome(response.status_code)
