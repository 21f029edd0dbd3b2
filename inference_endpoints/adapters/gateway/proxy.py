"""Forwarding one request to a backend and streaming the answer back, chunk by chunk.

Why it looks like this:
- One shared aiohttp session (one connection pool) for all backends. Not httpx:
  its async pool collapses under concurrency (encode/httpx#3215; measured here:
  64 concurrent callers got 173 req/s through httpx vs 4,333 through aiohttp), and
  the gateway must hold a thousand streams.
- Bodies are never buffered: the request body is streamed up when it arrives in
  pieces, and each response chunk is written to the caller as soon as it is read.
- A caller that hangs up is noticed even while the backend is silent (a watcher
  waits on `http.disconnect`); the upstream response is then closed, which closes
  its connection, and vLLM aborts the generation.
- Bodies are bounded while they stream: a declared `Content-Length` over the limit
  is refused before anything is read (413), a streamed one as soon as it passes the
  limit (413), and a caller silent for `body_timeout_s` between chunks gets 408.
- `GET /v1/models` is the one answer read whole: it is rewritten to hide host paths
  (models_list.py).
- An endpoint with several ready replicas: each request goes to the least busy one
  (balancer.py); one whose body arrived whole is retried once on another replica if its
  first choice fails before answering anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from yarl import URL

from inference_endpoints.adapters.gateway import models_list
from inference_endpoints.adapters.gateway.asgi import Message, Receive, Scope, Send
from inference_endpoints.adapters.gateway.balancer import Balancer, prompt_prefix
from inference_endpoints.adapters.gateway.config import GatewayConfig
from inference_endpoints.adapters.gateway.resolver import Route
from inference_endpoints.adapters.gateway.responses import (
    CLOSE,
    bad_gateway_body,
    body_timeout_body,
    send_bytes,
    too_large_body,
)

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
                        b"proxy-connection", b"te", b"trailer", b"trailers", b"transfer-encoding",
                        b"upgrade"})
# Never forwarded upstream: the caller's key (the backend gets its own), the caller's Host,
# Expect (uvicorn already answered 100-continue) and X-Forwarded-For (rebuilt below).
REQUEST_DROP = HOP_BY_HOP | {b"authorization", b"host", b"expect", b"x-forwarded-for"}
# Headers aiohttp would otherwise invent; the caller's own are forwarded unchanged.
NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
WATCH_AFTER_S = 0.05
CLIENT_CLOSED = 499  # nginx's code for "caller hung up first"; recorded, never sent


class ClientDisconnected(Exception):
    """The caller went away while its request body was still being read."""


class BodyRefused(Exception):
    """The caller's body passed the size limit, or stalled; `_Call.refused` says which."""


class _TryAnother(Exception):
    """The backend failed before answering anything, and the whole body is at hand: retry once."""


@dataclass(slots=True)
class Outcome:
    status: int
    error: bool = False  # backend unreachable, or it broke the response off
    disconnected: bool = False


def upstream_headers(scope: Scope, route: Route) -> list[tuple[str, str]]:
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    drop = REQUEST_DROP
    forwarded: list[str] = []
    for name, value in raw:
        if name == b"connection":  # headers the caller marked hop-by-hop
            drop = drop | {t.strip().lower() for t in value.split(b",")}
        elif name == b"x-forwarded-for":
            forwarded.append(value.decode("latin-1"))
    headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw if n not in drop]
    headers.append(("Authorization", route.backend_auth.decode("latin-1")))
    client = scope.get("client")
    if client:
        forwarded.append(str(client[0]))
    if forwarded:
        headers.append(("X-Forwarded-For", ", ".join(forwarded)))
    return headers


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # uvicorn's parser has already refused a malformed one
    return None


