"""The real gateway (uvicorn, in a thread) in front of a fake OpenAI upstream, on a real registry.

No vLLM here: `bench.fake_upstream` behaves like it where the gateway cares (bearer
key on /v1/*, SSE, abort on hang-up). No assertion is on time: waits have generous
deadlines that only guard against hanging; `bench.propagation` measures how fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import event

from bench.fake_upstream import FakeUpstream
from inference_endpoints.adapters.gateway import GatewayConfig
from inference_endpoints.adapters.gateway.app import GatewayApp
from inference_endpoints.adapters.gateway.responses import NOT_FOUND
from inference_endpoints.adapters.gateway.server import ThreadedServer, run_in_thread, serve_in_thread
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.persistence.db import get_engine
from inference_endpoints.persistence.registry import Registry
from tests.lifecycle_support import put_status
from tests.test_gateway_units import add_endpoint

BASE = "endpoints.localhost"
BACKEND_KEY = "backend-secret"
ADMIN_TOKEN = "gateway-admin-test-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class World:
    registry: Registry
    gateway: ThreadedServer
    upstream: ThreadedServer
    fake: FakeUpstream
    org_id: str
    key: str  # the default org's key
    acme_key: str  # another organization's key
    revoked_key: str
    dead_url: str  # a backend address nothing listens on

    @property
    def app(self) -> GatewayApp:
        app = self.gateway.app
        assert isinstance(app, GatewayApp)
        return app

    @property
    def port(self) -> int:
        return int(self.gateway.url.rsplit(":", 1)[1])

    def host(self, endpoint: str, org: str = "default") -> str:
        return f"{endpoint}.{org}.{BASE}:{self.port}"

    def path(self, endpoint: str, org: str = "default") -> str:
        return f"{self.gateway.url}/e/{org}/{endpoint}"

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def add(self, name: str, status: str = "healthy", backend_url: str | None = None,
            org_id: str | None = None) -> str:
        return add_endpoint(self.registry, org_id or self.org_id, name, status,
                            backend_url or self.upstream.url, BACKEND_KEY)

    def settle(self) -> None:
        """Wait until the gateway's table reflects the registry as it is now."""
        asyncio.run(self.app.resolver.refresh_async())


