"""Gateway pieces without sockets: routing, authorization, accounting, change detection."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from inference_endpoints.adapters.gateway.auth import Verdict, authorize, bearer_token
from inference_endpoints.adapters.gateway.metrics import GatewayMetrics
from inference_endpoints.adapters.gateway.resolver import Route, RouteTable, load_table, signature
from inference_endpoints.adapters.gateway.routing import Target, route, split_host, split_path
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.persistence.models import Checkpoint, Endpoint, utcnow
from inference_endpoints.persistence.registry import Registry, hash_key
from tests.lifecycle_support import put_status

BASE = "endpoints.localhost"


@pytest.mark.parametrize(("host", "expected"), [
    (b"demo.acme.endpoints.localhost", ("acme", "demo")),
    (b"demo.acme.endpoints.localhost:8780", ("acme", "demo")),
    (b"Demo.ACME.Endpoints.Localhost.:8780", ("acme", "demo")),
    (b"a.b.acme.endpoints.localhost", ("", "")),  # under the base domain, but no such endpoint
    (b"acme.endpoints.localhost", ("", "")),
    (b"endpoints.localhost:8780", None),
    (b"127.0.0.1:8780", None),
    (b"localhost", None),
    (b"[::1]:8780", None),
    (b"", None),
    (b"demo.acme.endpoints.localhost.evil.com", None),
])
def test_split_host(host: bytes, expected: tuple[str, str] | None) -> None:
    assert split_host(host, BASE) == expected


@pytest.mark.parametrize(("path", "expected"), [
    (b"/e/acme/demo/v1/models", ("acme", "demo", b"/v1/models")),
    (b"/e/acme/demo", ("acme", "demo", b"/")),
    (b"/e/acme/demo/", ("acme", "demo", b"/")),
    (b"/e/ACME/Demo/v1/a%2Fb", ("acme", "demo", b"/v1/a%2Fb")),  # encoding kept for upstream
    (b"/e/acme", ("", "", b"/")),
    (b"/e/acme//v1", ("", "", b"/")),
    (b"/e/", None),
    (b"/metrics", None),
    (b"/v1/models", None),
])
def test_split_path(path: bytes, expected: tuple[str, str, bytes] | None) -> None:
    assert split_path(path) == expected


def test_route_prefers_the_host_and_keeps_the_query() -> None:
    by_host = route(b"demo.acme.endpoints.localhost", b"/v1/models", b"a=1", BASE)
    assert by_host == Target("acme", "demo", b"/v1/models", b"a=1")
    assert by_host.upstream_path == b"/v1/models?a=1"
    # On an endpoint host, /e/... is just a path of that endpoint.
    assert route(b"demo.acme.endpoints.localhost", b"/e/x/y", b"", BASE) == Target(
        "acme", "demo", b"/e/x/y")
    assert route(b"127.0.0.1:8780", b"/e/acme/demo/v1/chat/completions", b"", BASE) == Target(
        "acme", "demo", b"/v1/chat/completions")
    assert route(b"127.0.0.1:8780", b"/metrics", b"", BASE) is None


@pytest.mark.parametrize(("headers", "token"), [
    ([(b"authorization", b"Bearer ie_abc")], "ie_abc"),
    ([(b"authorization", b"bearer  ie_abc ")], "ie_abc"),
    ([(b"authorization", b"Basic Zm9vOmJhcg==")], None),
    ([(b"authorization", b"Bearer ")], None),
    ([(b"x-api-key", b"ie_abc")], None),
    ([], None),
])
def test_bearer_token(headers: list[tuple[bytes, bytes]], token: str | None) -> None:
    assert bearer_token(headers) == token


def _route(org: str, name: str, org_id: str, status: str = "healthy",
           url: str | None = "http://127.0.0.1:9") -> Route:
    return Route(f"ep_{name}", org_id, org, name, status, url, b"Bearer backend", name)


def test_authorization_matrix_never_reveals_another_orgs_endpoint() -> None:
    table = RouteTable(
        routes={("acme", "demo"): _route("acme", "demo", "org_acme"),
                ("acme", "cold"): _route("acme", "cold", "org_acme", status="loading"),
                ("acme", "gone"): _route("acme", "gone", "org_acme", status="stopped"),
                ("acme", "nourl"): _route("acme", "nourl", "org_acme", url=None),
                ("zeta", "other"): _route("zeta", "other", "org_zeta")},
        key_orgs={hash_key("acme-key"): "org_acme", hash_key("zeta-key"): "org_zeta"},
    )

    def verdict(org: str, name: str, token: str | None) -> Verdict:
        return authorize(table, Target(org, name, b"/v1/models"), token).verdict

    assert verdict("acme", "demo", None) is Verdict.MISSING_KEY
    assert verdict("acme", "nope", None) is Verdict.MISSING_KEY  # 401 before any lookup
    assert verdict("acme", "demo", "revoked-or-unknown") is Verdict.INVALID_KEY
    assert verdict("acme", "demo", "zeta-key") is Verdict.NOT_FOUND  # exists, other org
    assert verdict("acme", "nope", "acme-key") is Verdict.NOT_FOUND  # does not exist
    assert verdict("zeta", "other", "acme-key") is Verdict.NOT_FOUND
    assert verdict("acme", "cold", "acme-key") is Verdict.NOT_READY
    assert verdict("acme", "gone", "acme-key") is Verdict.NOT_READY
    assert verdict("acme", "nourl", "acme-key") is Verdict.NOT_READY
    assert verdict("acme", "demo", "acme-key") is Verdict.ALLOW
    # The decision carries the route whenever the endpoint exists (the proxy's backend, and the
    # per-endpoint counters even for refused requests), and never invents one.
    for (org, name), expected in table.routes.items():
        for token in (None, "revoked-or-unknown", "zeta-key", "acme-key"):
            assert authorize(table, Target(org, name, b"/v1/models"), token).route is expected, (name, token)
    assert authorize(table, Target("acme", "nope", b"/v1/models"), "acme-key").route is None
    assert table.routes[("acme", "cold")].retry_after_s == 5
    assert table.routes[("acme", "gone")].retry_after_s is None  # terminal: retrying won't help


def test_metrics_by_status_class_and_prometheus_text() -> None:
    metrics = GatewayMetrics()
    for status, seconds in ((200, 0.002), (200, 0.3), (404, 0.0001), (503, 0.0001), (502, 0.01)):
        metrics.observe("acme", "demo", status, seconds)
    metrics.observe("acme", "demo", 200, 1.5, error=True)  # backend broke the stream off
    metrics.counters("acme", "demo").in_flight = 2
    metrics.observe("", "", 404, 0.0001)  # unknown endpoints share one series
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics.exposition().decode())
               for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    ep = {"org": "acme", "endpoint": "demo"}
    assert value("ie_gateway_requests_total", **ep, status_class="2xx") == 3
    assert value("ie_gateway_requests_total", **ep, status_class="4xx") == 1
    assert value("ie_gateway_requests_total", **ep, status_class="5xx") == 2
    assert value("ie_gateway_request_errors_total", **ep, status_class="5xx") == 2
    assert value("ie_gateway_request_errors_total", **ep, status_class="2xx") == 1
    assert value("ie_gateway_request_errors_total", **ep, status_class="4xx") == 0
    assert value("ie_gateway_request_duration_seconds_count", **ep, status_class="2xx") == 3
    assert value("ie_gateway_request_duration_seconds_bucket", **ep, status_class="2xx",
                 le="0.25") == 1
    assert value("ie_gateway_request_duration_seconds_bucket", **ep, status_class="2xx",
                 le="+Inf") == 3
    assert value("ie_gateway_in_flight_requests", **ep) == 2
    (row,) = metrics.stats()["endpoints"]
    last = row.pop("last_request_at")
    assert row == {"org": "acme", "endpoint": "demo", "in_flight": 2, "requests": 6, "errors": 3,
                   "by_class": {"2xx": 3, "4xx": 1, "5xx": 2}, "broken_streams": 1,
                   "client_disconnects": 0}
    assert isinstance(last, float) and abs(last - time.time()) < 60


def test_every_status_class_starts_at_zero() -> None:
    """A first error must be an increase Prometheus can rate, not a series appearing at 1."""
    metrics = GatewayMetrics()
    metrics.observe("acme", "fresh", 200, 0.01)
    samples = {(s.name, s.labels.get("status_class")): s.value
               for family in text_string_to_metric_families(metrics.exposition().decode())
               for s in family.samples if s.labels.get("endpoint") == "fresh"}
    assert samples[("ie_gateway_requests_total", "5xx")] == 0
    assert samples[("ie_gateway_request_errors_total", "5xx")] == 0
    assert samples[("ie_gateway_requests_total", "2xx")] == 1


def add_endpoint(registry: Registry, org_id: str, name: str, status: str = "healthy",
                 backend_url: str | None = None, backend_key: str = "backend-key") -> str:
    """An endpoint row (and a checkpoint for it), as the create flow would leave it."""
    with registry.session() as s:
        if s.get(Checkpoint, f"ckpt_{org_id}") is None:
            s.add(Checkpoint(id=f"ckpt_{org_id}", org_id=org_id, name="tiny", kind="full",
                             base_model="tiny", location="x", size_bytes=1, digest="d",
                             architecture="LlamaForCausalLM", facts_json="{}"))
            s.flush()
        ep = Endpoint(org_id=org_id, name=name, checkpoint_id=f"ckpt_{org_id}",
                      instance="cpu-dev", max_context=512, precision="auto", quantization="none",
                      status=status, backend_url=backend_url, backend_api_key=backend_key,
                      served_model_name=name, serving_config_json="{}", updated_at=utcnow())
        s.add(ep)
    return ep.id


def test_signature_moves_on_every_change_the_gateway_must_see(registry: Registry) -> None:
    org = registry.get_org_by_name("default")
    assert org is not None
    seen = [signature(registry)]

    def moved() -> bool:
        seen.append(signature(registry))
        return seen[-1] != seen[-2]

    ep = add_endpoint(registry, org.id, "demo", status="loading", backend_url="http://x:1")
    assert moved()
    assert not moved()  # nothing changed: no reload
    assert put_status(registry, ep, EndpointStatus.HEALTHY)
    assert moved()
    registry.update_endpoint(ep, backend_url="http://x:2")  # a restart on a new port
    assert moved()
    key = registry.create_key(org.id, "ci")
    assert moved()
    registry.revoke_key(org.id, key.key.prefix)
    assert moved()
    registry.create_org("acme")
    assert moved()
    assert put_status(registry, ep, EndpointStatus.STOPPING)
    assert put_status(registry, ep, EndpointStatus.STOPPED)
    registry.remove_endpoint(ep)
    assert moved()


def test_load_table_reads_routes_and_only_live_keys(sqlite_registry: Registry, tmp_path: Path) -> None:
    registry = sqlite_registry
    org = registry.get_org_by_name("default")
    assert org is not None
    add_endpoint(registry, org.id, "demo", backend_url="http://127.0.0.1:9/", backend_key="s3cret")
    live = registry.create_key(org.id, "live")
    dead = registry.create_key(org.id, "dead")
    registry.revoke_key(org.id, dead.key.id)
    table = load_table(registry)
    demo = table.routes[("default", "demo")]
    assert demo.backend_url == "http://127.0.0.1:9" and demo.backend_auth == b"Bearer s3cret"
    assert demo.routable and demo.org_id == org.id and demo.model == "demo"
    assert table.key_orgs[hash_key(live.secret)] == org.id
    assert hash_key(dead.secret) not in table.key_orgs