def downstream_headers(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in raw:
        lowered = name.lower()
        if lowered not in HOP_BY_HOP:
            out.append((lowered, value))
    return out


class _Call:
    """One proxied request's link between its handler task and its hang-up watcher.

    The watcher is a small task that waits on `http.disconnect` once the request
    body is read; if the caller leaves before the response is finished it cancels
    the handler, whose cleanup closes the upstream response. It starts only after
    WATCH_AFTER_S (a timer is far cheaper than a task, and most answers are done by
    then); a caller that left earlier is noticed the moment it starts.
    """

    __slots__ = ("body_lost", "body_timeout_s", "disconnected", "finished", "max_body", "receive",
                 "refused", "task", "timer", "watcher")

    def __init__(self, receive: Receive, body_timeout_s: float, max_body: int):
        self.receive = receive
        self.body_timeout_s = body_timeout_s
        self.max_body = max_body
        self.refused = 0  # 408 or 413 once the body was refused
        self.task = asyncio.current_task()
        self.timer: asyncio.TimerHandle | None = None
        self.watcher: asyncio.Future[None] | None = None
        self.finished = False  # set before the last message: a later disconnect is normal
        self.disconnected = False  # the watcher cancelled the handler
        self.body_lost = False  # the caller left while its body was being streamed up

    def watch(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start)

    def _start(self) -> None:
        if not self.finished:
            self.watcher = asyncio.ensure_future(self._watch())

    def unwatch(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        if not self.finished and self.task is not None:
            self.disconnected = True
            self.task.cancel()

    async def next_message(self) -> Message:
        """The caller's next body message, within the body timeout."""
        try:
            async with asyncio.timeout(self.body_timeout_s):
                return await self.receive()
        except TimeoutError:
            self.refused = 408
            raise BodyRefused from None

    async def stream_body(self, first: bytes) -> AsyncIterator[bytes]:
        size = len(first)
        if first:
            yield first
        while True:
            message = await self.next_message()
            if message["type"] == "http.disconnect":
                self.body_lost = True
                raise ClientDisconnected  # aiohttp wraps it in a ClientConnectionError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                self.refused = 413
                raise BodyRefused
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                self.watch()
                return


def new_session(config: GatewayConfig) -> aiohttp.ClientSession:
    """Call inside the running loop (the gateway's startup)."""
    connector = aiohttp.TCPConnector(
        limit=config.max_connections, limit_per_host=0,
        keepalive_timeout=4.0,  # below uvicorn's (and vLLM's) 5 s idle close: no stale reuse
    )
    timeout = aiohttp.ClientTimeout(total=None, connect=config.pool_timeout_s,
                                    sock_connect=config.connect_timeout_s, sock_read=None)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=NO_AUTO_HEADERS,
    )


class Proxy:
    def __init__(self, session: aiohttp.ClientSession, body_timeout_s: float = 30.0,
                 max_body_bytes: int = 16 * 1024 * 1024, balancer: Balancer | None = None,
                 prefix_affinity: bool = False):
        self.session = session
        self.body_timeout_s = body_timeout_s
        self.max_body_bytes = max_body_bytes
        self.balancer = balancer or Balancer()
        self.prefix_affinity = prefix_affinity

    async def forward(self, scope: Scope, receive: Receive, send: Send, route: Route,
                      path: bytes) -> Outcome:
        declared = declared_length(scope["headers"])
        if declared is not None and declared > self.max_body_bytes:
            return await self.refuse(send, 413)  # before reading (and before 100-continue)
        call = _Call(receive, self.body_timeout_s, self.max_body_bytes)
        try:
            first = await call.next_message()
        except BodyRefused:
            return await self.refuse(send, call.refused)
        if first["type"] == "http.disconnect":
            return Outcome(CLIENT_CLOSED, disconnected=True)
        body = first.get("body", b"")
        if len(body) > self.max_body_bytes:
            return await self.refuse(send, 413)
        content: bytes | AsyncIterator[bytes] | None
        if first.get("more_body", False):
            content = call.stream_body(body)
        else:
            content = body or None
            call.watch()
        method: str = scope["method"]
        headers = upstream_headers(scope, route)
        models = models_list.is_models_request(method, path)
        if models:  # identity encoding, so the list can be rewritten
            headers = [(n, v) for n, v in headers if n.lower() != "accept-encoding"]
        addresses = route.addresses
        affinity = (prompt_prefix(content) if self.prefix_affinity and len(addresses) > 1
                    and isinstance(content, bytes) else None)
        backend = self.balancer.pick(addresses, affinity=affinity) or ""
        # A body read whole can be sent again: a replica that fails before answering
        # costs the caller nothing when another one is ready.
        retry_ok = len(addresses) > 1 and not isinstance(content, AsyncIterator)
        try:
            while True:
                url = URL(f"{backend}{path.decode('latin-1')}", encoded=True)
                current = backend
                self.balancer.started(current)
                try:
                    if models:
                        return await self._models(url, headers, send, route, call)
                    return await self._exchange(method, url, headers, content, send, route, call,
                                                retry_ok)
                except _TryAnother:
                    self.balancer.failed(current)
                    retry_ok = False
                    backend = self.balancer.pick(addresses, avoid=current, affinity=affinity) or current
                finally:
                    self.balancer.finished(current)
        except asyncio.CancelledError:
            if not call.disconnected or call.task is None:
                raise
            call.task.uncancel()  # our own cancellation: the caller hung up
            return Outcome(CLIENT_CLOSED, disconnected=True)
        finally:
            call.unwatch()

    async def refuse(self, send: Send, status: int) -> Outcome:
        """408/413 for the caller's body; the connection is closed (the rest goes unread)."""
        body = (body_timeout_body(self.body_timeout_s) if status == 408
                else too_large_body(self.max_body_bytes))
        await send_bytes(send, status, body, [CLOSE])
        return Outcome(status)

    async def _exchange(self, method: str, url: URL, headers: list[tuple[str, str]],
                        content: bytes | AsyncIterator[bytes] | None, send: Send, route: Route,
                        call: _Call, retry_ok: bool = False) -> Outcome:
        try:
            response = await self.session.request(method, url, headers=headers, data=content,
                                                  allow_redirects=False)
        except (aiohttp.ClientError, TimeoutError, BodyRefused) as exc:
            if call.body_lost:
                return Outcome(CLIENT_CLOSED, disconnected=True)
            if retry_ok and not call.refused:
                raise _TryAnother from exc
            call.finished = True
            if call.refused:
                return await self.refuse(send, call.refused)
            await send_bytes(send, 502, bad_gateway_body(route.name, type(exc).__name__))
            return Outcome(502, error=True)
        complete = False
        try:
            await send({"type": "http.response.start", "status": response.status,
                        "headers": downstream_headers(response.raw_headers)})
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            call.finished = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            complete = True
        except (aiohttp.ClientError, TimeoutError, BodyRefused):
            if call.body_lost:
                return Outcome(CLIENT_CLOSED, disconnected=True)
            # The backend broke off mid-response: leave the response unfinished so the
            # caller sees a truncated stream, not a clean end.
            return Outcome(response.status, error=True)
        finally:
            if complete:
                response.release()  # back to the pool
            else:
                response.close()  # drop the connection: the backend sees the hang-up
        return Outcome(response.status)

    async def _models(self, url: URL, headers: list[tuple[str, str]], send: Send, route: Route,
                      call: _Call) -> Outcome:
        """`GET /v1/models`: read the (small) list whole and send it without host paths."""
        try:
            async with self.session.get(url, headers=headers, allow_redirects=False) as response:
                body = await response.content.read(models_list.MAX_MODELS_BODY + 1)
                status = response.status
                raw_headers = response.raw_headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            call.finished = True
            await send_bytes(send, 502, bad_gateway_body(route.name, type(exc).__name__))
            return Outcome(502, error=True)
        call.finished = True
        if status == 200:
            scrubbed = None if len(body) > models_list.MAX_MODELS_BODY else models_list.scrub(body)
            if scrubbed is None:
                await send_bytes(send, 502, bad_gateway_body(route.name, "unreadable model list"))
                return Outcome(502, error=True)
            body = scrubbed
        kept = [(n, v) for n, v in downstream_headers(raw_headers)
                if n not in (b"content-length", b"content-type")]
        await send_bytes(send, status, body, kept)
        return Outcome(status)
