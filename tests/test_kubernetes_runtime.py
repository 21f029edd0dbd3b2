"""The sidecar runtime and the cluster calls, through the real `kubernetes` client.

The cluster is the FAKE API server of `tests/fake_kube_api.py` (no Kubernetes cluster can run
on these machines); the client, its serialization and its error handling are real.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from inference_endpoints.adapters import k8s_manifest
from inference_endpoints.adapters.runtime import CONTAINER_MODEL_ROOT, make_runtime, model_root_resolver
from inference_endpoints.adapters.runtime.base import EngineLabels
from inference_endpoints.adapters.runtime.kubernetes import (
    ENGINE_CONTAINER,
    EXPORTER_PORT,
    POD_IP_ENV,
    KubeCluster,
    SidecarRuntime,
    exporter_address,
)
from inference_endpoints.core.serving_config import ServingSpec
from tests.fake_kube_api import FakeKubeApi

LABELS = EngineLabels("acme", "ep-123", "chat", "g0")


@pytest.fixture()
def cluster(fake_api: FakeKubeApi, tmp_path: Path) -> KubeCluster:
    return KubeCluster(str(fake_api.kubeconfig(tmp_path / "kubeconfig")), namespace="inference")


def test_backend_key_secret_is_created_then_replaced(cluster: KubeCluster, fake_api: FakeKubeApi) -> None:
    name = k8s_manifest.backend_key_secret_name(LABELS)
    cluster.ensure_secret(k8s_manifest.render_backend_key_secret(LABELS, "first", namespace="inference"))
    assert fake_api.secret_value("inference", name, k8s_manifest.BACKEND_KEY_FIELD) == "first"
    # A retried create or a restart must not fail on the existing Secret.
    cluster.ensure_secret(k8s_manifest.render_backend_key_secret(LABELS, "second", namespace="inference"))
    assert fake_api.secret_value("inference", name, k8s_manifest.BACKEND_KEY_FIELD) == "second"
    assert ("PUT", f"/api/v1/namespaces/inference/secrets/{name}") in fake_api.requests


def test_deleting_a_secret_is_idempotent(cluster: KubeCluster, fake_api: FakeKubeApi) -> None:
    name = k8s_manifest.backend_key_secret_name(LABELS)
    cluster.ensure_secret(k8s_manifest.render_backend_key_secret(LABELS, "k", namespace="inference"))
    assert cluster.delete_secret(name) is True
    assert ("inference", name) not in fake_api.secrets
    assert cluster.delete_secret(name) is False


def _policy(cidrs: list[str]) -> dict[str, object]:
    return k8s_manifest.render_engine_network_policy(LABELS, control_plane_cidrs=cidrs, namespace="inference")


def test_network_policy_is_created_then_replaced(cluster: KubeCluster, fake_api: FakeKubeApi) -> None:
    name = k8s_manifest.network_policy_name(LABELS)
    cluster.ensure_network_policy(_policy(["10.0.0.5"]))
    path = "/apis/networking.k8s.io/v1/namespaces/inference/networkpolicies"
    assert ("POST", path) in fake_api.requests
    # A new generation, a retried create or a changed control plane replaces it (409, then PUT).
    cluster.ensure_network_policy(_policy(["10.0.0.6"]))
    assert ("PUT", f"{path}/{name}") in fake_api.requests
    stored = fake_api.network_policies[("inference", name)]
    assert stored["spec"]["ingress"][0]["from"][0] == {"ipBlock": {"cidr": "10.0.0.6/32"}}
    read = cluster._networking().read_namespaced_network_policy(name, "inference")  # the client's model
    assert read.spec.pod_selector.match_labels["inference-endpoints.endpoint-id"] == LABELS.endpoint_id


def test_deleting_a_network_policy_is_idempotent(cluster: KubeCluster, fake_api: FakeKubeApi) -> None:
    name = k8s_manifest.network_policy_name(LABELS)
    cluster.ensure_network_policy(_policy(["10.0.0.5"]))
    assert cluster.delete_network_policy(name) is True
    assert ("inference", name) not in fake_api.network_policies
    assert cluster.delete_network_policy(name) is False


def test_the_fake_api_answers_like_the_real_one(cluster: KubeCluster) -> None:
    """What `ensure_*`'s 409 handling relies on: a second create is 409, a missing replace 404."""
    net = cluster._networking()
    policy = _policy(["10.0.0.5"])
    name = k8s_manifest.network_policy_name(LABELS)
    with pytest.raises(ApiException) as missing:
        net.replace_namespaced_network_policy(name, "inference", policy)
    assert missing.value.status == 404
    net.create_namespaced_network_policy("inference", policy)
    with pytest.raises(ApiException) as exists:
        net.create_namespaced_network_policy("inference", policy)
    assert exists.value.status == 409
    with pytest.raises(ApiException) as renamed:
        net.replace_namespaced_network_policy("another-name", "inference", policy)
    assert renamed.value.status == 400


