"""serve-endpoint: the long-running run on a work pool that owns one vLLM server.

It starts the engine with the checkpoint mounted read-only and reports facts about it
to its `serve_runs` record: engine started, ready (after `/health` *and* a first-token
probe), a heartbeat every few seconds, probe failures, and finally how it ended. It
never decides the endpoint's status; `core.lifecycle.derive` does.

The data plane does not depend on the control plane: a call to Prefect or the registry
that fails is logged and retried, and the engine keeps serving. The engine stops only
on positive evidence — its record asks it to stop (stop, replacement, give-up), its own
Prefect run is `Cancelling`/`Cancelled`, or the engine itself exited. A `Crashed` that
Prefect's heartbeat automation wrote while the server was unreachable is answered by
putting the run back to `Running`, not by stopping.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.runtime import flow_run
from prefect.states import Cancelled, Running

from inference_endpoints.adapters.health import Probe, first_token, in_flight, probe
from inference_endpoints.adapters.metrics.exporter import Exporter, engine_pids, start_exporter
from inference_endpoints.adapters.runtime.base import EngineHandle, EngineLabels
from inference_endpoints.adapters.runtime.kubernetes import exporter_address
from inference_endpoints.adapters.runtime.process import free_port
from inference_endpoints.core.engine_logs import failure_summary
from inference_endpoints.core.lifecycle import FAILED_PROBES_BEFORE_UNHEALTHY, Desired, Role
from inference_endpoints.core.serving_config import ServingSpec
from inference_endpoints.core.status import ReasonCode
from inference_endpoints.persistence.models import ServeRun, utcnow
from inference_endpoints.persistence.registry import Registry
from tasks.context import load_context, load_engine_host
from tasks.engines import runtime_for
from tasks.serve_artifacts import publish_artifacts

LOADING_PROBE_S = 0.2
HEALTHY_PROBE_S = 5.0
EVIDENCE_EVERY_S = 2.0  # read our own record and Prefect state this often
HEARTBEAT_S = 5.0
FIRST_TOKEN_RETRY_S = 1.0
# A replaced run drains before its engine stops: at least long enough for every gateway to
# route to its successor (their tables refresh every 0.5 s), then until nothing is in flight.
DRAIN_MIN_S = 5.0
DRAIN_MAX_S = 30.0
log = logging.getLogger(__name__)


@dataclass
class Ending:
    reason: ReasonCode
    message: str
    exit_code: int | None = None


class Reporter:
    """Facts for our record, sent as absolute values so a failed write is simply sent again."""

    def __init__(self, registry: Registry, run_id: str):
        self.registry, self.run_id = registry, run_id
        self.pending: dict[str, Any] = {}
        self.failing_since: float | None = None

    def send(self, **facts: Any) -> None:
        self.pending.update(facts)
        self.flush()

    def flush(self) -> bool:
        if not self.pending:
            return True
        try:
            self.registry.runs.report(self.run_id, **self.pending)
        except Exception as exc:  # registry unreachable: keep serving, send again later
            if self.failing_since is None:
                self.failing_since = time.monotonic()
                log.warning("cannot write serve-run facts (%s); the engine keeps serving", exc)
            return False
        if self.failing_since is not None:
            log.warning("registry reachable again after %.0f s", time.monotonic() - self.failing_since)
            self.failing_since = None
        self.pending.clear()
        return True


class OwnState:
    """Our Prefect state, read in a thread of its own so a slow or dead Prefect never stalls
    the supervision loop (the client retries a refused connection for many seconds)."""

    def __init__(self, run_id: str, every_s: float = EVIDENCE_EVERY_S):
        self.run_id, self.every_s = run_id, every_s
        self.latest: StateType | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="own-state", daemon=True)

    def __enter__(self) -> OwnState:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            state = _own_state(self.run_id)
            if state in (StateType.CRASHED, StateType.FAILED, StateType.COMPLETED):
                # Written while we were alive (e.g. by the heartbeat automation after an outage).
                log.warning("Prefect says this live run is %s; putting it back to Running", state.value)
                _set_own_state(self.run_id, Running(message="serve run is alive and serving"))
                continue
            if state is not None:
                self.latest = state


def _own_state(run_id: str) -> StateType | None:
    """Our Prefect state; None if Prefect cannot be asked (that is no reason to stop)."""
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(run_id)).state
        return state.type if state is not None else None
    except Exception as exc:
        log.warning("cannot read our own run state (%s); the engine keeps serving", exc)
        return None


def _set_own_state(run_id: str, state: Any) -> None:
    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(UUID(run_id), state, force=True)
    except Exception as exc:
        log.warning("could not set our own run state (%s)", exc)


def _stop_asked(registry: Registry, run_id: str) -> bool | None:
    try:
        row = registry.runs.get(run_id)
    except Exception as exc:
        log.warning("cannot read our record (%s); the engine keeps serving", exc)
        return None
    return row is None or row.stop_requested_at is not None


def _evidence_to_stop(registry: Registry, run: ServeRun, own: OwnState) -> Ending | None:
    if _stop_asked(registry, run.id):
        return Ending(ReasonCode.STOPPED_BY_USER, "stop requested in the registry")
    if own.latest in (StateType.CANCELLING, StateType.CANCELLED):
        return Ending(ReasonCode.STOPPED_BY_USER, f"the serve run is {own.latest.value} in Prefect")
    return None


def _replaced(registry: Registry, run: ServeRun) -> bool:
    """Another run took over the stable URL (a rolling replacement), or this replica leaves
    while the endpoint keeps serving: the engine may still hold requests the gateway sent it."""
    try:
        endpoint = registry.get_endpoint(run.endpoint_id)
        row = registry.runs.get(run.id)
    except Exception:  # cannot tell: stop at once, as before
        return False
    if endpoint is None or row is None or row.ready_at is None or endpoint.desired != Desired.SERVING:
        return False
    if row.role == Role.REPLICA.value:  # scaled down or superseded while the endpoint serves on
        return True
    return row.role == Role.LIVE.value and endpoint.live_run not in (None, run.id)


def _drain(engine: EngineHandle, own: OwnState) -> None:
    """Wait out the gateways' switch, then the engine's in-flight requests (bounded)."""
    logger = get_run_logger()
    started = time.monotonic()
    while (waited := time.monotonic() - started) < DRAIN_MAX_S:
        if engine.exit_code() is not None or own.latest == StateType.CANCELLED:
            return
        if waited >= DRAIN_MIN_S and not in_flight(engine.url):
            logger.info("drained in %.1f s: nothing in flight", waited)
            return
        time.sleep(0.5)
    logger.warning("drain ended after %.0f s with requests still in flight", DRAIN_MAX_S)


def _supervise(engine: EngineHandle, spec: ServingSpec, run: ServeRun, own: OwnState,
               registry: Registry, reporter: Reporter) -> Ending:
    """Watch the engine, the evidence and health until one of them says stop."""
    logger = get_run_logger()
    ready = False
    failures = 0
    now = time.monotonic()
    next_evidence, next_probe, next_beat = now + EVIDENCE_EVERY_S, now, now + HEARTBEAT_S
    while True:
        code = engine.exit_code()
        if code is not None:
            return Ending(ReasonCode.ENGINE_EXITED, failure_summary(code, engine.tail(400)), code)
        now = time.monotonic()
        if now >= next_evidence:
            next_evidence = now + EVIDENCE_EVERY_S
            ending = _evidence_to_stop(registry, run, own)
            if ending is not None:
                if _replaced(registry, run):
                    _drain(engine, own)
                logger.info("stopping the engine: %s", ending.message)
                return ending
        if now >= next_probe:
            healthy = probe(engine.url, timeout_s=2.0) == Probe.HEALTHY
            if not ready:
                next_probe = now + LOADING_PROBE_S
                if healthy:
                    why = first_token(engine.url, spec.api_key, spec.served_model_name)
                    if why is None:
                        ready = True
                        logger.info("engine answers /health and generated its first token")
                        reporter.send(ready_at=utcnow(), last_seen_at=utcnow(), not_ready_message=None)
                    else:
                        next_probe = now + FIRST_TOKEN_RETRY_S
                        reporter.send(not_ready_message=why, last_seen_at=utcnow())
            else:
                next_probe = now + HEALTHY_PROBE_S
                failures = 0 if healthy else failures + 1
                if not healthy and failures <= FAILED_PROBES_BEFORE_UNHEALTHY:
                    reporter.send(probe_failures=failures, last_seen_at=utcnow(),
                                  not_ready_message=f"/health failed {failures} time(s) in a row")
                elif healthy and reporter.pending.get("probe_failures", 0):
                    reporter.send(probe_failures=0, not_ready_message=None)
        if now >= next_beat:
            next_beat = now + HEARTBEAT_S
            reporter.send(last_seen_at=utcnow())
        reporter.flush()
        time.sleep(LOADING_PROBE_S)


def _record_end(registry: Registry, run_id: str, ending: Ending, attempts: int = 30) -> None:
    """Say how we ended; retried, since the reconciler would otherwise wait for quiet."""
    for _ in range(attempts):
        try:
            registry.runs.ended(run_id, ending.reason, ending.message, ending.exit_code)
            return
        except Exception as exc:
            log.warning("cannot record the end of this run yet (%s)", exc)
            time.sleep(2)


def _kick_reconcile(registry: Registry, endpoint_id: str) -> None:
    """An engine died: let the one reconciler decide now (restart?) instead of at its next tick."""
    from tasks.orchestration import reconcile_now

    try:
        reconcile_now(registry, [endpoint_id], log=get_run_logger().info)
    except Exception as exc:  # the scheduled pass will do it
        get_run_logger().warning("reconcile after the engine's exit deferred: %s", exc)


@flow(name="serve-endpoint", log_prints=True)
def serve_endpoint(endpoint_id: str, generation: int = 0, serve_run: str | None = None) -> None:
    """Serve one endpoint's engine until there is evidence it should stop."""
    logger = get_run_logger()
    ctx = load_context()
    registry = ctx.registry
    own_flow_run = str(flow_run.id)
    run = registry.runs.get(serve_run) if serve_run else registry.runs.by_flow_run(own_flow_run)
    endpoint = registry.get_endpoint(endpoint_id)
    if run is None or endpoint is None or run.ended_at is not None or run.stop_requested_at is not None:
        logger.info("serve run %s is not (or no longer) wanted; nothing to serve", serve_run)
        if run is not None and run.ended_at is None:
            registry.runs.ended(run.id, ReasonCode.STOPPED_BY_USER, "stopped before its engine started")
        return
    spec = ServingSpec.from_json(run.serving_config_json)
    instance_name = run.instance or endpoint.instance  # an update's candidate may move elsewhere
    instance = registry.instances()[instance_name]
    host = load_engine_host(instance.work_pool)
    org = registry.get_org(endpoint.org_id)
    org_name = org.name if org else endpoint.org_id
    runtime = runtime_for(registry, instance_name)
    labels = EngineLabels(org_name, endpoint_id, endpoint.name, own_flow_run)
    reporter = Reporter(registry, run.id)
    engine: EngineHandle | None = None
    exporter: Exporter | None = None
    ending = Ending(ReasonCode.RUN_ENDED, "the serve run stopped unexpectedly")
    log_path = Path(host.log_dir) / "engines" / f"{endpoint_id}-{own_flow_run[:8]}.log"
    try:
        # Where to read it (`endpoints logs`), told before the engine starts: a start that
        # fails at once leaves its reason there.
        reporter.send(log_path=str(log_path), log_host=socket.gethostname())
        engine = runtime.start(
            spec,
            sources={m.target: ctx.store.path_of(m.source) for m in spec.mounts},
            host=host.backend_host,
            port=free_port(host.backend_host),
            labels=labels,
            log_path=log_path,
        )
        logger.info("%s engine started at %s (%s, generation %s)", runtime.kind, engine.url, run.role,
                    run.generation)
        # In a Kubernetes pod the exporter binds the pod's IP and the port its NetworkPolicy opens.
        exporter_host, exporter_port = exporter_address(runtime.kind, host.backend_host)
        exporter = start_exporter(labels, engine_pids(engine), exporter_host, port=exporter_port)
        reporter.send(backend_url=engine.url, exporter_url=exporter.url, engine_started_at=utcnow(),
                      last_seen_at=utcnow())
        publish_artifacts(endpoint, org_name, spec, run.generation)
        with OwnState(own_flow_run) as own:
            ending = _supervise(engine, spec, run, own, registry, reporter)
    except BaseException as exc:
        ending = Ending(ReasonCode.ENGINE_EXITED if engine is None else ReasonCode.RUN_ENDED,
                        f"the serve run failed: {type(exc).__name__}: {exc}")
        raise
    finally:
        if exporter is not None:
            exporter.stop()
        if engine is not None:
            engine.stop()
            logger.info("engine stopped")
        _record_end(registry, run.id, ending)
        state = _own_state(own_flow_run)
        if state == StateType.CANCELLING:
            # Confirm at once that we are gone; the worker (if any) would take ~5 s more.
            _set_own_state(own_flow_run, Cancelled(message="endpoint stopped"))
        if ending.reason == ReasonCode.ENGINE_EXITED or run.role == Role.REPLICA.value:
            _kick_reconcile(registry, endpoint_id)  # restart it, or release a retired replica's lease
    if ending.reason == ReasonCode.ENGINE_EXITED:
        raise RuntimeError(ending.message)
