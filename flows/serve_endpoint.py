"""serve-endpoint: the long-running run on a work pool that owns one vLLM server.

It lives exactly as long as its engine: it starts the engine with the checkpoint
mounted read-only, records the backend address, and supervises. It stops the engine
when its own run is cancelled (read from Prefect every few seconds, so a stop works
even when the worker that launched it is gone), on SIGTERM, or when the engine dies.

A run is either the endpoint's *live* run or a *candidate* brought up next to it for a
rolling replacement. Every status change it makes is guarded by "am I still the live
run?", so a replaced or restarted run can never overwrite its successor's state.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.runtime import flow_run
from prefect.states import Cancelled

from inference_endpoints.engine_logs import failure_summary
from inference_endpoints.health import Probe, probe
from inference_endpoints.metrics.exporter import Exporter, engine_pids, start_exporter
from inference_endpoints.models import Endpoint
from inference_endpoints.registry import Registry
from inference_endpoints.runtime.base import EngineHandle, EngineLabels
from inference_endpoints.runtime.kubernetes import POD_IP_ENV
from inference_endpoints.runtime.process import free_port
from inference_endpoints.serving_config import ServingSpec
from inference_endpoints.status import EndpointStatus, ReasonCode
from inference_endpoints.urls import endpoint_urls
from tasks.context import load_context, load_engine_host
from tasks.engines import runtime_for
from tasks.runs import is_final, run_state

LOADING_PROBE_S = 0.2
HEALTHY_PROBE_S = 5.0
OWN_STATE_EVERY_S = 2.0
FAILED_PROBES_BEFORE_UNHEALTHY = 3


class EngineExited(RuntimeError):
    """The engine process ended on its own; the message carries the root cause and log tail."""


def _publish_artifacts(endpoint: Endpoint, org: str, spec: ServingSpec, url: str) -> None:
    key = f"endpoint-{org}-{endpoint.name}".lower().replace("_", "-")
    create_link_artifact(key=f"{key}-url", link=url, link_text=url,
                         description=f"Stable URL of endpoint {endpoint.name}")
    env = "\n".join(f"- `{k}={v}`" for k, v in sorted(spec.env.items()))
    mounts = "\n".join(f"- `{m.source}` → `{m.target}` (read-only)" for m in spec.mounts)
    create_markdown_artifact(
        key=f"{key}-config",
        markdown=(f"# Serving configuration of `{endpoint.name}`\n\n"
                  f"```\n{spec.command_line()}\n```\n\n## Environment\n{env}\n\n"
                  f"## Mounts\n{mounts}\n"),
        description="Rendered vLLM configuration",
    )
    create_table_artifact(
        key=f"{key}-summary",
        table=[{"field": k, "value": str(v)} for k, v in (
            ("endpoint", endpoint.name), ("organization", org), ("url", url),
            ("model name", spec.served_model_name), ("instance", endpoint.instance),
            ("max context", endpoint.max_context), ("precision", endpoint.precision),
            ("quantization", endpoint.quantization), ("generation", endpoint.generation))],
        description=f"Endpoint {endpoint.name}",
    )


def _mark_cancelled(run_id: str) -> None:
    """Finish our own cancellation: with no worker left to do it, the server would wait 300 s."""
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(run_id), Cancelled(message="endpoint stopped"), force=True)


def _wait_for_assignment(registry: Registry, endpoint_id: str, own_run: str) -> Endpoint | None:
    """The launcher records our run id right after submitting; give it a moment."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        endpoint = registry.get_endpoint(endpoint_id)
        if endpoint is None:
            return None
        if own_run in (endpoint.serve_run_id, endpoint.candidate_run_id):
            return endpoint
        time.sleep(0.2)
    return registry.get_endpoint(endpoint_id)


