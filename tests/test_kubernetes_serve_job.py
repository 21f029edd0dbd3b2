"""Before a sidecar serve run: the endpoint's NetworkPolicy and key Secret exist; after it: neither.

`prepare_serve_job` and `forget_serve_job` run as the create, restart and reconcile flows call
them (their functions, against a real SQLite registry), with the engine-host settings of the
pool pointing at the FAKE API server of `tests/fake_kube_api.py` (no cluster can run here)
through the real `kubernetes` client.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tasks.kubernetes
from blocks.settings_blocks import EngineHost
from inference_endpoints.adapters import k8s_manifest
from inference_endpoints.adapters.runtime.base import EngineLabels
from inference_endpoints.persistence.models import Endpoint
from inference_endpoints.persistence.registry import Registry
from tasks.kubernetes import forget_serve_job, prepare_serve_job
from tests.fake_kube_api import FakeKubeApi
from tests.k8s_support import validated, worker_manifest
from tests.test_k8s_manifest import lora_spec

NS = "inference"


@pytest.fixture()
def host(fake_api: FakeKubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EngineHost:
    """The pool's engine-host settings, as `load_engine_host` would load them from Prefect."""
    host = EngineHost(engine_python="python3", run_dir=str(tmp_path), log_dir=str(tmp_path),
                      kubeconfig=str(fake_api.kubeconfig(tmp_path / "kubeconfig")), namespace=NS,
                      checkpoint_pvc="ckpt-store", control_plane_cidrs="10.0.0.5, 10.0.1.0/24")
    monkeypatch.setattr(tasks.kubernetes, "load_engine_host", lambda pool: host)
    return host


def endpoint(registry: Registry, instance: str = "h100-80gb-x2") -> Endpoint:
    org = registry.get_org_by_name("default")
    assert org is not None
    return Endpoint(id="ep_0123456789ab", org_id=org.id, name="support-bot", checkpoint_id="c",
                    instance=instance, max_context=8192, precision="bfloat16", quantization="none",
                    status="deploying", backend_api_key="be_secret", served_model_name="support-bot",
                    serving_config_json="{}")


def test_prepare_creates_policy_and_secret_and_forget_deletes_both(
        sqlite_registry: Registry, host: EngineHost, fake_api: FakeKubeApi) -> None:
    ep = endpoint(sqlite_registry)
    labels = EngineLabels("default", ep.id, ep.name, "g0")
    secret, policy_name = k8s_manifest.backend_key_secret_name(labels), k8s_manifest.network_policy_name(labels)
    variables = prepare_serve_job.fn(sqlite_registry, ep, lora_spec().to_json(), 0)
    assert variables is not None and variables["namespace"] == NS
    assert fake_api.secret_value(NS, secret, k8s_manifest.BACKEND_KEY_FIELD) == "be_secret"
    policy = fake_api.network_policies[(NS, policy_name)]
    validated(policy, "V1NetworkPolicy")
    peers = policy["spec"]["ingress"][0]["from"]
    assert peers[:2] == [{"ipBlock": {"cidr": "10.0.0.5/32"}}, {"ipBlock": {"cidr": "10.0.1.0/24"}}]
    # The policy fences the very pod the worker renders for this run.
    pod_labels = worker_manifest(variables)["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    # The fence exists before the key does: an engine never runs unfenced with it.
    posts = [path for method, path in fake_api.requests if method == "POST"]
    assert posts == [f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies",
                     f"/api/v1/namespaces/{NS}/secrets"]

    # A restart or a rolling replacement (next generation) replaces both, still one of each.
    assert prepare_serve_job.fn(sqlite_registry, ep, lora_spec().to_json(), 1) is not None
    assert list(fake_api.network_policies) == [(NS, policy_name)] and list(fake_api.secrets) == [(NS, secret)]

    assert forget_serve_job.fn(sqlite_registry, ep) is True
    assert not fake_api.network_policies and not fake_api.secrets
    assert forget_serve_job.fn(sqlite_registry, ep) is False  # nothing left: idempotent


def test_without_a_control_plane_source_nothing_is_created(
        sqlite_registry: Registry, host: EngineHost, fake_api: FakeKubeApi) -> None:
    host.control_plane_cidrs = ""
    with pytest.raises(ValueError, match="control_plane_cidrs is empty"):
        prepare_serve_job.fn(sqlite_registry, endpoint(sqlite_registry), lora_spec().to_json(), 0)
    assert fake_api.requests == []


def test_other_runtimes_touch_no_cluster(sqlite_registry: Registry, host: EngineHost,
                                        fake_api: FakeKubeApi) -> None:
    ep = endpoint(sqlite_registry, instance="cpu-dev")
    assert prepare_serve_job.fn(sqlite_registry, ep, lora_spec().to_json(), 0) is None
    assert forget_serve_job.fn(sqlite_registry, ep) is False
    assert fake_api.requests == []