def test_other_api_errors_are_raised(tmp_path: Path) -> None:
    refused = KubeCluster(str(_kubeconfig_to(tmp_path, "http://127.0.0.1:9")), namespace="x")
    with pytest.raises(Exception) as info:
        refused.delete_secret("anything")
    assert not isinstance(info.value, ApiException) or info.value.status != 404


def _kubeconfig_to(tmp_path: Path, server: str) -> Path:
    api = FakeKubeApi()  # only for its kubeconfig writer; never started
    path = api.kubeconfig(tmp_path / "kubeconfig")
    path.write_text(path.read_text().replace(api.url, server))
    api.stop()
    return path


def test_sidecar_engine_is_reached_on_the_pod_ip(monkeypatch: pytest.MonkeyPatch, cluster: KubeCluster,
                                                 fake_api: FakeKubeApi, tmp_path: Path) -> None:
    monkeypatch.setenv(POD_IP_ENV, "10.1.2.3")
    monkeypatch.setenv("HOSTNAME", "serve-chat-abcde")
    fake_api.logs[("inference", "serve-chat-abcde", ENGINE_CONTAINER)] = [f"line {i}" for i in range(50)]
    runtime = make_runtime("sidecar", engine_python="", run_dir=tmp_path, cluster=cluster, engine_port=8000)
    assert isinstance(runtime, SidecarRuntime)
    spec = ServingSpec(args=["--model", "/models/model"], env={}, mounts=[], served_model_name="chat",
                       model_path="/models/model")
    engine = runtime.start(spec, sources={}, host="127.0.0.1", port=1234, labels=LABELS,
                           log_path=tmp_path / "unused.log")
    assert engine.url == "http://10.1.2.3:8000"  # the gateway reaches it from outside the pod
    assert engine.exit_code() is None
    assert engine.tail(3) == ["line 47", "line 48", "line 49"]
    engine.stop()  # the kubelet's job: nothing to do, and no error
    assert runtime.leftovers("ep-123") == []


def test_sidecar_log_errors_become_a_line_not_a_crash(monkeypatch: pytest.MonkeyPatch,
                                                      cluster: KubeCluster, tmp_path: Path) -> None:
    monkeypatch.setenv("HOSTNAME", "no-such-pod")
    engine = SidecarRuntime(8000, cluster).start(
        ServingSpec(args=[], env={}, mounts=[], served_model_name="m", model_path="/models/m"),
        sources={}, host="", port=0, labels=LABELS, log_path=tmp_path / "x")
    (line,) = engine.tail(5)
    assert line.startswith("(engine log unavailable:") and "404" in line


def test_containers_see_checkpoints_under_models(tmp_path: Path) -> None:
    resolve = model_root_resolver(tmp_path, generation=2)
    assert resolve("sidecar", "ep") == CONTAINER_MODEL_ROOT
    assert resolve("docker", "ep") == CONTAINER_MODEL_ROOT
    assert resolve("process", "ep") == str(tmp_path / "ep" / "g2" / "models")


def test_unknown_runtime_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="process, docker or sidecar"):
        make_runtime("podman", engine_python="", run_dir=tmp_path)


def test_the_exporter_listens_on_the_policys_port_in_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POD_IP_ENV, "10.1.2.3")
    assert exporter_address("sidecar", "127.0.0.1") == ("10.1.2.3", EXPORTER_PORT)
    assert exporter_address("docker", "127.0.0.1") == ("127.0.0.1", 0)
    monkeypatch.delenv(POD_IP_ENV)
    assert exporter_address("sidecar", "127.0.0.1") == ("127.0.0.1", 0)
    policy = k8s_manifest.render_engine_network_policy(LABELS, control_plane_cidrs=["10.0.0.5"])
    assert {"protocol": "TCP", "port": EXPORTER_PORT} in policy["spec"]["ingress"][1]["ports"]


def test_start_exporter_binds_the_port_it_is_given() -> None:
    from inference_endpoints.adapters.metrics.exporter import start_exporter
    from inference_endpoints.adapters.runtime.process import free_port

    port = free_port("127.0.0.1")
    exporter = start_exporter(LABELS, lambda: [], "127.0.0.1", port=port)
    try:
        assert exporter.port == port
    finally:
        exporter.stop()