@flow(name="serve-endpoint", log_prints=True)
def serve_endpoint(endpoint_id: str, generation: int = 0) -> None:
    """Serve one endpoint until it is stopped (or replaced)."""
    logger = get_run_logger()
    ctx = load_context()
    registry = ctx.registry
    own_run = str(flow_run.id)
    endpoint = _wait_for_assignment(registry, endpoint_id, own_run)
    if endpoint is None or EndpointStatus(endpoint.status) in (
        EndpointStatus.STOPPING, EndpointStatus.STOPPED, EndpointStatus.FAILED
    ):
        logger.info("endpoint %s is gone or stopping; nothing to serve", endpoint_id)
        return
    candidate = endpoint.candidate_run_id == own_run
    if not candidate and endpoint.serve_run_id != own_run:
        logger.info("run %s is not (or no longer) the endpoint's run; nothing to serve", own_run)
        return
    config = endpoint.candidate_config_json if candidate else endpoint.serving_config_json
    assert config is not None
    spec = ServingSpec.from_json(config)
    instance = registry.instances()[endpoint.instance]
    host = load_engine_host(instance.work_pool)
    org = registry.get_org(endpoint.org_id)
    org_name = org.name if org else endpoint.org_id
    runtime = runtime_for(registry, endpoint.instance)
    labels = EngineLabels(org_name, endpoint_id, endpoint.name, own_run)
    engine: EngineHandle | None = None
    exporter: Exporter | None = None
    try:
        engine = runtime.start(
            spec,
            sources={m.target: ctx.store.path_of(m.source) for m in spec.mounts},
            host=host.backend_host,
            port=free_port(host.backend_host),
            labels=labels,
            log_path=Path(host.log_dir) / "engines" / f"{endpoint_id}-{own_run[:8]}.log",
        )
        logger.info("%s engine started at %s (%s)", runtime.kind, engine.url,
                    "candidate" if candidate else f"generation {generation}")
        # In a Kubernetes pod the exporter binds the pod's IP, where Prometheus can reach it.
        in_pod = runtime.kind == "sidecar" and os.environ.get(POD_IP_ENV)
        exporter_host = in_pod or host.backend_host
        exporter = start_exporter(labels, engine_pids(engine), exporter_host)
        if candidate:
            registry.update_endpoint(endpoint_id, candidate_backend_url=engine.url)
        else:
            registry.transition(endpoint_id, EndpointStatus.LOADING, expected_run=own_run,
                                fields={"backend_url": engine.url, "exporter_url": exporter.url},
                                message=f"{runtime.kind} engine started on {engine.url}")
            _publish_artifacts(endpoint, org_name, spec, endpoint_urls(endpoint.name, org_name).url)
        _supervise(engine, endpoint_id, own_run, registry, watch_status=not candidate,
                   exporter_url=exporter.url)
    finally:
        if exporter is not None:
            exporter.stop()
        if engine is not None:
            engine.stop()
            logger.info("engine stopped")
        if run_state(own_run) == StateType.CANCELLING:
            # Confirm at once that we are gone; the worker (if any) would take ~5 s more.
            _mark_cancelled(own_run)


def _supervise(engine: EngineHandle, endpoint_id: str, own_run: str, registry: Registry,
               *, watch_status: bool, exporter_url: str) -> None:
    """Watch the engine, our own run state and health until one says stop.

    A candidate starts watching the endpoint's status once it has been promoted to live.
    """
    logger = get_run_logger()
    healthy = False
    failed_probes = 0
    now = time.monotonic()
    next_state_check = now + OWN_STATE_EVERY_S
    next_probe = now
    while True:
        code = engine.exit_code()
        if code is not None:
            summary = failure_summary(code, engine.tail(400))
            if watch_status:
                _engine_exited(registry, endpoint_id, own_run, summary)
            raise EngineExited(summary)
        now = time.monotonic()
        if now >= next_state_check:
            next_state_check = now + OWN_STATE_EVERY_S
            state = run_state(own_run)
            if state == StateType.CANCELLING or is_final(state):
                logger.info("run is %s: stopping the engine", state)
                return
            if not watch_status and _promoted(registry, endpoint_id, own_run, exporter_url):
                watch_status = True
                logger.info("promoted: this run now serves the endpoint")
        if now >= next_probe:
            result = probe(engine.url, timeout_s=2.0)
            next_probe = now + (HEALTHY_PROBE_S if healthy else LOADING_PROBE_S)
            if result == Probe.HEALTHY:
                failed_probes = 0
                if not healthy:
                    healthy = True
                    logger.info("engine answers /health")
                    if watch_status:
                        registry.transition(endpoint_id, EndpointStatus.HEALTHY, expected_run=own_run,
                                            message="engine answers /health")
            elif healthy:
                failed_probes += 1
                if failed_probes == FAILED_PROBES_BEFORE_UNHEALTHY and watch_status:
                    healthy = False
                    registry.transition(endpoint_id, EndpointStatus.UNHEALTHY, expected_run=own_run,
                                        reason=ReasonCode.HEALTH_CHECK_FAILED,
                                        message=f"/health failed {failed_probes} times in a row")
        time.sleep(LOADING_PROBE_S)


def _promoted(registry: Registry, endpoint_id: str, own_run: str, exporter_url: str) -> bool:
    endpoint = registry.get_endpoint(endpoint_id)
    if endpoint is None or endpoint.serve_run_id != own_run:
        return False
    registry.update_endpoint(endpoint_id, exporter_url=exporter_url)
    return True


def _engine_exited(registry: Registry, endpoint_id: str, own_run: str, summary: str) -> None:
    """A first start that dies is a failure; a crash after serving is for self-healing to restart."""
    endpoint = registry.get_endpoint(endpoint_id)
    if endpoint is None:
        return
    target = EndpointStatus.UNHEALTHY if endpoint.healthy_at else EndpointStatus.FAILED
    registry.transition(endpoint_id, target, reason=ReasonCode.ENGINE_EXITED, message=summary,
                        expected_run=own_run)
