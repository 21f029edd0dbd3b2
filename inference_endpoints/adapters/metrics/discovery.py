"""Prometheus HTTP service discovery: which engines and exporters to scrape, from the registry.

`target_groups` is pure (registry rows in, target groups out). `router` serves it at
`/sd/targets` and mounts into the console app; `python -m inference_endpoints.adapters.metrics.discovery`
serves it alone (loopback, `IE_DISCOVERY_PORT`), so Prometheus can discover targets
before the console exists. Prometheus keeps its last good target list when this
answers an error, so a registry hiccup never empties the scrape targets.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from sqlalchemy.exc import SQLAlchemyError

from inference_endpoints.adapters.metrics.config import MetricsConfig
from inference_endpoints.adapters.metrics.prometheus import host_port
from inference_endpoints.adapters.processes import spawn, stop_group, wait_until
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.persistence.models import Endpoint
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.settings import Settings

VLLM_JOB = "vllm"
ACCELERATOR_JOB = "accelerator"
SD_PATH = "/sd/targets"
LOOPBACK = ("127.", "::1", "localhost")

TargetGroup = dict[str, Any]


def _group(url: str, job: str, labels: Mapping[str, str]) -> TargetGroup:
    scheme, target, path = host_port(url)
    path = path.rstrip("/")
    metrics_path = path if path.endswith("/metrics") else f"{path}/metrics"
    return {"targets": [target],
            "labels": {"job": job, **labels, "__scheme__": scheme, "__metrics_path__": metrics_path}}


@dataclass(frozen=True)
class RunTarget:
    """Another engine of an endpoint: a replacement candidate or a replica (its own exporter)."""

    engine_url: str
    exporter_url: str | None = None
    replica: int = 0


def target_groups(endpoints: Iterable[Endpoint], org_names: Mapping[str, str],
                  others: Mapping[str, Sequence[RunTarget]] | None = None) -> list[TargetGroup]:
    """One group per scrape target of every endpoint that is not stopped or failed.

    Every engine (live, a rolling replacement's candidate, each replica) → job "vllm"; each
    serve run's accelerator exporter → job "accelerator". Each carries org, endpoint and
    endpoint_id labels, which the queries select on, and `replica` (the live run's slot is 0),
    so a chart can show one replica.
    """
    groups: list[TargetGroup] = []
    for ep in sorted(endpoints, key=lambda e: (e.org_id, e.name, e.id)):
        if EndpointStatus(ep.status).is_terminal:
            continue
        labels = {"org": org_names.get(ep.org_id, ep.org_id), "endpoint": ep.name,
                  "endpoint_id": ep.id}
        runs = [RunTarget(ep.backend_url or "", ep.exporter_url, 0), *(others or {}).get(ep.id, ())]
        for job, urls in ((VLLM_JOB, [(r.engine_url, r) for r in runs]),
                          (ACCELERATOR_JOB, [(r.exporter_url, r) for r in runs])):
            seen: set[str] = set()
            for url, run in urls:
                if url and url not in seen:  # the live run is listed twice (endpoint and run)
                    seen.add(url)
                    groups.append(_group(url, job, {**labels, "replica": str(run.replica)}))
    return groups


def registry_targets(registry: Registry) -> list[TargetGroup]:
    endpoints = registry.active_endpoints()
    names: dict[str, str] = {}
    for org_id in {ep.org_id for ep in endpoints}:
        org = registry.get_org(org_id)
        names[org_id] = org.name if org else org_id
    others: dict[str, list[RunTarget]] = {}
    active = {ep.id for ep in endpoints}
    for run in sorted(registry.runs.running(), key=lambda r: (r.replica, r.generation)):
        if run.endpoint_id in active and run.backend_url:  # the live run is the endpoint's own
            others.setdefault(run.endpoint_id, []).append(
                RunTarget(run.backend_url, run.exporter_url, run.replica))
    return target_groups(endpoints, names, others)


# ---- HTTP ------------------------------------------------------------------------------------

def get_registry() -> Registry:
    """Overridable dependency (the console passes its own registry via dependency_overrides)."""
    return Registry(Settings().db_url)


def get_metrics_config() -> MetricsConfig:
    return MetricsConfig()


router = APIRouter(tags=["metrics"])


@router.get(SD_PATH)
def sd_targets(request: Request, registry: Annotated[Registry, Depends(get_registry)],
               config: Annotated[MetricsConfig, Depends(get_metrics_config)]) -> list[TargetGroup]:
    """The list lists every org's backends: loopback callers only, unless configured otherwise."""
    client = request.client.host if request.client else ""
    if config.discovery_loopback_only and client and not client.startswith(LOOPBACK):
        raise HTTPException(403, "service discovery answers loopback callers only")
    try:
        return registry_targets(registry)
    except SQLAlchemyError as exc:  # Prometheus keeps its last good list on an error
        raise HTTPException(503, f"registry unavailable: {type(exc).__name__}") from exc


def create_app() -> FastAPI:
    app = FastAPI(title="Inference Endpoints service discovery", docs_url=None, redoc_url=None)
    app.include_router(router)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def start_discovery(settings: Settings, *, config: MetricsConfig | None = None,
                    env: Mapping[str, str] | None = None, timeout_s: float = 30.0) -> tuple[int, str]:
    """Run the standalone discovery server in its own session: (pid, its /sd/targets URL)."""
    cfg = config or MetricsConfig()
    log_path = settings.log_dir / "discovery.log"
    pid = spawn([sys.executable, "-m", "inference_endpoints.adapters.metrics.discovery",
                 "--host", cfg.discovery_host, "--port", str(cfg.discovery_port)], log_path, env)
    base = f"http://{cfg.discovery_host}:{cfg.discovery_port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, pid, "service discovery", log_path, timeout_s)
    return pid, f"{base}{SD_PATH}"


def stop_discovery(pid: int | None) -> None:
    stop_group(pid, grace_s=5.0)


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    cfg = MetricsConfig()
    parser = argparse.ArgumentParser(description="Prometheus HTTP service discovery")
    parser.add_argument("--host", default=cfg.discovery_host)
    parser.add_argument("--port", type=int, default=cfg.discovery_port)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
