"""A real Prometheus for tests: a free port, a temporary data dir, stopped by PID.

Data can be preloaded with `promtool tsdb create-blocks-from openmetrics` (exact
samples at known timestamps, so queries can be checked number by number).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from inference_endpoints.adapters.metrics.prometheus import prometheus_argv, ready, write_config
from inference_endpoints.adapters.processes import spawn, stop_group, wait_until

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
MISSING = "Prometheus is not installed: apt-get install -y --no-install-recommends prometheus"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def backfill(openmetrics: str, tsdb: Path) -> None:
    assert shutil.which(PROMTOOL), MISSING
    tsdb.mkdir(parents=True, exist_ok=True)
    source = tsdb.parent / "backfill.om"
    source.write_text(openmetrics)
    subprocess.run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(source), str(tsdb)],
                   check=True, capture_output=True, timeout=120)


@contextmanager
def running_prometheus(home: Path, config: dict[str, Any], openmetrics: str | None = None
                       ) -> Iterator[str]:
    """Start Prometheus on a free loopback port; yields its URL; stops it by PID."""
    assert shutil.which(PROMETHEUS), MISSING
    tsdb = home / "tsdb"
    if openmetrics is not None:
        backfill(openmetrics, tsdb)
    config_path = write_config(home / "prometheus.yml", config)
    listen = f"127.0.0.1:{free_port()}"
    url = f"http://{listen}"
    log = home / "prometheus.log"
    pid = spawn(prometheus_argv(PROMETHEUS, config_path, tsdb, listen, "30d"), log, cwd=home)
    try:
        wait_until(lambda: ready(url), pid, "Prometheus", log, 60)
        yield url
    finally:
        stop_group(pid, grace_s=5)


def active_targets(url: str) -> list[dict[str, Any]]:
    data = httpx.get(f"{url}/api/v1/targets", params={"state": "active"}, timeout=5).json()
    return list(data["data"]["activeTargets"])


def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.2) -> float:
    """Seconds until `predicate()` held; AssertionError after `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s:.0f} s")
