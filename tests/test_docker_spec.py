"""The container spec of the docker runtime, checked against docker-py's own types, no daemon.

`container_spec` builds the keyword arguments of `client.containers.run`. The tests pass them
through docker-py's real `run` path (argument split, HostConfig, ContainerConfig) with the
HTTP call replaced by a capture, so what is checked is the request body the Docker daemon
would receive, at API 1.41 (the docker.io 20.10 daemon of these machines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker
import pytest
from docker.types import DeviceRequest, Mount

from inference_endpoints.adapters.runtime import CONTAINER_MODEL_ROOT, make_runtime
from inference_endpoints.adapters.runtime.base import EngineLabels
from inference_endpoints.adapters.runtime.docker import (
    DEFAULT_ENGINE_PYTHON,
    ENDPOINT_LABEL,
    DockerRuntime,
    container_name,
    container_spec,
    shm_size_for,
)
from inference_endpoints.adapters.runtime.engine_guard import GUARD_DIR
from inference_endpoints.core.catalog import by_name
from inference_endpoints.core.serving_config import ENGINE_MODULE, ServingSpec, render
from inference_endpoints.core.validation import CreateRequest, validate_create
from tests.factories import LLAMA3_8B, TINY, TINY_LORA, view

INSTANCES = by_name()
LABELS = EngineLabels("acme", "ep_0123456789ab", "support-bot", "6f1c2d3e-aaaa-bbbb-cccc-0123456789ab")
STORE = Path("/srv/checkpoints")
API_VERSION = "1.41"


class Captured(Exception):
    """Raised instead of sending the create request; carries what would have been sent."""

    def __init__(self, config: dict[str, Any], name: str | None):
        super().__init__("captured")
        self.config = config
        self.name = name


def render_for(instance: str, *, lora: bool = False) -> ServingSpec:
    if lora:
        ckpt = view(TINY_LORA, "adapter", base=view(LLAMA3_8B, "demo-tiny-llama"))
    else:
        ckpt = view(LLAMA3_8B if instance != "cpu-dev" else TINY)
    precision = "float32" if instance == "cpu-dev" else "auto"
    validated = validate_create(
        CreateRequest("support-bot", ckpt.name, instance, 2048, precision, "none"),
        checkpoint=ckpt, name_taken=False, instances=INSTANCES,
    )
    runtime = DockerRuntime(image="img:1", docker_host=None, gpu_count=0)
    return render(validated, model_root=runtime.model_root("ep_0123456789ab"), api_key="be_secret")


def sources_of(spec: ServingSpec) -> dict[str, Path]:
    return {m.target: STORE / m.source for m in spec.mounts}


def spec_kwargs(instance: str, *, lora: bool = False, python: str = "/opt/venv/bin/python",
                ) -> tuple[ServingSpec, dict[str, Any]]:
    spec = render_for(instance, lora=lora)
    gpus = 0 if INSTANCES[instance].is_cpu else INSTANCES[instance].gpu_count
    kwargs = container_spec(spec, image="vllm/vllm-openai:v0.32.0", engine_python=python,
                            sources=sources_of(spec), host="10.0.0.5", port=8123, labels=LABELS,
                            gpu_count=gpus)
    return spec, kwargs


def request_body(kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Captured:
    """What docker-py would POST to /containers/create for these arguments."""
    client = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version=API_VERSION)

    def capture(config: dict[str, Any], name: str | None = None, platform: str | None = None) -> None:
        raise Captured(config, name)

    monkeypatch.setattr(client.api, "create_container_from_config", capture)
    create_kwargs = {k: v for k, v in kwargs.items() if k != "detach"}  # as DockerRuntime.start
    with pytest.raises(Captured) as caught:
        client.containers.create(**create_kwargs)
    return caught.value


def test_gpu_instance_requests_its_gpus_through_device_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    _, kwargs = spec_kwargs("h100-80gb-x2", lora=True)
    assert kwargs["device_requests"] == [DeviceRequest(count=2, capabilities=[["gpu"]])]
    assert all(isinstance(d, DeviceRequest) for d in kwargs["device_requests"])
    body = request_body(kwargs, monkeypatch).config
    assert body["HostConfig"]["DeviceRequests"] == [
        {"Driver": "", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]


@pytest.mark.parametrize("instance,count", [("l4-24gb", 1), ("a100-80gb", 1), ("h100-80gb-x2", 2)])
def test_device_request_count_is_the_instance_gpu_count(instance: str, count: int) -> None:
    _, kwargs = spec_kwargs(instance)
    assert [d["Count"] for d in kwargs["device_requests"]] == [count]
    assert kwargs["shm_size"] == f"{2 * count}g"


def test_cpu_instance_has_no_device_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    _, kwargs = spec_kwargs("cpu-dev")
    assert kwargs["device_requests"] == []
    body = request_body(kwargs, monkeypatch).config
    assert not body["HostConfig"].get("DeviceRequests")


def test_checkpoints_are_read_only_bind_mounts_at_the_rendered_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    spec, kwargs = spec_kwargs("h100-80gb-x2", lora=True)
    assert kwargs["mounts"] == [
        Mount(target="/models/base", source=str(STORE / "org_test/ckpt_demo-tiny-llama"),
              type="bind", read_only=True),
        Mount(target="/models/adapter", source=str(STORE / "org_test/ckpt_adapter"),
              type="bind", read_only=True),
    ]
    body = request_body(kwargs, monkeypatch).config
    mounts = body["HostConfig"]["Mounts"]
    assert [(m["Type"], m["Source"], m["Target"], m["ReadOnly"]) for m in mounts] == [
        ("bind", str(STORE / "org_test/ckpt_demo-tiny-llama"), "/models/base", True),
        ("bind", str(STORE / "org_test/ckpt_adapter"), "/models/adapter", True),
    ]
    # The engine is pointed at exactly those paths.
    assert spec.model_path == "/models/base"
    assert "support-bot=/models/adapter" in body["Cmd"]
    assert all(m.target.startswith(CONTAINER_MODEL_ROOT + "/") for m in spec.mounts)


def test_labels_name_org_endpoint_and_serve_run(monkeypatch: pytest.MonkeyPatch) -> None:
    _, kwargs = spec_kwargs("a10g-24gb")
    captured = request_body(kwargs, monkeypatch)
    labels = captured.config["Labels"]
    assert labels == {
        "inference-endpoints.org": "acme",
        "inference-endpoints.endpoint-id": "ep_0123456789ab",
        "inference-endpoints.endpoint": "support-bot",
        "inference-endpoints.serve-run": LABELS.serve_run_id,
        "inference-endpoints.managed": "true",
    }
    assert labels[ENDPOINT_LABEL] == LABELS.endpoint_id  # what `leftovers` filters on
    assert captured.name == container_name(LABELS) == "ie-ep_0123456789ab-6f1c2d3e"


def test_engine_command_network_env_and_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    spec, kwargs = spec_kwargs("h100-80gb-x2", lora=True)
    body = request_body(kwargs, monkeypatch).config
    assert body["Entrypoint"][:2] == ["sh", "-c"]
    assert body["Entrypoint"][3:] == ["ie-engine", "/opt/venv/bin/python", "-m", ENGINE_MODULE]
    assert body["Cmd"] == [*spec.args, "--middleware", "ie_engine_guard.EngineGuard",
                           "--host", "10.0.0.5", "--port", "8123"]
    cmd = body["Cmd"]
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    assert body["HostConfig"]["NetworkMode"] == "host"
    assert body["HostConfig"]["ShmSize"] == 4 * 1024**3
    assert body["HostConfig"]["AutoRemove"] is True  # the daemon removes it once stopped
    env = dict(item.split("=", 1) for item in body["Env"])
    assert env["VLLM_API_KEY"] == "be_secret"
    assert env["PYTHONPATH"] == "/tmp/ie-engine-guard"  # where the entrypoint writes the guard
    assert env["IE_ENGINE_GUARD_SOURCE"] == (GUARD_DIR / "ie_engine_guard.py").read_text()
    assert env["HF_HUB_OFFLINE"] == "1"
    assert body["Image"] == "vllm/vllm-openai:v0.32.0"


def test_shm_size_is_per_device_with_a_floor_for_cpu() -> None:
    assert [shm_size_for(n) for n in (0, 1, 2, 8)] == ["2g", "2g", "4g", "16g"]


def test_make_runtime_builds_a_lazy_docker_runtime() -> None:
    runtime = make_runtime("docker", engine_python="", run_dir=Path("/unused"),
                           image="inference-endpoints/vllm-cpu:0.32.0", docker_host="unix:///x.sock",
                           gpu_count=2)
    assert isinstance(runtime, DockerRuntime)
    assert runtime.kind == "docker"
    assert runtime.model_root("ep_1") == "/models"
    assert (runtime.image, runtime.docker_host, runtime.gpu_count) == (
        "inference-endpoints/vllm-cpu:0.32.0", "unix:///x.sock", 2)


def test_engine_python_comes_from_the_image_label() -> None:
    class FakeImage:
        def __init__(self, labels: dict[str, str] | None):
            self.labels = labels

    class FakeImages:
        def __init__(self, labels: dict[str, str] | None):
            self.image = FakeImage(labels)

        def get(self, name: str) -> FakeImage:
            return self.image

    class FakeClient:
        def __init__(self, labels: dict[str, str] | None):
            self.images = FakeImages(labels)

    local = DockerRuntime(image="inference-endpoints/vllm-cpu:0.32.0", docker_host=None, gpu_count=0)
    local._client = FakeClient({"inference-endpoints.engine-python": "/opt/venv/bin/python"})
    assert local.image_python() == "/opt/venv/bin/python"
    official = DockerRuntime(image="vllm/vllm-openai:v0.32.0", docker_host=None, gpu_count=1)
    official._client = FakeClient(None)
    assert official.image_python() == DEFAULT_ENGINE_PYTHON


def test_an_image_is_required() -> None:
    with pytest.raises(ValueError, match="image"):
        DockerRuntime(image="", docker_host=None, gpu_count=1)


def test_dockerd_keeps_all_its_state_under_one_data_dir(tmp_path: Path) -> None:
    """Several daemons can share a machine: data root, exec root, socket and pid file are ours."""
    from inference_endpoints.adapters.runtime.dockerd import DockerPaths, dockerd_command

    paths = DockerPaths(tmp_path)
    cmd = dockerd_command(paths)
    assert cmd[0] == "dockerd"
    flags = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    assert flags["--data-root"] == str(tmp_path / "docker")
    assert flags["--exec-root"] == str(tmp_path / "docker-run")
    assert flags["--pidfile"] == str(tmp_path / "docker.pid")
    assert flags["--host"] == f"unix://{tmp_path / 'docker.sock'}" == paths.url
    assert flags["--storage-driver"] == "vfs"
    assert {"--iptables=false", "--bridge=none"} <= set(cmd)


def test_the_engine_container_holds_no_privilege(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-py's own request body: every capability dropped, none to gain, a read-only root."""
    _, kwargs = spec_kwargs("l4-24gb")
    host = request_body(kwargs, monkeypatch).config["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["ReadonlyRootfs"] is True
    assert set(host["Tmpfs"]) == {"/tmp", "/root", "/var/tmp"}
    assert not host.get("Privileged")
