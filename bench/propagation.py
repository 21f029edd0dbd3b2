"""How fast changes and hang-ups propagate: `python -m bench.propagation [--rounds N] [--no-prometheus]`.

The timings the tests no longer assert (they flaked on two shared cores) are measured here
instead, with the same real parts: the gateway (uvicorn, in a thread) over a throwaway SQLite
registry in front of `bench.fake_upstream`, and a real Prometheus following the discovery
route. Each figure is measured `--rounds` times; the table prints min, median and max next
to the bound the tests used to assert. Everything binds to 127.0.0.1 and is stopped here.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from bench.fake_upstream import FakeUpstream
from inference_endpoints.adapters.gateway import GatewayConfig
from inference_endpoints.adapters.gateway.server import ThreadedServer, run_in_thread, serve_in_thread
from inference_endpoints.adapters.metrics import discovery
from inference_endpoints.adapters.metrics.prometheus import (
    prometheus_argv,
    ready,
    render_config,
    write_config,
)
from inference_endpoints.adapters.processes import spawn, stop_group, wait_until
from inference_endpoints.core.lifecycle import Purpose, Role
from inference_endpoints.persistence.models import Checkpoint, Endpoint, utcnow
from inference_endpoints.persistence.registry import Registry

DEADLINE_S = 120.0  # any single wait; a figure that hits it is reported as such
PROMETHEUS = "/usr/bin/prometheus"
BACKEND_KEY = "bench-backend-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seconds_until(check: Callable[[], bool], step_s: float = 0.02) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > DEADLINE_S:
            return float("inf")
        time.sleep(step_s)
    return time.monotonic() - started


def add_endpoint(registry: Registry, org_id: str, name: str, backend_url: str) -> str:
    with registry.session() as s:
        if s.get(Checkpoint, "ckpt_bench") is None:
            s.add(Checkpoint(id="ckpt_bench", org_id=org_id, name="tiny", kind="full", base_model="tiny",
                             location="x", size_bytes=1, digest="d", architecture="LlamaForCausalLM",
                             facts_json="{}"))
            s.flush()
        ep = Endpoint(org_id=org_id, name=name, checkpoint_id="ckpt_bench", instance="cpu-dev",
                      max_context=512, precision="auto", quantization="none", status="healthy",
                      backend_url=backend_url, backend_api_key=BACKEND_KEY, served_model_name=name,
                      serving_config_json="{}", updated_at=utcnow())
        s.add(ep)
    return ep.id


def stop(registry: Registry, endpoint_id: str) -> None:
    registry.runs.request_stop(endpoint_id)  # a hand-made row without serve runs: stopped at once


def make_unhealthy(registry: Registry, endpoint_id: str, backend_url: str) -> None:
    """Facts, as a serve run would report them: ready once, then three failed probes."""
    run = registry.runs.add_run(endpoint_id, Role.LIVE, Purpose.START, expected_live=None)
    assert run is not None
    registry.runs.record_submitted(run.id, f"fr-{run.id}")
    registry.runs.report(run.id, engine_started_at=utcnow(), backend_url=backend_url,
                         ready_at=utcnow(), probe_failures=3)


class Bench:
    def __init__(self, registry: Registry, org_id: str, key: str, fake: FakeUpstream,
                 upstream: ThreadedServer, gateway: ThreadedServer):
        self.registry, self.org_id, self.key = registry, org_id, key
        self.fake, self.upstream, self.gateway = fake, upstream, gateway
        self.http = httpx.Client(timeout=30)
        add_endpoint(registry, org_id, "stream", upstream.url)
        seconds_until(lambda: self.status("stream") == 200)

    def status(self, name: str, key: str | None = None) -> int:
        return self.http.get(f"{self.gateway.url}/e/default/{name}/v1/models",
                             headers={"Authorization": f"Bearer {key or self.key}"}).status_code

    def status_change(self, i: int) -> float:
        ep = add_endpoint(self.registry, self.org_id, f"flip-{i}", self.upstream.url)
        seconds_until(lambda: self.status(f"flip-{i}") == 200)
        make_unhealthy(self.registry, ep, self.upstream.url)
        return seconds_until(lambda: self.status(f"flip-{i}") == 503)

    def new_backend(self, i: int) -> float:
        other = serve_in_thread(FakeUpstream(model=f"moved-{i}", api_key=BACKEND_KEY))
        ep = add_endpoint(self.registry, self.org_id, f"move-{i}", self.upstream.url)
        seconds_until(lambda: self.status(f"move-{i}") == 200)
        try:
            self.registry.update_endpoint(ep, backend_url=other.url)

            def moved() -> bool:
                r = self.http.get(f"{self.gateway.url}/e/default/move-{i}/v1/models",
                                  headers={"Authorization": f"Bearer {self.key}"})
                return r.status_code == 200 and r.json()["data"][0]["id"] == f"moved-{i}"
            return seconds_until(moved)
        finally:
            other.stop()

    def key_revoked(self, i: int) -> float:
        new = self.registry.create_key(self.org_id, f"bench-{i}")
        add_endpoint(self.registry, self.org_id, f"keyed-{i}", self.upstream.url)
        seconds_until(lambda: self.status(f"keyed-{i}", new.secret) == 200)
        self.registry.revoke_key(self.org_id, new.key.prefix)
        return seconds_until(lambda: self.status(f"keyed-{i}", new.secret) == 401)

    def hang_up(self, i: int) -> float:
        cancelled = self.fake.state.cancelled
        url = f"{self.gateway.url}/e/default/stream/v1/completions?itl_ms=100&chunks=200"
        with self.http.stream("POST", url, headers={"Authorization": f"Bearer {self.key}"},
                              json={"stream": True}) as r:
            next(r.iter_raw())
        return seconds_until(lambda: self.fake.state.cancelled > cancelled)

    def first_event_share(self, i: int) -> float:
        """First SSE event's arrival over the whole stream's (5 chunks, 200 ms apart upstream)."""
        url = f"{self.gateway.url}/e/default/stream/v1/completions?itl_ms=200&chunks=5"
        started = time.monotonic()
        arrivals = []
        with self.http.stream("POST", url, headers={"Authorization": f"Bearer {self.key}"},
                              json={"stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.monotonic() - started)
        return arrivals[0] / arrivals[-1]


def discovery_round(registry: Registry, org_id: str, prom: str, i: int) -> tuple[float, float]:
    """Seconds until Prometheus scrapes a new endpoint, then until it drops it once stopped."""
    reg = CollectorRegistry()
    Gauge("vllm:num_requests_running", "running", ["model_name"], registry=reg).labels("m").set(1)
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    name = f"sd-{i}"
    try:
        ep = add_endpoint(registry, org_id, name, f"http://127.0.0.1:{server.server_address[1]}")

        def targets() -> set[str]:
            data = httpx.get(f"{prom}/api/v1/targets", params={"state": "active"}, timeout=5).json()
            return {t["labels"].get("endpoint", "") for t in data["data"]["activeTargets"]
                    if t["health"] == "up"}
        appeared = seconds_until(lambda: name in targets(), step_s=0.2)
        stop(registry, ep)
        gone = seconds_until(lambda: name not in targets(), step_s=0.2)
        return appeared, gone
    finally:
        server.shutdown()
        server.server_close()


def row(label: str, values: list[float], unit: str, used_to_assert: str) -> tuple[str, ...]:
    shown = [f"{v:.3f}" if v != float("inf") else "timeout" for v in
             (min(values), statistics.median(values), max(values))]
    return (label, unit, *shown, used_to_assert)


def table(rows: list[tuple[str, ...]]) -> str:
    header = ("figure", "unit", "min", "median", "max", "tests used to assert")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-prometheus", action="store_true", help="skip the discovery figures")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ie-bench-propagation-"))
    registry = Registry(f"sqlite:///{tmp / 'registry.db'}")
    registry.init(default_org="default")
    org = registry.get_org_by_name("default")
    assert org is not None
    key = registry.create_key(org.id, "bench").secret
    fake = FakeUpstream(model="fake-model", api_key=BACKEND_KEY)
    upstream = serve_in_thread(fake)
    gateway = run_in_thread(GatewayConfig(db_url=registry.url, base_domain="endpoints.localhost"))
    bench = Bench(registry, org.id, key, fake, upstream, gateway)
    rows = []
    try:
        figures: list[tuple[str, Callable[[int], float], str, str]] = [
            ("status change -> gateway 503", bench.status_change, "s", "< 2.0 s"),
            ("new backend address followed", bench.new_backend, "s", "< 2.0 s"),
            ("revoked key -> gateway 401", bench.key_revoked, "s", "< 2.0 s"),
            ("hang-up -> upstream cancelled", bench.hang_up, "s", "< 2.0 s"),
            ("first SSE event / whole stream", bench.first_event_share, "ratio", "first < 1.0 s of 1.6 s"),
        ]
        for label, measure, unit, old in figures:
            rows.append(row(label, [measure(i) for i in range(args.rounds)], unit, old))
        if not args.no_prometheus and shutil.which(PROMETHEUS):
            rows.extend(_discovery_rows(registry, org.id, tmp, args.rounds))
    finally:
        bench.http.close()
        gateway.stop()
        upstream.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\npropagation, {args.rounds} rounds each (gateway refresh interval "
          f"{GatewayConfig(db_url='sqlite://').refresh_interval_s:g} s)\n")
    print(table(rows))


def _discovery_rows(registry: Registry, org_id: str, tmp: Path, rounds: int) -> list[tuple[str, ...]]:
    app = discovery.create_app()
    app.dependency_overrides[discovery.get_registry] = lambda: registry
    sd = serve_in_thread(app)
    refresh_s = 1.0
    config = render_config(sd.url + discovery.SD_PATH, None, scrape_interval_s=1, sd_refresh_s=refresh_s)
    listen = f"127.0.0.1:{free_port()}"
    log = tmp / "prometheus.log"
    pid = spawn(prometheus_argv(PROMETHEUS, write_config(tmp / "prometheus.yml", config), tmp / "tsdb",
                                listen, "1d"), log, cwd=tmp)
    try:
        wait_until(lambda: ready(f"http://{listen}"), pid, "Prometheus", log, 60)
        measured = [discovery_round(registry, org_id, f"http://{listen}", i) for i in range(rounds)]
    finally:
        stop_group(pid, grace_s=5)
        sd.stop()
    old = f"< {refresh_s + 2 * 5 + 1:.0f} s"
    return [row("new endpoint scraped by Prometheus", [a for a, _ in measured], "s", old),
            row("stopped endpoint dropped", [g for _, g in measured], "s", old)]


if __name__ == "__main__":
    main()
