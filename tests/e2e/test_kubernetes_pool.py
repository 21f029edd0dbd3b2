"""The gpu-kubernetes pool from the control plane's side, against the session's real Prefect server.

Real: Prefect (server, the create and stop flows, the pool with our base job template), the
registry and its leases, the `kubernetes` client, and prefect-kubernetes' own worker code
rendering the Job the Kubernetes worker would submit for the submitted run.
FAKE: the cluster (`tests/fake_kube_api.py`), because no Kubernetes cluster and no GPU can run on
these machines; so no worker picks the run up here, and the endpoint stays `deploying` until it
is stopped. The serve flow's in-pod side (the sidecar runtime) is unit-tested in
`tests/test_kubernetes_runtime.py`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound

from blocks.settings_blocks import EngineHost
from inference_endpoints.adapters.k8s_manifest import BACKEND_KEY_FIELD, ENDPOINT_ID_LABEL, ENGINE_PORT
from inference_endpoints.adapters.runtime.engine_guard import GUARD_MIDDLEWARE, GUARD_SOURCE_ENV, GUARD_TARGET
from inference_endpoints.core.status import EndpointStatus, ReasonCode
from tasks.runs import run_state
from tests.e2e.conftest import E2EStack, paused_deployment
from tests.fake_kube_api import FakeKubeApi
from tests.k8s_support import validated, worker_manifest

pytestmark = pytest.mark.e2e

POOL = "gpu-kubernetes"
NAMESPACE = "inference"
PVC = "ckpt-store"
CONTROL_PLANE = "127.0.0.1"  # the gateway's and Prometheus' host: this one


def _save_host(kubeconfig: Path) -> None:
    default = EngineHost.load("default")
    assert isinstance(default, EngineHost)
    EngineHost(engine_python=default.engine_python, run_dir=default.run_dir, log_dir=default.log_dir,
               kubeconfig=str(kubeconfig), namespace=NAMESPACE, checkpoint_pvc=PVC,
               control_plane_cidrs=CONTROL_PLANE).save(POOL, overwrite=True)


def _policies_of(cluster: FakeKubeApi, endpoint_id: str) -> list[dict[str, Any]]:
    return [p for p in cluster.network_policies.values()
            if p["spec"]["podSelector"]["matchLabels"].get(ENDPOINT_ID_LABEL) == endpoint_id]


@pytest.fixture(scope="module")
def cluster(e2e: E2EStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKubeApi]:
    """`engine-host/gpu-kubernetes` points at the fake cluster; reconcile is paused meanwhile."""
    api = FakeKubeApi().start()
    _save_host(api.kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig"))
    try:
        with paused_deployment("reconcile-endpoints/self-healing"):
            yield api
    finally:
        api.stop()
        with get_client(sync_client=True) as client:
            try:
                doc = client.read_block_document_by_name(POOL, block_type_slug="engine-host")
                client.delete_block_document(doc.id)
            except ObjectNotFound:
                pass


def _create_in_background(e2e: E2EStack, name: str) -> threading.Thread:
    thread = threading.Thread(target=e2e.create, args=(name,), daemon=True, kwargs={
        "checkpoint": "demo-tiny-llama-lora", "instance": "h100-80gb-x2", "startup_timeout_s": 600})
    thread.start()
    return thread


def _wait_submitted(e2e: E2EStack, name: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ep = e2e.registry.find_endpoint(e2e.org_id, name)
        if ep is not None and ep.serve_run_id and ep.status == EndpointStatus.DEPLOYING:
            return ep.serve_run_id
        time.sleep(0.2)
    raise AssertionError(f"{name} was not submitted: {e2e.registry.find_endpoint(e2e.org_id, name)}")


def test_h100_x2_lora_endpoint_submits_the_job_the_kubernetes_worker_renders(
        e2e: E2EStack, cluster: FakeKubeApi) -> None:
    name = "k8s-lora"
    creator = _create_in_background(e2e, name)
    run_id = _wait_submitted(e2e, name)
    ep = e2e.endpoint(name)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
        pool = client.read_work_pool(POOL)
        assert run.deployment_id is not None
        deployment = client.read_deployment(run.deployment_id)
    assert run.work_pool_name == POOL
    assert run.state is not None and run.state.type == StateType.SCHEDULED  # no cluster, no worker
    assert e2e.registry.open_lease_count(ep.id) == 2  # the adapter and its base model

    # What the Kubernetes worker would submit: the pool's template as stored in Prefect, the
    # deployment's and the run's job variables, rendered by prefect-kubernetes itself.
    manifest = worker_manifest({**deployment.job_variables, **(run.job_variables or {})},
                               template=pool.base_job_template, flow_run=run)
    job = validated(manifest, "V1Job")
    assert job.metadata.namespace == NAMESPACE
    pod = job.spec.template.spec
    [engine] = pod.init_containers
    assert engine.resources.limits == {"nvidia.com/gpu": "2"}
    assert engine.restart_policy == "Always"
    args = engine.args
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--model") + 1] == "/models/base"
    assert f"{name}=/models/adapter" in args
    lora = e2e.registry.find_checkpoint(e2e.org_id, "demo-tiny-llama-lora")
    base = e2e.registry.find_checkpoint(e2e.org_id, "demo-tiny-llama")
    assert lora is not None and base is not None
    mounts = {m.mount_path: m for m in engine.volume_mounts}
    assert (mounts["/models/adapter"].sub_path, mounts["/models/adapter"].read_only) == (
        lora.location.strip("/"), True)
    assert (mounts["/models/base"].sub_path, mounts["/models/base"].read_only) == (
        base.location.strip("/"), True)
    [claim] = [v.persistent_volume_claim for v in pod.volumes if v.name == "checkpoints"]
    assert (claim.claim_name, claim.read_only) == (PVC, True)
    assert pod.node_selector["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    labels = job.spec.template.metadata.labels
    assert labels["inference-endpoints.endpoint-id"] == ep.id
    assert labels["prefect.io/flow-run-id"] == run_id

    # The engine runs the guard, without privilege.
    assert engine.command[:2] == ["sh", "-c"] and engine.command[-2:] == ["-m", "vllm.entrypoints.openai.api_server"]
    at = args.index(GUARD_MIDDLEWARE[0])
    assert args[at:at + 2] == GUARD_MIDDLEWARE
    env = {e.name: e.value for e in engine.env}
    assert env["PYTHONPATH"] == GUARD_TARGET and env[GUARD_SOURCE_ENV]
    context = engine.security_context
    assert (context.read_only_root_filesystem, context.allow_privilege_escalation) == (True, False)
    assert context.capabilities.drop == ["ALL"]

    # Its NetworkPolicy was created on the cluster before the run was submitted: it selects
    # this pod and admits only the control plane and the endpoint's own pods to the engine port.
    [policy] = _policies_of(cluster, ep.id)
    validated(policy, "V1NetworkPolicy")
    assert policy["metadata"]["namespace"] == NAMESPACE
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    engine_rule = policy["spec"]["ingress"][0]
    assert engine_rule["ports"] == [{"protocol": "TCP", "port": ENGINE_PORT}]
    assert engine_rule["from"] == [{"ipBlock": {"cidr": f"{CONTROL_PLANE}/32"}},
                                   {"podSelector": policy["spec"]["podSelector"]}]

    # The engine's key is in a Secret created on the cluster before the run was submitted.
    [key_ref] = [e.value_from.secret_key_ref for e in engine.env if e.name == "VLLM_API_KEY"]
    assert cluster.secret_value(NAMESPACE, key_ref.name, BACKEND_KEY_FIELD) == ep.backend_api_key
    assert ep.backend_api_key and ep.backend_api_key not in str(manifest)

    e2e.stop(name)
    ep = e2e.endpoint(name)
    assert ep.status == EndpointStatus.STOPPED
    assert run_state(run_id) == StateType.CANCELLED
    assert e2e.registry.open_lease_count(ep.id) == 0
    assert (NAMESPACE, key_ref.name) not in cluster.secrets, "the engine key Secret outlived the endpoint"
    assert not _policies_of(cluster, ep.id), "the engine NetworkPolicy outlived the endpoint"
    creator.join(timeout=60)
    assert not creator.is_alive(), "create-endpoint did not return after the stop"


def test_unreachable_cluster_fails_the_endpoint_and_leaves_nothing(
        e2e: E2EStack, cluster: FakeKubeApi, tmp_path: Path) -> None:
    closed = FakeKubeApi()  # its port is closed once the server is, so the client is refused
    kubeconfig = closed.kubeconfig(tmp_path / "kubeconfig")
    closed.stop()
    _save_host(kubeconfig)
    try:
        ep = e2e.create("k8s-nocluster", checkpoint="demo-tiny-llama-lora", instance="h100-80gb-x2")
    finally:
        _save_host(Path(cluster.kubeconfig(tmp_path / "good-kubeconfig")))
    assert ep.status == EndpointStatus.FAILED
    assert ep.reason_code == ReasonCode.DEPLOY_FAILED
    assert "gpu-kubernetes" in (ep.reason_message or "")
    assert ep.serve_run_id is None, "a serve run was submitted without its key Secret"
    assert not _policies_of(cluster, ep.id)
    assert e2e.registry.open_lease_count(ep.id) == 0
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
    assert not [r for r in runs if r.name == f"serve/{e2e.org_name}/k8s-nocluster"]
