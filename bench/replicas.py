"""Benchmark: one endpoint on 1 vs 2 replicas under the same concurrent load, through its stable URL.

One command (from the repository root, after setup):

    .venv/bin/python -m bench.replicas [--clients 8] [--seconds 30] [--max-tokens 32]

It starts its own Prefect server, worker and gateway in a temporary data directory, creates
the demo endpoint with one replica, runs `--clients` closed-loop callers for `--seconds`,
scales it to two replicas (as `endpoints scale` does), runs the same load again, and prints
throughput and p50/p99 latency for both with the single-replica figures as the baseline.
On a 2-core machine two CPU engines share the same cores, so the ratio says what the
routing costs or gains here, not what two GPUs would give.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.serve_startup import _configure_env, _free_port

NAME = "bench-replicas"


def load(url: str, key: str, clients: int, seconds: float, max_tokens: int) -> tuple[list[float], int]:
    """Closed-loop callers; returns each successful request's latency and the error count."""
    import httpx

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def caller() -> None:
        with httpx.Client(timeout=300) as client:
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    r = client.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                                    json={"model": NAME, "prompt": "Once upon a time",
                                          "max_tokens": max_tokens, "ignore_eos": True})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    if ok:
                        latencies.append(time.monotonic() - started)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=caller) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0]


def _pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) >= 2 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--max-tokens", type=int, default=32)
    opts = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="ie-bench-replicas-"))
    _configure_env(data_dir)
    os.environ["IE_GATEWAY_PORT"] = str(_free_port())

    from rich.console import Console
    from rich.table import Table

    from deployments.apply import apply_all
    from flows.create_endpoint import create_endpoint
    from flows.stop_endpoint import stop_endpoint
    from inference_endpoints.core.status import Precision
    from inference_endpoints.localstack.demo import default_demo_dir, make_demo
    from inference_endpoints.localstack.stack import LocalStack, engine_python_default
    from inference_endpoints.persistence.registry import Registry
    from inference_endpoints.persistence.store import LocalCheckpointStore
    from inference_endpoints.services.import_roots import SourcePolicy
    from inference_endpoints.services.operations import register_checkpoint
    from inference_endpoints.settings import Settings
    from tasks.orchestration import reconcile_now

    console = Console()
    settings = Settings()
    stack = LocalStack(settings)
    registry = Registry(settings.db_url)
    registry.init(default_org="default")
    org = registry.get_org_by_name("default")
    assert org is not None
    rows: list[tuple[int, list[float], int]] = []
    try:
        stack.start_prefect()
        apply_all(settings, engine_python_default(), stack.env())
        stack.start_worker("cpu-dev")
        stack.start_gateway()
        key = registry.create_key(org.id, "bench").secret
        demo = make_demo(default_demo_dir())
        register_checkpoint(registry, LocalCheckpointStore(settings.store_root), org.id, demo.full,
                            "demo-tiny-llama", sources=SourcePolicy.from_settings(settings))
        create_endpoint(name=NAME, checkpoint="demo-tiny-llama", instance="cpu-dev", max_context=1024,
                        precision=Precision.FLOAT32)
        ep = registry.find_endpoint(org.id, NAME)
        assert ep is not None and ep.status == "healthy", ep
        url = f"{stack.gateway_url}/e/{org.name}/{NAME}"
        load(url, key, 2, 5, opts.max_tokens)  # warm-up
        for replicas in (1, 2):
            if replicas == 2:
                assert registry.runs.scale(ep.id, 2, 2)
                reconcile_now(registry, [ep.id], log=lambda _line: None)
                deadline = time.monotonic() + 600
                while len(json.loads(registry.get_endpoint(ep.id).backend_urls or "[]")) < 2:  # type: ignore[union-attr]
                    assert time.monotonic() < deadline, "the second replica did not become ready"
                    time.sleep(1)
                time.sleep(2)  # the gateway's table follows within a refresh
                load(url, key, 2, 5, opts.max_tokens)  # warm the second engine too
            latencies, errors = load(url, key, opts.clients, opts.seconds, opts.max_tokens)
            rows.append((replicas, latencies, errors))
            console.print(f"{replicas} replica(s): {len(latencies)} requests, {errors} errors")
        stop_endpoint(endpoint=NAME)
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)

    table = Table("replicas", "requests", "errors", "throughput (req/s)", "vs 1 replica", "p50 (s)",
                  "p99 (s)", title=f"{opts.clients} concurrent callers, {opts.seconds:.0f} s, "
                                   f"{opts.max_tokens} tokens each, through the stable URL")
    base = len(rows[0][1]) / opts.seconds
    for replicas, latencies, errors in rows:
        rate = len(latencies) / opts.seconds
        table.add_row(str(replicas), str(len(latencies)), str(errors), f"{rate:.2f}", f"{rate / base:.2f}",
                      f"{statistics.median(latencies):.2f}", f"{_pct(latencies, 99):.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
