"""The sidecar runtime and the cluster calls, through the real `kubernetes` client.

The cluster is the FAKE API server of `tests/fake_kube_api.py` (no Kubernetes cluster can run
on these machines); the client, its serialization and its error handling are real.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from inference_endpoints import k8s_manifest
from inference_endpoints.runtime import CONTAINER_MODEL_ROOT, make_runtime, model_root_resolver
from inference_endpoints.runtime.base import EngineLabels
from inference_endpoints.runtime.kubernetes import ENGINE_CONTAINER, POD_IP_ENV, KubeCluster, SidecarRuntime
from inference_endpoints.serving_config import ServingSpec
from tests.fake_kube_api import FakeKubeApi

LABELS = EngineLabels("acme", "ep-123", "chat", "g0")


@pytest.fixture()
def fake_api() -> Iterator[FakeKubeApi]:
    api = FakeKubeApi().start()
    yield api
    api.stop()


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