def eventually(check: Callable[[], bool], timeout_s: float = 30.0, step_s: float = 0.05) -> None:
    """Wait until `check()` holds; the deadline guards against a hang, it is no speed bound."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout_s} s")
        time.sleep(step_s)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("gateway")
    registry = Registry(f"sqlite:///{tmp / 'registry.db'}")
    registry.init(default_org="default")
    org = registry.get_org_by_name("default")
    assert org is not None
    key = registry.create_key(org.id, "test").secret
    revoked = registry.create_key(org.id, "old")
    registry.revoke_key(org.id, revoked.key.id)
    acme, acme_key = registry.create_org("acme")
    fake = FakeUpstream(model="fake-model", api_key=BACKEND_KEY)
    upstream = serve_in_thread(fake)
    dead = serve_in_thread(FakeUpstream())
    dead_url = dead.url
    dead.stop()  # its port is now closed: connection refused
    for name, status, url, org_id in (
        ("demo", EndpointStatus.HEALTHY, upstream.url, org.id),
        ("cold", EndpointStatus.LOADING, upstream.url, org.id),
        ("gone", EndpointStatus.STOPPED, upstream.url, org.id),
        ("dead", EndpointStatus.HEALTHY, dead_url, org.id),
        ("private", EndpointStatus.HEALTHY, upstream.url, acme.id),
    ):
        add_endpoint(registry, org_id, name, status, url, BACKEND_KEY)
    gateway = run_in_thread(GatewayConfig(db_url=registry.url, base_domain=BASE,
                                          admin_token=ADMIN_TOKEN))
    w = World(registry, gateway, upstream, fake, org.id, key, acme_key.secret, revoked.secret,
              dead_url)
    try:
        yield w
    finally:
        w.gateway.stop()
        upstream.stop()
        get_engine(registry.url).dispose()


@pytest.fixture
def client(world: World) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as c:
        yield c


# ---- routing and proxying ------------------------------------------------------------------

def test_host_and_path_forms_reach_the_backend(world: World, client: httpx.Client) -> None:
    by_path = client.get(f"{world.path('demo')}/v1/models", headers=world.auth())
    by_host = client.get(f"{world.gateway.url}/v1/models",
                         headers={**world.auth(), "Host": world.host("demo")})
    assert by_path.status_code == by_host.status_code == 200
    assert by_path.json()["data"][0]["id"] == by_host.json()["data"][0]["id"] == "fake-model"


def test_backend_key_is_injected_and_the_callers_stripped(world: World, client: httpx.Client) -> None:
    response = client.post(
        f"{world.path('demo')}/v1/headers?x=a%2Fb&y=1", headers={
            **world.auth(), "X-Custom": "kept", "Connection": "keep-alive, X-Hop", "X-Hop": "1",
            "TE": "trailers", "Keep-Alive": "timeout=5", "Proxy-Authorization": "Basic x",
            "X-Forwarded-For": "203.0.113.7", "Expect": "100-continue"},
        content=b"{}")
    seen = response.json()
    assert seen["authorization"] == f"Bearer {BACKEND_KEY}"  # never the caller's key
    assert world.key not in json.dumps(seen)
    assert seen["x-custom"] == "kept"
    for hop in ("x-hop", "te", "keep-alive", "proxy-authorization", "expect"):
        assert hop not in seen
    assert seen[":path"] == "/v1/headers" and seen[":query"] == "x=a%2Fb&y=1"
    assert seen["host"] == world.upstream.url.removeprefix("http://")
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    # The backend itself refuses callers without its key (what vLLM's --api-key does).
    assert client.get(f"{world.upstream.url}/v1/models").status_code == 401
    assert client.get(f"{world.upstream.url}/v1/models",
                      headers=world.auth()).status_code == 401  # an org key is not the backend key


def test_error_status_and_body_pass_through_unchanged(world: World, client: httpx.Client) -> None:
    direct = client.post(f"{world.upstream.url}/v1/error",
                         headers={"Authorization": f"Bearer {BACKEND_KEY}"}, json={})
    proxied = client.post(f"{world.path('demo')}/v1/error", headers=world.auth(), json={})
    assert proxied.status_code == direct.status_code == 400
    assert proxied.content == direct.content
    assert client.get(f"{world.path('demo')}/nope", headers=world.auth()).status_code == 404


@pytest.mark.parametrize("chunked", [False, True])
def test_large_bodies_both_ways(world: World, client: httpx.Client, chunked: bool) -> None:
    body = os.urandom(8 * 1024 * 1024 + 17)
    before = world.fake.state.bytes_received

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(body), 1 << 20):
            yield body[i:i + (1 << 20)]

    response = client.post(f"{world.path('demo')}/v1/echo", headers=world.auth(),
                           content=pieces() if chunked else body)
    assert response.status_code == 200
    assert response.content == body
    assert world.fake.state.bytes_received - before == len(body)


def test_sse_streams_without_buffering(world: World, client: httpx.Client) -> None:
    """Each event reaches the caller before the backend has produced the next one.

    In lockstep the upstream sends chunk i+1 only after the test has received chunk i,
    so a gateway that held anything back would deadlock (and time out) instead of passing.
    """
    state = world.fake.state
    url = f"{world.path('demo')}/v1/completions?lockstep=1&chunks=5"
    sent_before = state.chunks_sent
    seen_upstream: list[int] = []
    events: list[str] = []
    with client.stream("POST", url, headers=world.auth(), json={"stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line)
                seen_upstream.append(state.chunks_sent - sent_before)
                state.acks += 1
    assert len(events) == 6 and events[-1] == "data: [DONE]"  # 5 chunks + [DONE]
    # When the caller held chunk i, the backend had sent exactly i of them: no more.
    assert seen_upstream[:5] == [1, 2, 3, 4, 5]


def test_openai_client_through_the_gateway(world: World) -> None:
    api = openai.OpenAI(base_url=f"{world.path('demo')}/v1", api_key=world.key, max_retries=0)
    assert [m.id for m in api.models.list()] == ["fake-model"]
    completion = api.completions.create(model="fake-model", prompt="hi", max_tokens=3)
    assert completion.choices[0].text == " hello"
    stream = api.completions.create(model="fake-model", prompt="hi", max_tokens=4, stream=True)
    assert [c.choices[0].text for c in stream] == [" t0", " t1", " t2", " t3"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{world.path('demo')}/v1", api_key="wrong",
                      max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=f"{world.path('demo')}/v1", api_key=world.acme_key,
                      max_retries=0).models.list()


def test_many_concurrent_streams(world: World) -> None:
    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=120)
        async with httpx.AsyncClient(limits=limits, timeout=30) as c:
            async def one() -> int:
                url = f"{world.path('demo')}/v1/completions?itl_ms=50&chunks=5"
                async with c.stream("POST", url, headers=world.auth(),
                                    json={"stream": True}) as r:
                    body = b"".join([chunk async for chunk in r.aiter_raw()])
                return body.count(b"data: ") if r.status_code == 200 else -1
            return list(await asyncio.gather(*(one() for _ in range(100))))

    assert asyncio.run(run()) == [6] * 100


# ---- auth and health -------------------------------------------------------------------------

def test_auth_matrix(world: World, client: httpx.Client) -> None:
    models = "/v1/models"
    no_key = client.get(f"{world.path('demo')}{models}")
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer"
    assert no_key.json()["error"]["code"] == "missing_api_key"
    assert client.get(f"{world.path('nope')}{models}").status_code == 401  # no probing
    for bad in ("ie_deadbeef_unknown", world.revoked_key):
        response = client.get(f"{world.path('demo')}{models}", headers=world.auth(bad))
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    other_org = client.get(f"{world.path('demo')}{models}", headers=world.auth(world.acme_key))
    missing = client.get(f"{world.path('nope')}{models}", headers=world.auth())
    missing_host = client.get(f"{world.gateway.url}{models}",
                              headers={**world.auth(), "Host": world.host("nope")})
    wrong_shape = client.get(f"{world.gateway.url}{models}",
                             headers={**world.auth(), "Host": f"a.b.default.{BASE}"})
    theirs = client.get(f"{world.path('private', 'acme')}{models}", headers=world.auth())
    for response in (other_org, missing, missing_host, wrong_shape, theirs):
        assert response.status_code == 404
        assert response.content == NOT_FOUND  # identical: existence is not revealed
        assert sorted(response.headers.items()) == sorted(missing.headers.items())
    mine = client.get(f"{world.path('private', 'acme')}{models}", headers=world.auth(world.acme_key))
    assert mine.status_code == 200


def test_endpoint_health_needs_no_key(world: World, client: httpx.Client) -> None:
    healthy = client.get(f"{world.path('demo')}/health")
    assert healthy.status_code == 200 and healthy.json() == {"status": "healthy"}
    by_host = client.get(f"{world.gateway.url}/health", headers={"Host": world.host("demo")})
    assert by_host.status_code == 200
    cold = client.get(f"{world.path('cold')}/health")
    assert cold.status_code == 503 and cold.json() == {"status": "loading"}
    assert cold.headers["retry-after"] == "5"
    assert client.get(f"{world.path('gone')}/health").json() == {"status": "stopped"}
    unknown = client.get(f"{world.path('nope')}/health")
    assert unknown.status_code == 404 and unknown.content == NOT_FOUND


def test_not_ready_is_503_with_retry_after(world: World, client: httpx.Client) -> None:
    cold = client.post(f"{world.path('cold')}/v1/completions", headers=world.auth(), json={})
    assert cold.status_code == 503
    assert cold.headers["retry-after"] == "5"
    assert cold.json()["error"]["code"] == "endpoint_not_ready"
    assert cold.json()["error"]["status"] == "loading"
    gone = client.post(f"{world.path('gone')}/v1/completions", headers=world.auth(), json={})
    assert gone.status_code == 503 and "retry-after" not in gone.headers
    assert gone.json()["error"]["status"] == "stopped"


def test_dead_backend_is_502_in_openai_shape(world: World, client: httpx.Client) -> None:
    response = client.post(f"{world.path('dead')}/v1/completions", headers=world.auth(), json={})
    assert response.status_code == 502
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["code"] == "backend_unavailable" and "dead" in error["message"]
    assert world.dead_url not in response.text  # internal addresses stay internal


# ---- hang-ups ----------------------------------------------------------------------------------

def test_client_disconnect_mid_stream_aborts_upstream(world: World, client: httpx.Client) -> None:
    state = world.fake.state
    cancelled = state.cancelled
    counters = world.app.metrics.counters("default", "demo")
    disconnects = counters.disconnects
    url = f"{world.path('demo')}/v1/completions?itl_ms=100&chunks=200"
    with client.stream("POST", url, headers=world.auth(), json={"stream": True}) as response:
        first = next(response.iter_raw())
        assert first.startswith(b"data: ")
        assert counters.in_flight == 1
    # Leaving the block closes the connection with ~195 chunks still to come.
    eventually(lambda: state.cancelled == cancelled + 1)
    assert state.running == 0
    eventually(lambda: counters.in_flight == 0 and counters.disconnects == disconnects + 1)


def test_client_disconnect_before_headers_aborts_upstream(world: World) -> None:
    """A slow non-streaming answer: the caller gives up while the backend still works."""
    state = world.fake.state
    cancelled = state.cancelled
    with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=0.3) as impatient:
        impatient.post(f"{world.path('demo')}/v1/completions?ttft_ms=5000",
                       headers=world.auth(), json={})
    eventually(lambda: state.cancelled == cancelled + 1)
    assert state.running == 0


def test_client_disconnect_while_uploading_is_a_hang_up_not_a_502(world: World) -> None:
    import socket

    counters = world.app.metrics.counters("default", "demo")
    disconnects = counters.disconnects
    errors_before = world.app.metrics.stats()
    with socket.create_connection(("127.0.0.1", world.port)) as sock:
        sock.sendall(f"POST /e/default/demo/v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Authorization: Bearer {world.key}\r\nContent-Length: 10000000\r\n\r\n"
                     .encode() + b"x" * 100_000)
        time.sleep(0.3)  # the gateway is streaming the body up, waiting for more
    eventually(lambda: counters.disconnects == disconnects + 1 and counters.in_flight == 0)
    after = world.app.metrics.stats()

    def errors(stats: dict[str, list[dict[str, object]]]) -> object:
        return next(r["errors"] for r in stats["endpoints"] if r["endpoint"] == "demo")
    assert errors(after) == errors(errors_before)


# ---- the route table follows the registry ------------------------------------------------------

def _status(client: httpx.Client, world: World, name: str, key: str | None = None) -> int:
    return client.get(f"{world.path(name)}/v1/models", headers=world.auth(key)).status_code


def test_status_changes_reach_the_route_table_by_themselves(world: World, client: httpx.Client) -> None:
    ep = world.add("flip")
    eventually(lambda: _status(client, world, "flip") == 200)
    assert put_status(world.registry, ep, EndpointStatus.UNHEALTHY)
    eventually(lambda: _status(client, world, "flip") == 503)
    assert put_status(world.registry, ep, EndpointStatus.HEALTHY)
    eventually(lambda: _status(client, world, "flip") == 200)
    # A restart on another port: the stable URL follows the new backend address.
    second = FakeUpstream(model="restarted", api_key=BACKEND_KEY)
    restarted = serve_in_thread(second)
    try:
        live = world.registry.get_endpoint(ep)
        assert live is not None and live.live_run is not None
        assert world.registry.runs.report(live.live_run, backend_url=restarted.url)  # as a serve run does

        def on_new_backend() -> bool:
            r = client.get(f"{world.path('flip')}/v1/models", headers=world.auth())
            return r.status_code == 200 and r.json()["data"][0]["id"] == "restarted"
        eventually(on_new_backend)
    finally:
        restarted.stop()
    assert put_status(world.registry, ep, EndpointStatus.STOPPING)
    assert put_status(world.registry, ep, EndpointStatus.STOPPED)
    world.registry.remove_endpoint(ep)
    eventually(lambda: _status(client, world, "flip") == 404)


def test_new_and_revoked_keys_are_seen_without_a_restart(world: World, client: httpx.Client) -> None:
    new = world.registry.create_key(world.org_id, "fresh")
    eventually(lambda: _status(client, world, "demo", new.secret) == 200)
    world.registry.revoke_key(world.org_id, new.key.prefix)
    eventually(lambda: _status(client, world, "demo", new.secret) == 401)


def test_no_database_query_per_request(world: World, client: httpx.Client) -> None:
    world.settle()
    queries: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        queries.append(statement)

    engine = get_engine(world.registry.url)
    event.listen(engine, "before_cursor_execute", count)
    started = time.monotonic()
    try:
        for _ in range(300):
            assert _status(client, world, "demo") == 200
        elapsed = time.monotonic() - started
    finally:
        event.remove(engine, "before_cursor_execute", count)
    interval = world.app.config.refresh_interval_s
    # Only the background change check ran: one query per interval, none per request.
    assert len(queries) <= elapsed / interval + 2, (len(queries), elapsed)
    assert all("count" in q.lower() for q in queries)  # the signature query, no reloads


# ---- accounting --------------------------------------------------------------------------------

def _samples(client: httpx.Client, world: World) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get(f"{world.gateway.url}/metrics", headers=ADMIN).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_by_org_endpoint_and_status_class(world: World, client: httpx.Client) -> None:
    world.add("counted")
    world.add("counted-cold", status=EndpointStatus.LOADING)
    world.add("counted-dead", backend_url=world.dead_url)
    world.settle()
    for _ in range(3):
        assert _status(client, world, "counted") == 200
    assert client.get(f"{world.path('counted')}/v1/models").status_code == 401
    assert client.post(f"{world.path('counted')}/v1/error", headers=world.auth(),
                       json={}).status_code == 400
    assert _status(client, world, "counted-cold") == 503
    assert _status(client, world, "counted-dead") == 502
    samples = _samples(client, world)

    def value(name: str, endpoint: str, klass: str | None = None) -> float:
        labels = {"org": "default", "endpoint": endpoint}
        if klass:
            labels["status_class"] = klass
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("ie_gateway_requests_total", "counted", "2xx") == 3
    assert value("ie_gateway_requests_total", "counted", "4xx") == 2
    assert value("ie_gateway_request_errors_total", "counted", "4xx") == 0
    assert value("ie_gateway_requests_total", "counted-cold", "5xx") == 1
    assert value("ie_gateway_request_errors_total", "counted-cold", "5xx") == 1
    assert value("ie_gateway_request_errors_total", "counted-dead", "5xx") == 1
    assert value("ie_gateway_request_duration_seconds_count", "counted", "2xx") == 3
    assert value("ie_gateway_in_flight_requests", "counted") == 0
    stats = client.get(f"{world.gateway.url}/_gateway/stats", headers=ADMIN).json()["endpoints"]
    row = next(r for r in stats if r["endpoint"] == "counted")
    last = row.pop("last_request_at")
    assert row == {"org": "default", "endpoint": "counted", "in_flight": 0, "requests": 5,
                   "errors": 0, "by_class": {"2xx": 3, "4xx": 2, "5xx": 0}, "broken_streams": 0,
                   "client_disconnects": 0}
    assert abs(last - time.time()) < 60
    assert BACKEND_KEY not in json.dumps(stats) and world.upstream.url not in json.dumps(stats)
    # Endpoint hosts never expose the gateway's own pages.
    assert client.get(f"{world.gateway.url}/metrics", headers={
        "Host": world.host("counted")}).status_code == 401


def test_a_routable_endpoints_series_exist_at_zero_before_its_first_request(
        world: World, client: httpx.Client) -> None:
    """Born at 0 when routable, so Prometheus can rate the very first burst."""
    ep = world.add("fresh-series", status=EndpointStatus.LOADING)
    world.settle()
    key = ("ie_gateway_requests_total", (("endpoint", "fresh-series"), ("org", "default"),
                                         ("status_class", "2xx")))
    assert key not in _samples(client, world)  # not routable yet: nothing to rate
    assert put_status(world.registry, ep, EndpointStatus.HEALTHY)
    world.settle()
    samples = _samples(client, world)
    for klass in ("2xx", "4xx", "5xx"):
        labels = (("endpoint", "fresh-series"), ("org", "default"), ("status_class", klass))
        assert samples.get(("ie_gateway_requests_total", labels)) == 0.0, klass
    assert samples.get(("ie_gateway_in_flight_requests",
                        (("endpoint", "fresh-series"), ("org", "default")))) == 0.0
    assert _status(client, world, "fresh-series") == 200
    assert _samples(client, world)[key] == 1.0


def test_gateway_health_is_open_and_admin_pages_need_the_admin_token(world: World,
                                                                     client: httpx.Client) -> None:
    health = client.get(f"{world.gateway.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert client.get(f"{world.gateway.url}/elsewhere").status_code == 404

    async def call(path: str, client_host: str, token: str | None) -> int:
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> MutableMapping[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        headers = [(b"host", b"gw.example.com")]
        if token is not None:
            headers.append((b"authorization", f"Bearer {token}".encode()))
        scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "headers": headers, "client": (client_host, 5000)}
        await world.app(scope, receive, send)
        return int(sent[0]["status"])

    for path in ("/metrics", "/_gateway/stats"):
        assert asyncio.run(call(path, "10.1.2.3", None)) == 401
        assert asyncio.run(call(path, "127.0.0.1", None)) == 401  # loopback is no credential
        assert asyncio.run(call(path, "127.0.0.1", "wrong")) == 401
        assert asyncio.run(call(path, "127.0.0.1", world.key)) == 401  # an org key is not admin
        assert asyncio.run(call(path, "10.1.2.3", ADMIN_TOKEN)) == 200
    no_token = client.get(f"{world.gateway.url}/metrics")
    assert no_token.status_code == 401 and "ie_gateway" not in no_token.text
    assert no_token.json()["error"]["code"] == "admin_token_required"


def test_fetch_traffic_reads_in_flight_counts(world: World, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    from inference_endpoints.adapters.gateway.stats import fetch_traffic
    from inference_endpoints.settings import Settings

    settings = Settings(gateway_host="127.0.0.1", gateway_port=world.port,
                        gateway_admin_token=ADMIN_TOKEN)
    assert fetch_traffic(Settings(gateway_host="127.0.0.1", gateway_port=world.port,
                                  gateway_admin_token="not-it")) is None
    traffic = fetch_traffic(settings)
    assert traffic is not None and traffic[("default", "demo")].in_flight == 0
    assert traffic[("default", "demo")].requests > 0
    assert fetch_traffic(Settings(gateway_host="127.0.0.1", gateway_port=1)) is None


# ---- replicas ---------------------------------------------------------------------------------

def with_replica(registry: Registry, endpoint_id: str, backend_url: str) -> str:
    """A second replica, ready at `backend_url`, recorded as the reconciler and its serve run do."""
    assert registry.runs.scale(endpoint_id, 2, 2)
    run = registry.runs.add_replica(endpoint_id, 1)
    assert run is not None
    registry.runs.record_submitted(run.id, f"fr-{run.id}")
    now = datetime.now(UTC)
    assert registry.runs.report(run.id, engine_started_at=now, backend_url=backend_url, ready_at=now,
                                last_seen_at=now)
    return run.id


def test_requests_are_spread_over_ready_replicas(world: World, client: httpx.Client) -> None:
    second = FakeUpstream(model="second", api_key=BACKEND_KEY)
    other = serve_in_thread(second)
    try:
        ep = world.add("pair")
        put_status(world.registry, ep, EndpointStatus.HEALTHY)
        with_replica(world.registry, ep, other.url)
        world.settle()
        route = world.app.resolver.table.routes[("default", "pair")]
        assert set(route.addresses) == {world.upstream.url, other.url}
        before = (world.fake.state.completed, second.state.completed)
        for _ in range(20):
            r = client.post(f"{world.path('pair')}/v1/completions", headers=world.auth(),
                            json={"prompt": "x", "max_tokens": 1})
            assert r.status_code == 200, r.text
        def served() -> tuple[int, int]:
            return world.fake.state.completed - before[0], second.state.completed - before[1]

        eventually(lambda: sum(served()) >= 20)  # a fake counts just after it answers
        first_n, second_n = served()
        assert first_n + second_n == 20 and first_n >= 5 and second_n >= 5, (first_n, second_n)
    finally:
        other.stop()


def test_a_dead_replica_costs_no_request(world: World, client: httpx.Client) -> None:
    """A replica whose engine is gone (connection refused) before the registry knows it: every
    request is answered by the other one, retried before any byte went to the caller."""
    ep = world.add("half-dead")
    put_status(world.registry, ep, EndpointStatus.HEALTHY)
    with_replica(world.registry, ep, world.dead_url)
    world.settle()
    assert world.dead_url in world.app.resolver.table.routes[("default", "half-dead")].addresses
    statuses = [client.post(f"{world.path('half-dead')}/v1/completions", headers=world.auth(),
                            json={"prompt": "x", "max_tokens": 1}).status_code for _ in range(10)]
    assert statuses == [200] * 10
    streamed = client.post(f"{world.path('half-dead')}/v1/completions", headers=world.auth(),
                           json={"prompt": "x", "max_tokens": 3, "stream": True})
    assert streamed.status_code == 200 and "[DONE]" in streamed.text
    errors = [r for r in world.app.metrics.stats()["endpoints"] if r["endpoint"] == "half-dead"]
    assert errors and errors[0]["errors"] == 0


def test_prefix_affinity_sends_a_prompts_start_to_one_replica(world: World, client: httpx.Client) -> None:
    """Opt-in (IE_GATEWAY_PREFIX_AFFINITY): every request of one prompt start lands on the replica
    the rendezvous hash gives it, through the real proxy; both replicas get their share."""
    from inference_endpoints.adapters.gateway.balancer import preferred, prompt_prefix

    second = FakeUpstream(model="second", api_key=BACKEND_KEY)
    other = serve_in_thread(second)
    proxy = world.app._proxy
    assert proxy is not None
    proxy.prefix_affinity = True
    try:
        ep = world.add("affine")
        put_status(world.registry, ep, EndpointStatus.HEALTHY)
        with_replica(world.registry, ep, other.url)
        world.settle()
        addresses = world.app.resolver.table.routes[("default", "affine")].addresses
        fakes = {world.upstream.url: world.fake, other.url: second}
        landed = {}
        for i in range(8):
            payload = {"model": "affine", "prompt": f"system prompt {i}: be brief", "max_tokens": 1}
            before = {u: f.state.completed for u, f in fakes.items()}
            for _ in range(4):
                r = client.post(f"{world.path('affine')}/v1/completions", headers=world.auth(), json=payload)
                assert r.status_code == 200, r.text
            def grew(before: dict[str, int] = before) -> dict[str, int]:
                return {u: fakes[u].state.completed - before[u] for u in fakes}

            eventually(lambda: sum(grew().values()) >= 4)  # a fake counts just after it answers
            key = prompt_prefix(json.dumps(payload).encode())
            assert key is not None
            expected = preferred(addresses, key)
            assert grew() == {u: 4 if u == expected else 0 for u in fakes}, (i, grew(), expected)
            landed[i] = expected
        assert set(landed.values()) == set(addresses), landed
    finally:
        proxy.prefix_affinity = False
        other.stop()
