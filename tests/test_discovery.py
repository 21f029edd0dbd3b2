"""Service discovery: pure target groups, the /sd/targets route, and a real Prometheus following it.

The real-Prometheus test runs discovery (uvicorn, in a thread) on a real registry,
fixture "engines" (prometheus_client servers exposing vLLM-named metrics) and the
real accelerator exporter, and watches Prometheus' own /api/v1/targets as endpoints
start and stop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from inference_endpoints.adapters.gateway.server import serve_in_thread
from inference_endpoints.adapters.metrics.config import MetricsConfig
from inference_endpoints.adapters.metrics.discovery import (
    SD_PATH,
    RunTarget,
    create_app,
    get_metrics_config,
    get_registry,
    registry_targets,
    target_groups,
)
from inference_endpoints.adapters.metrics.exporter import start_exporter
from inference_endpoints.adapters.metrics.prometheus import render_config
from inference_endpoints.adapters.runtime.base import EngineLabels
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.persistence.models import Checkpoint, Endpoint, utcnow
from inference_endpoints.persistence.registry import Registry
from tests.lifecycle_support import put_status
from tests.prometheus_support import active_targets, running_prometheus, wait_for

REFRESH_S = 1.0
# Waits below only guard against a hang: how fast Prometheus follows (SD refresh plus its fixed
# 5 s batching in 2.x) is measured by `python -m bench.propagation`, not asserted here.
DEADLINE_S = 120.0


def endpoint(name: str, status: str = "healthy", backend: str | None = "http://127.0.0.1:8001",
             exporter: str | None = None, org_id: str = "org_1", **kw: Any) -> Endpoint:
    return Endpoint(id=f"ep_{name}", org_id=org_id, name=name, checkpoint_id="c", instance="cpu-dev",
                    max_context=1, precision="auto", quantization="none", status=status,
                    backend_url=backend, exporter_url=exporter, served_model_name=name,
                    serving_config_json="{}", **kw)


# ---- pure -----------------------------------------------------------------------------------------

def test_live_engines_and_exporters_become_labelled_targets() -> None:
    groups = target_groups([
        endpoint("chat", exporter="http://127.0.0.1:9100"),
        endpoint("new", status="loading", backend="http://10.0.0.5:8002", org_id="org_2"),
    ], {"org_1": "acme", "org_2": "beta"})
    assert groups == [
        {"targets": ["127.0.0.1:8001"], "labels": {
            "job": "vllm", "org": "acme", "endpoint": "chat", "endpoint_id": "ep_chat", "replica": "0",
            "__scheme__": "http", "__metrics_path__": "/metrics"}},
        {"targets": ["127.0.0.1:9100"], "labels": {
            "job": "accelerator", "org": "acme", "endpoint": "chat", "endpoint_id": "ep_chat",
            "replica": "0", "__scheme__": "http", "__metrics_path__": "/metrics"}},
        {"targets": ["10.0.0.5:8002"], "labels": {
            "job": "vllm", "org": "beta", "endpoint": "new", "endpoint_id": "ep_new", "replica": "0",
            "__scheme__": "http", "__metrics_path__": "/metrics"}},
    ]


@pytest.mark.parametrize("status", ["stopped", "failed"])
def test_ended_endpoints_are_not_scraped(status: str) -> None:
    assert target_groups([endpoint("old", status=status, exporter="http://h:1")], {}) == []


def test_endpoints_without_addresses_yet_are_skipped() -> None:
    assert target_groups([endpoint("pending", status="pending", backend=None)], {}) == []


def test_a_replacement_candidate_is_scraped_beside_the_live_engine() -> None:
    chat = endpoint("chat")
    groups = target_groups([chat], {}, {chat.id: [RunTarget("http://127.0.0.1:8009")]})
    assert [g["targets"] for g in groups] == [["127.0.0.1:8001"], ["127.0.0.1:8009"]]
    assert {g["labels"]["endpoint"] for g in groups} == {"chat"}


def test_every_replica_and_its_exporter_is_scraped_with_its_slot() -> None:
    chat = endpoint("chat", exporter="http://127.0.0.1:9100")
    runs = [RunTarget("http://127.0.0.1:8001", "http://127.0.0.1:9100", 0),  # the live run again
            RunTarget("http://127.0.0.1:8002", "http://127.0.0.1:9101", 1),
            RunTarget("http://127.0.0.1:8003", None, 2)]
    groups = target_groups([chat], {}, {chat.id: runs})
    assert [(g["labels"]["job"], g["targets"][0], g["labels"]["replica"]) for g in groups] == [
        ("vllm", "127.0.0.1:8001", "0"), ("vllm", "127.0.0.1:8002", "1"), ("vllm", "127.0.0.1:8003", "2"),
        ("accelerator", "127.0.0.1:9100", "0"), ("accelerator", "127.0.0.1:9101", "1")]


def test_paths_and_schemes_are_kept() -> None:
    groups = target_groups([endpoint("p", backend="https://gpu-7:8443/engine/",
                                     exporter="http://h:9/metrics")], {})
    assert groups[0]["targets"] == ["gpu-7:8443"]
    assert groups[0]["labels"]["__scheme__"] == "https"
    assert groups[0]["labels"]["__metrics_path__"] == "/engine/metrics"
    assert groups[1]["labels"]["__metrics_path__"] == "/metrics"


# ---- the route ------------------------------------------------------------------------------------

def add_endpoint(registry: Registry, org_id: str, name: str, backend: str | None,
                 exporter: str | None = None, status: str = "healthy") -> str:
    with registry.session() as s:
        if s.get(Checkpoint, "ckpt_sd") is None:
            s.add(Checkpoint(id="ckpt_sd", org_id=org_id, name="tiny", kind="full", base_model="tiny",
                             location="x", size_bytes=1, digest="d",
                             architecture="LlamaForCausalLM", facts_json="{}"))
            s.flush()
        ep = Endpoint(org_id=org_id, name=name, checkpoint_id="ckpt_sd", instance="cpu-dev",
                      max_context=512, precision="auto", quantization="none", status=status,
                      backend_url=backend, exporter_url=exporter, served_model_name=name,
                      serving_config_json="{}", updated_at=utcnow())
        s.add(ep)
    return ep.id


def stop(registry: Registry, endpoint_id: str) -> None:
    assert put_status(registry, endpoint_id, EndpointStatus.STOPPING)
    assert put_status(registry, endpoint_id, EndpointStatus.STOPPED)


def client(registry: Registry, loopback_only: bool = True) -> TestClient:
    app = create_app()
    app.dependency_overrides[get_registry] = lambda: registry
    app.dependency_overrides[get_metrics_config] = lambda: MetricsConfig(
        discovery_loopback_only=loopback_only)
    return TestClient(app)


def test_route_serves_the_registry_and_follows_it_immediately(sqlite_registry: Registry) -> None:
    org = sqlite_registry.get_org_by_name("default")
    assert org is not None
    http = client(sqlite_registry, loopback_only=False)
    assert http.get(SD_PATH).json() == []
    ep = add_endpoint(sqlite_registry, org.id, "chat", "http://127.0.0.1:8001")
    body = http.get(SD_PATH).json()
    assert [g["labels"]["org"] for g in body] == ["default"]
    assert body == registry_targets(sqlite_registry)
    stop(sqlite_registry, ep)
    assert http.get(SD_PATH).json() == []  # gone on the very next refresh


def test_route_refuses_remote_callers(sqlite_registry: Registry) -> None:
    # TestClient's peer is "testclient", not a loopback address.
    assert client(sqlite_registry).get(SD_PATH).status_code == 403


def test_registry_down_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    """Prometheus keeps its last good targets after an error; an empty list would drop them all."""
    broken = Registry("postgresql://nobody@127.0.0.1:1/none")
    response = client(broken, loopback_only=False).get(SD_PATH)
    assert response.status_code == 503
    assert "registry unavailable" in response.text


# ---- a real Prometheus ------------------------------------------------------------------------------

class FakeEngine:
    """A prometheus_client server with vLLM-named metrics, standing in for an engine.

    Same client library as vLLM's /metrics, so the same OpenMetrics name escaping.
    """

    def __init__(self, running: float):
        registry = CollectorRegistry()
        Gauge("vllm:num_requests_running", "running", ["model_name"], registry=registry).labels(
            "m").set(running)
        Counter("vllm:prompt_tokens", "prompt", ["model_name"], registry=registry).labels("m").inc(5)
        Histogram("vllm:e2e_request_latency_seconds", "latency", ["model_name"], buckets=(0.5, 1.0),
                  registry=registry).labels("m").observe(0.7)
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def engines() -> Iterator[list[FakeEngine]]:
    made = [FakeEngine(3), FakeEngine(7)]
    yield made
    for e in made:
        e.stop()


def scraped(url: str) -> dict[tuple[str, str], dict[str, str]]:
    """(job, endpoint) -> labels of each active target Prometheus scrapes, once it is up."""
    return {(t["labels"]["job"], t["labels"]["endpoint"]): t["labels"]
            for t in active_targets(url) if t["health"] == "up"}


def test_prometheus_follows_endpoints_starting_and_stopping(
    sqlite_registry: Registry, engines: list[FakeEngine], tmp_path: Path
) -> None:
    org = sqlite_registry.get_org_by_name("default")
    assert org is not None
    app = create_app()
    app.dependency_overrides[get_registry] = lambda: sqlite_registry
    sd = serve_in_thread(app)
    labels = EngineLabels("default", "ep_x", "chat", "run-1")
    exporter = start_exporter(labels, lambda: [os.getpid()], "127.0.0.1")
    chat = add_endpoint(sqlite_registry, org.id, "chat", engines[0].url, exporter.url)
    config = render_config(sd.url + SD_PATH, None, scrape_interval_s=1, sd_refresh_s=REFRESH_S)
    try:
        with running_prometheus(tmp_path / "prom", config) as prom:
            wait_for(lambda: {("vllm", "chat"), ("accelerator", "chat")} <= scraped(prom).keys(), DEADLINE_S)
            target = scraped(prom)[("vllm", "chat")]
            assert (target["org"], target["endpoint_id"]) == ("default", chat)
            # Samples carry the discovery labels, and the target's job replaces the SD job's name.
            query = 'vllm:num_requests_running{org="default",endpoint="chat"}'
            wait_for(lambda: _has(prom, query), DEADLINE_S)
            sample = httpx.get(f"{prom}/api/v1/query", params={"query": query}).json()[
                "data"]["result"][0]
            assert sample["metric"]["job"] == "vllm" and sample["value"][1] == "3"
            # vLLM's documented names survive OpenMetrics negotiation (see VLLM_NAME_RELABEL).
            names = set(httpx.get(f"{prom}/api/v1/label/__name__/values").json()["data"])
            assert {"vllm:prompt_tokens_total", "vllm:e2e_request_latency_seconds_bucket"} <= names
            assert not {n for n in names if n.startswith("vllm_") or n.endswith("_created")}
            wait_for(lambda: _has(prom, 'ie_device_memory_used_bytes{endpoint="chat",device="cpu"}'), DEADLINE_S)

            started = time.monotonic()
            add_endpoint(sqlite_registry, org.id, "fresh", engines[1].url)
            appeared = wait_for(lambda: ("vllm", "fresh") in scraped(prom), DEADLINE_S)
            stop(sqlite_registry, chat)
            gone = wait_for(lambda: not {("vllm", "chat"), ("accelerator", "chat")}
                            & {(t["labels"]["job"], t["labels"]["endpoint"]) for t in active_targets(prom)},
                            DEADLINE_S)
            print(f"\n[discovery] new endpoint scraped after {appeared:.1f} s, stopped one dropped "
                  f"after {gone:.1f} s (SD refresh {REFRESH_S:.0f} s; total {time.monotonic() - started:.1f} s)")
            assert ("vllm", "fresh") in scraped(prom)
    finally:
        exporter.stop()
        sd.stop()


def _has(prom: str, query: str) -> bool:
    data = httpx.get(f"{prom}/api/v1/query", params={"query": query}).json()
    return bool(data["data"]["result"])


def test_the_registry_lists_each_replicas_engine(registry: Registry) -> None:
    """A second replica, recorded as the reconciler and its serve run do, is scraped with its slot."""
    from tests.test_gateway import with_replica
    from tests.test_gateway_units import add_endpoint as add_served

    org = registry.get_org_by_name("default")
    assert org is not None
    ep = add_served(registry, org.id, "pair", EndpointStatus.HEALTHY, "http://127.0.0.1:8001", "k")
    put_status(registry, ep, EndpointStatus.HEALTHY, backend_url="http://127.0.0.1:8001")
    with_replica(registry, ep, "http://127.0.0.1:8002")
    engines = [(g["targets"][0], g["labels"]["replica"]) for g in registry_targets(registry)
               if g["labels"]["job"] == "vllm" and g["labels"]["endpoint"] == "pair"]
    assert engines == [("127.0.0.1:8001", "0"), ("127.0.0.1:8002", "1")], engines
