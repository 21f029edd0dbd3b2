"""Benchmark: create request → healthy through the stack vs. a bare vLLM start, and stop time.

One command (from the repository root, after setup):

    .venv/bin/python -m bench.serve_startup [--rounds 2]

It starts its own Prefect server and worker in a temporary data directory, serves the demo
checkpoint with identical engine flags both ways, alternating which of bare and orchestrated
goes first in each round so both see the same machine load, after one untimed bare start that
warms the page cache (the first vLLM start after an install reads ~1 GB of Python from disk),
and prints a table. Targets (issue 3): orchestration adds at
most 3 s (ratio <= 1.1), stop request → all processes gone <= 5 s.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _configure_env(data_dir: Path) -> None:
    os.environ["IE_DATA_DIR"] = str(data_dir)
    port = _free_port()
    os.environ["IE_PREFECT_PORT"] = str(port)
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    os.environ["PREFECT_HOME"] = str(data_dir / "prefect")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    os.environ["PREFECT_API_AUTH_STRING"] = f"ie:{secrets.token_urlsafe(16)}"  # the server requires it


def _wait_health(url: str, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def _group_gone(proc: subprocess.Popen[bytes]) -> bool:
    """True once the leader is reaped and no process is left in its group."""
    import psutil

    if proc.poll() is None:
        return False
    for other in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(other.pid) == proc.pid:
                return False
        except ProcessLookupError:
            continue
    return True


def bare_run(engine_python: str, model_dir: Path, args: list[str], log: Path) -> tuple[float, float]:
    """Start vLLM directly with the same flags; return (seconds to healthy, seconds to stop)."""
    port = _free_port()
    cmd = [engine_python, "-m", "vllm.entrypoints.openai.api_server", *args,
           "--host", "127.0.0.1", "--port", str(port)]
    idx = cmd.index("--model")
    cmd[idx + 1] = str(model_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_NO_USAGE_STATS": "1"}
    started = time.monotonic()
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                process_group=0)
    _wait_health(f"http://127.0.0.1:{port}")
    healthy = time.monotonic() - started
    stop_started = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    while not _group_gone(proc):
        time.sleep(0.02)
    return healthy, time.monotonic() - stop_started


def _demo_args(registry: Any, org_id: str, create: Any, stop: Any) -> list[str]:
    """The engine arguments the stack renders for the demo (one untimed create, then stop)."""
    from inference_endpoints.core.serving_config import ServingSpec
    from inference_endpoints.core.status import Precision

    create(name="bench-args", checkpoint="demo-tiny-llama", instance="cpu-dev", max_context=1024,
           precision=Precision.FLOAT32)
    ep = registry.find_endpoint(org_id, "bench-args")
    assert ep is not None and ep.serving_config_json
    stop(endpoint="bench-args")
    return list(ServingSpec.from_json(ep.serving_config_json).args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the data directory (logs) afterwards")
    opts = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="ie-bench-"))
    _configure_env(data_dir)

    from rich.console import Console
    from rich.table import Table

    from deployments.apply import apply_all
    from inference_endpoints.core.status import Precision
    from inference_endpoints.localstack.demo import default_demo_dir, make_demo
    from inference_endpoints.localstack.stack import LocalStack, engine_python_default
    from inference_endpoints.persistence.registry import Registry
    from inference_endpoints.persistence.store import LocalCheckpointStore
    from inference_endpoints.services.import_roots import SourcePolicy
    from inference_endpoints.services.operations import register_checkpoint
    from inference_endpoints.settings import Settings
    from tests.e2e.engine_tools import alive, process_tree

    console = Console()
    settings = Settings()
    stack = LocalStack(settings)
    registry = Registry(settings.db_url)
    registry.init(default_org="default")
    org = registry.get_org_by_name("default")
    assert org is not None
    bare_healthy: list[float] = []
    bare_stop: list[float] = []
    stack_healthy: list[float] = []
    stack_stop: list[float] = []
    try:
        stack.start_prefect()
        apply_all(settings, engine_python_default(), stack.env())
        stack.start_worker("cpu-dev")
        demo = make_demo(default_demo_dir())
        register_checkpoint(registry, LocalCheckpointStore(settings.store_root), org.id, demo.full,
                            "demo-tiny-llama", sources=SourcePolicy.from_settings(settings))
        from flows.create_endpoint import create_endpoint
        from flows.stop_endpoint import stop_endpoint

        spec_args = _demo_args(registry, org.id, create_endpoint, stop_endpoint)
        bare_run(engine_python_default(), demo.full, spec_args, settings.log_dir / "bare.log")  # warm-up

        def bare() -> None:
            healthy, stop = bare_run(engine_python_default(), demo.full, spec_args,
                                     settings.log_dir / "bare.log")
            bare_healthy.append(healthy)
            bare_stop.append(stop)

        for i in range(opts.rounds):
            if i % 2:
                bare()
            name = f"bench-{i}"
            started = time.monotonic()
            create_endpoint(name=name, checkpoint="demo-tiny-llama", instance="cpu-dev",
                            max_context=1024, precision=Precision.FLOAT32)
            stack_healthy.append(time.monotonic() - started)
            ep = registry.find_endpoint(org.id, name)
            assert ep is not None and ep.status == "healthy" and ep.backend_url
            from tests.e2e.engine_tools import backend_port, listener_pid

            pids = process_tree(listener_pid(backend_port(ep.backend_url)) or 0)
            started = time.monotonic()
            stop_endpoint(endpoint=name)
            while alive(pids):
                time.sleep(0.02)
            stack_stop.append(time.monotonic() - started)
            if not i % 2:
                bare()
            console.print(f"round {i + 1} ({'bare' if i % 2 else 'stack'} first): "
                          f"stack {stack_healthy[-1]:.1f} s, bare {bare_healthy[-1]:.1f} s")
    finally:
        stack.stop()
        if opts.keep:
            console.print(f"data directory kept: {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    table = Table("measure", "bare vLLM", "through the stack", "difference", "ratio", "target",
                  title=f"serve startup and stop (median of {opts.rounds})")
    diff = med(stack_healthy) - med(bare_healthy)
    table.add_row("request → healthy (s)", f"{med(bare_healthy):.1f}", f"{med(stack_healthy):.1f}",
                  f"{diff:+.1f}", f"{med(stack_healthy) / med(bare_healthy):.2f}", "≤ +3 s, ≤ 1.10")
    table.add_row("stop → processes gone (s)", f"{med(bare_stop):.1f}", f"{med(stack_stop):.1f}",
                  f"{med(stack_stop) - med(bare_stop):+.1f}", "", "≤ 5 s")
    console.print(table)


if __name__ == "__main__":
    main()
