"""The local Prometheus server: its rendered configuration, and starting/stopping it by PID.

Nothing is written per endpoint: one `http_sd_configs` job asks the control plane
which engines and exporters exist (see discovery.py), one static job scrapes the
gateway with its admin token (read from a 0600 file next to the config). Retention
is a command-line flag (`IE_PROMETHEUS_RETENTION`, default 15d).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from inference_endpoints.adapters.metrics.config import MetricsConfig
from inference_endpoints.adapters.processes import spawn, stop_group, wait_until
from inference_endpoints.settings import Settings, gateway_admin_token

SD_JOB = "endpoints"  # targets carry their own job label: "vllm" or "accelerator"
GATEWAY_JOB = "gateway"
INSTALL_HINT = "install it with `apt-get install -y --no-install-recommends prometheus`"
# prometheus_client >= 0.2x (vLLM's /metrics) rewrites `vllm:` to `vllm_` in sample names when
# Prometheus negotiates OpenMetrics (prometheus/client_python#1177), but keeps the colon in the
# text format. Rename back, so stored names are vLLM's documented ones whatever was negotiated,
# and drop the OpenMetrics-only `_created` series.
VLLM_NAME_RELABEL: list[dict[str, Any]] = [
    {"source_labels": ["__name__"], "regex": "vllm_(.+)", "target_label": "__name__",
     "replacement": "vllm:$1"},
    {"source_labels": ["__name__"], "regex": "vllm:.+_created", "action": "drop"},
]


def duration(seconds: float) -> str:
    """Prometheus duration syntax: whole seconds as `5s`, otherwise milliseconds."""
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{round(seconds * 1000)}ms"


def host_port(url: str) -> tuple[str, str, str]:
    """(scheme, host:port, path) of a URL given with or without a scheme."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.scheme or "http", parts.netloc, parts.path


def render_config(discovery_url: str, gateway_url: str | None, *, scrape_interval_s: float = 5.0,
                  sd_refresh_s: float = 5.0, gateway_token_file: Path | None = None
                  ) -> dict[str, Any]:
    """The whole prometheus.yml as a dict (dumped to YAML by `write_config`).

    `gateway_token_file`: the gateway's admin token, which its /metrics requires.
    """
    interval = duration(scrape_interval_s)
    jobs: list[dict[str, Any]] = [{
        "job_name": SD_JOB,
        "http_sd_configs": [{"url": discovery_url, "refresh_interval": duration(sd_refresh_s)}],
        "metric_relabel_configs": VLLM_NAME_RELABEL,
    }]
    if gateway_url:
        scheme, target, _ = host_port(gateway_url)
        job: dict[str, Any] = {"job_name": GATEWAY_JOB, "scheme": scheme, "metrics_path": "/metrics",
                               "static_configs": [{"targets": [target]}]}
        if gateway_token_file is not None:
            job["authorization"] = {"type": "Bearer", "credentials_file": str(gateway_token_file)}
        jobs.append(job)
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval,
                   "evaluation_interval": interval},
        "scrape_configs": jobs,
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Rendered by inference_endpoints.adapters.metrics.prometheus; edits are overwritten.\n"
                    + yaml.safe_dump(config, sort_keys=False))
    return path


def write_gateway_token(home: Path, settings: Settings) -> Path:
    """The gateway's admin token in `home/gateway-admin-token` (0600), for `credentials_file`."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "gateway-admin-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(gateway_admin_token(settings) + "\n")
    return path


def prometheus_argv(binary: str, config_path: Path, tsdb_path: Path, listen: str,
                    retention: str) -> list[str]:
    return [binary, f"--config.file={config_path}", f"--storage.tsdb.path={tsdb_path}",
            f"--storage.tsdb.retention.time={retention}", f"--web.listen-address={listen}",
            "--log.level=info"]


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def start_prometheus(settings: Settings, discovery_url: str, gateway_url: str | None, *,
                     config: MetricsConfig | None = None, timeout_s: float = 60.0) -> tuple[int, str]:
    """Render the config, start Prometheus in its own session, wait until ready: (pid, url).

    Data lives under `<data_dir>/prometheus`, the log in `<log_dir>/prometheus.log`.
    """
    cfg = config or MetricsConfig()
    binary = shutil.which(cfg.prometheus_bin)
    if binary is None:
        raise FileNotFoundError(f"Prometheus not found at {cfg.prometheus_bin}: {INSTALL_HINT}")
    if not _port_free(cfg.prometheus_host, cfg.prometheus_port):
        raise RuntimeError(f"port {cfg.prometheus_port} on {cfg.prometheus_host} is taken; "
                           "set IE_PROMETHEUS_PORT to a free one")
    home = settings.data_dir / "prometheus"
    config_path = write_config(home / "prometheus.yml", render_config(
        discovery_url, gateway_url, scrape_interval_s=cfg.scrape_interval_s,
        sd_refresh_s=cfg.sd_refresh_interval_s,
        gateway_token_file=write_gateway_token(home, settings) if gateway_url else None))
    listen = f"{cfg.prometheus_host}:{cfg.prometheus_port}"
    url = f"http://{listen}"
    log_path = settings.log_dir / "prometheus.log"
    pid = spawn(prometheus_argv(binary, config_path, home / "tsdb", listen, cfg.prometheus_retention),
                log_path, cwd=home)
    wait_until(lambda: ready(url), pid, "Prometheus", log_path, timeout_s)
    return pid, url


def stop_prometheus(pid: int | None, grace_s: float = 10.0) -> None:
    """SIGTERM (Prometheus flushes its head block), SIGKILL after `grace_s`."""
    stop_group(pid, grace_s)
