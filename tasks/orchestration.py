"""The reconciler's orchestrator on Prefect: submit and cancel serve runs, read their states."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from inference_endpoints.adapters.health import probe_backends
from inference_endpoints.core.reconcile import Capacity
from inference_endpoints.persistence.models import Endpoint, ServeRun
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.services.reconciler import Row, Settings, reconcile
from tasks.engines import runtime_for
from tasks.kubernetes import forget_serve_job, prepare_serve_job
from tasks.runs import cancel_run, read_pool_slots, read_run_states, submit_serve_run


class PrefectOrchestrator:
    """`services.reconciler.Orchestrator` backed by the Prefect API and this host's runtimes."""

    def __init__(self, registry: Registry):
        self.registry = registry

    def submit(self, endpoint: Endpoint, run: ServeRun) -> str:
        org = self.registry.get_org(endpoint.org_id)
        instance = run.instance or endpoint.instance  # an update's candidate may move elsewhere
        pool = self.registry.instances()[instance].work_pool
        job = prepare_serve_job(self.registry, endpoint, run.serving_config_json, run.generation,
                                instance)
        return submit_serve_run(endpoint.id, org.name if org else endpoint.org_id, endpoint.name, pool,
                                run.id, run.generation, job)

    def cancel(self, flow_run_id: str, message: str) -> bool:
        return cancel_run(flow_run_id, message)

    def states(self, flow_run_ids: Sequence[str]) -> Mapping[str, str]:
        return read_run_states(flow_run_ids)

    def stop_orphan(self, endpoint: Endpoint, run: ServeRun) -> int:
        """Stop this run's engine only (found by its labels and port), never a sibling's."""
        port = urlsplit(run.backend_url).port if run.backend_url else None
        leftovers = runtime_for(self.registry, run.instance or endpoint.instance).leftovers(endpoint.id)
        mine = [e for e in leftovers if port is None or getattr(e, "port", None) in (None, port)]
        for engine in mine:
            engine.stop()
        return len(mine)

    def forget(self, endpoint: Endpoint) -> None:
        forget_serve_job(self.registry, endpoint)

    def capacity(self, endpoint: Endpoint) -> Capacity:
        pool = self.registry.instances()[endpoint.instance].work_pool
        limit, holders = read_pool_slots(pool)
        return Capacity(pool, limit, tuple(holders))


def reconcile_now(registry: Registry, endpoint_ids: Sequence[str] | None = None,
                  settings: Settings = Settings(), log: object = print) -> list[Row]:
    """One reconcile pass with the real orchestrator and backend probes."""
    return reconcile(registry, PrefectOrchestrator(registry), lambda urls: probe_backends(urls, 1.0),
                     endpoint_ids=endpoint_ids, settings=settings,
                     log=log if callable(log) else print, load=gateway_in_flight)


def gateway_in_flight() -> dict[tuple[str, str], int] | None:
    """The autoscaler's load: requests in flight per endpoint, as the gateway counts them."""
    from inference_endpoints.adapters.gateway.stats import fetch_traffic
    from inference_endpoints.settings import Settings as StackSettings

    traffic = fetch_traffic(StackSettings())
    return None if traffic is None else {key: t.in_flight for key, t in traffic.items()}
