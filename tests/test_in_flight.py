"""What a replaced engine still holds, read from its /metrics the way the serve run's drain does."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from inference_endpoints.adapters.health import in_flight
from tests.prometheus_support import free_port


def test_running_plus_waiting_requests_across_label_sets() -> None:
    registry = CollectorRegistry()
    running = Gauge("vllm:num_requests_running", "running", ["model_name"], registry=registry)
    waiting = Gauge("vllm:num_requests_waiting", "waiting", ["model_name"], registry=registry)
    Gauge("vllm:num_requests_swapped", "not in flight for the drain", registry=registry).set(7)
    running.labels("a").set(2)
    running.labels("b").set(1)
    waiting.labels("a").set(4)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert in_flight(url) == 7
        running.labels("a").set(0)
        running.labels("b").set(0)
        waiting.labels("a").set(0)
        assert in_flight(url) == 0
    finally:
        server.shutdown()
        thread.join(5)


def test_an_engine_that_does_not_answer_reads_as_unknown() -> None:
    assert in_flight(f"http://127.0.0.1:{free_port()}", timeout_s=0.5) is None
