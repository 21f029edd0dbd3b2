"""The gateway's ASGI app: route, authorize, account, proxy. Plain ASGI on purpose.

Each request costs a header scan, a SHA-256 of the key, two dict lookups and the
proxy hop; no middleware stack, no per-request database query (see resolver.py).
"""

from __future__ import annotations

import hmac
import json
import logging
import time

import aiohttp

from inference_endpoints.adapters.gateway import responses
from inference_endpoints.adapters.gateway.asgi import Receive, Scope, Send
from inference_endpoints.adapters.gateway.auth import Verdict, authorize, bearer_token
from inference_endpoints.adapters.gateway.config import GatewayConfig
from inference_endpoints.adapters.gateway.metrics import UNMATCHED, GatewayMetrics
from inference_endpoints.adapters.gateway.proxy import Proxy, new_session
from inference_endpoints.adapters.gateway.resolver import Resolver, Route, RouteTable
from inference_endpoints.adapters.gateway.routing import Target, host_of, route
from inference_endpoints.persistence.registry import Registry

log = logging.getLogger(__name__)

WWW_AUTHENTICATE = (b"www-authenticate", b"Bearer")
PROMETHEUS_TEXT = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
ADMIN_PATHS = (b"/metrics", b"/_gateway/stats")


class GatewayApp:
    def __init__(self, config: GatewayConfig):
        self.config = config
        self.metrics = GatewayMetrics()
        self.resolver = Resolver(Registry(config.db_url), config.refresh_interval_s,
                                 on_load=self.seed_metrics)
        self._session: aiohttp.ClientSession | None = None
        self._proxy: Proxy | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)
        elif kind == "websocket":  # not proxied (yet): refuse the handshake
            await receive()
            await send({"type": "websocket.close", "code": 1008})

    def seed_metrics(self, table: RouteTable) -> None:
        self.metrics.seed((r.org, r.name) for r in table.routes.values() if r.routable)

    # ---- lifecycle -----------------------------------------------------------------------

    async def startup(self) -> None:
        self._session = new_session(self.config)
        self._proxy = Proxy(self._session, self.config.body_timeout_s, self.config.max_body_bytes,
                            prefix_affinity=self.config.prefix_affinity)
        await self.resolver.start()
        log.info("gateway ready: %d endpoint(s), base domain %s",
                 len(self.resolver.table.routes), self.config.base_domain)

    async def shutdown(self) -> None:
        await self.resolver.stop()
        if self._session is not None:
            await self._session.close()

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---- requests ------------------------------------------------------------------------

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        target = route(host_of(scope["headers"]), raw_path, scope["query_string"],
                       self.config.base_domain)
        if target is None:
            await self.admin(scope, send, raw_path)
            return
        if target.path == b"/health" and scope["method"] in ("GET", "HEAD"):
            await self.endpoint_health(target, send)
            return
        decision = authorize(self.resolver.table, target, bearer_token(scope["headers"]))
        found = decision.route
        labels = (found.org, found.name) if found is not None else UNMATCHED
        verdict = decision.verdict
        if verdict is Verdict.ALLOW:
            assert found is not None and self._proxy is not None
            counters = self.metrics.counters(*labels)
            counters.in_flight += 1
            try:
                outcome = await self._proxy.forward(scope, receive, send, found,
                                                    target.upstream_path)
            finally:
                counters.in_flight -= 1
            if outcome.disconnected:
                counters.disconnects += 1
            self.metrics.observe(*labels, outcome.status, time.perf_counter() - started,
                                 outcome.error)
            return
        status = await self.refuse(verdict, found, send)
        self.metrics.observe(*labels, status, time.perf_counter() - started)

    async def refuse(self, verdict: Verdict, found: Route | None, send: Send) -> int:
        """Answer a request the gateway will not forward; returns the status sent."""
        if verdict is Verdict.MISSING_KEY:
            await responses.send_bytes(send, 401, responses.MISSING_KEY, [WWW_AUTHENTICATE])
            return 401
        if verdict is Verdict.INVALID_KEY:
            await responses.send_bytes(send, 401, responses.INVALID_KEY, [WWW_AUTHENTICATE])
            return 401
        if verdict is Verdict.NOT_READY and found is not None:
            await responses.send_bytes(send, 503, responses.not_ready_body(found.name, found.status),
                                       _retry_after(found))
            return 503
        await responses.send_bytes(send, 404, responses.NOT_FOUND)
        return 404

    async def endpoint_health(self, target: Target, send: Send) -> None:
        """No key needed; says only the endpoint's status."""
        found = self.resolver.table.routes.get((target.org, target.endpoint))
        if found is None:
            await responses.send_bytes(send, 404, responses.NOT_FOUND)
        elif found.routable:
            await responses.send_bytes(send, 200, b'{"status": "healthy"}')
        else:
            body = json.dumps({"status": found.status}).encode()
            await responses.send_bytes(send, 503, body, _retry_after(found))

    # ---- the gateway's own routes ------------------------------------------------------------

    async def admin(self, scope: Scope, send: Send, path: bytes) -> None:
        if path in ADMIN_PATHS and not self.is_admin(scope):
            await responses.send_bytes(send, 401, responses.ADMIN_REQUIRED, [WWW_AUTHENTICATE])
        elif path == b"/metrics":
            await responses.send_bytes(send, 200, self.metrics.exposition(),
                                       content_type=PROMETHEUS_TEXT)
        elif path == b"/_gateway/stats":
            await responses.send_bytes(send, 200, json.dumps(self.metrics.stats()).encode())
        elif path in (b"/health", b"/_gateway/health"):
            await self.gateway_health(send)
        else:
            await responses.send_bytes(send, 404, responses.GATEWAY_NOT_FOUND)

    def is_admin(self, scope: Scope) -> bool:
        """The admin token, compared in constant time; no token configured: nobody."""
        expected = self.config.admin_token
        token = bearer_token(scope["headers"])
        return bool(expected) and token is not None and hmac.compare_digest(
            token.encode("latin-1"), str(expected).encode("latin-1"))

    async def gateway_health(self, send: Send) -> None:
        """503 when the route table could not be checked for a while (registry unreachable)."""
        age = time.monotonic() - self.resolver.last_check
        fresh = age < max(5.0, 10 * self.config.refresh_interval_s)
        body = json.dumps({"status": "ok" if fresh else "stale", "endpoints": len(
            self.resolver.table.routes), "route_table_checked_s_ago": round(age, 3),
            "refresh_errors": self.resolver.refresh_errors}).encode()
        await responses.send_bytes(send, 200 if fresh else 503, body)


def _retry_after(found: Route) -> list[tuple[bytes, bytes]]:
    seconds = found.retry_after_s
    return [] if seconds is None else [(b"retry-after", str(seconds).encode())]




def create_app(config: GatewayConfig) -> GatewayApp:
    return GatewayApp(config)
