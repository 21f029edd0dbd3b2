"""The Kubernetes Job of a serve run on the gpu-kubernetes pool, validated against the `kubernetes`
client's models (pydantic, strict types) and checked field by field. No cluster needed.

Validation is a strict round trip: the manifest is deserialized into `V1Job` (wrong types and
missing required fields fail) and serialized back; it must come back unchanged, so a misspelled
or misplaced key (which the models would silently drop) fails too.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import jsonschema
import pytest
from kubernetes.client import V1Container, V1Job, V1Secret

from inference_endpoints.adapters.k8s_manifest import (
    BACKEND_KEY_FIELD,
    backend_key_secret_name,
    job_variables,
    render_backend_key_secret,
)
from inference_endpoints.adapters.runtime import CONTAINER_MODEL_ROOT
from inference_endpoints.adapters.runtime.base import EngineLabels
from inference_endpoints.core.catalog import by_name
from inference_endpoints.core.serving_config import ServingSpec, render
from inference_endpoints.core.validation import CreateRequest, validate_create
from tests.factories import LLAMA3_8B, TINY_LORA, view
from tests.k8s_support import kubernetes_pool_template, validated, worker_manifest

INSTANCES = by_name()
LABELS = EngineLabels("acme", "ep_0123456789ab", "support-bot", "6f1c2d3e-aaaa-bbbb-cccc-0123456789ab")


def lora_spec() -> ServingSpec:
    ckpt = view(TINY_LORA, "adapter", base=view(LLAMA3_8B, "demo-tiny-llama"))
    request = validate_create(
        CreateRequest("support-bot", ckpt.name, "h100-80gb-x2", 8192, "bfloat16", "none"),
        checkpoint=ckpt, name_taken=False, instances=INSTANCES,
    )
    return render(request, model_root=CONTAINER_MODEL_ROOT, api_key="be_secret")


@pytest.fixture(scope="module")
def rendered() -> tuple[ServingSpec, dict[str, Any], V1Job]:
    spec = lora_spec()
    variables = job_variables(INSTANCES["h100-80gb-x2"], spec, LABELS, checkpoint_pvc="ckpt-store")
    manifest = worker_manifest({**variables, "namespace": "endpoints"})
    return spec, manifest, validated(manifest, "V1Job")


def engine_of(job: V1Job) -> V1Container:
    assert job.spec and job.spec.template.spec and job.spec.template.spec.init_containers
    [engine] = job.spec.template.spec.init_containers
    return engine


def test_manifest_is_a_valid_v1_job(rendered: tuple[ServingSpec, dict[str, Any], V1Job]) -> None:
    _, _, job = rendered
    assert (job.api_version, job.kind) == ("batch/v1", "Job")
    assert job.metadata is not None and job.metadata.namespace == "endpoints"
    assert job.metadata.generate_name == "ie-support-bot-"
    assert job.spec is not None and job.spec.backoff_limit == 0
    pod = job.spec.template.spec
    assert pod is not None and pod.restart_policy == "Never"
    [flow] = pod.containers
    assert flow.name == "prefect-job"  # what prefect-kubernetes requires of containers[0]
    assert flow.args == ["prefect", "flow-run", "execute"]
    assert flow.resources is not None and not (flow.resources.limits or {}).get("nvidia.com/gpu")
    assert "IE_POD_IP" in {e.name for e in flow.env or []}


def test_engine_requests_two_gpus(rendered: tuple[ServingSpec, dict[str, Any], V1Job]) -> None:
    _, _, job = rendered
    engine = engine_of(job)
    assert engine.resources is not None and engine.resources.limits == {"nvidia.com/gpu": "2"}


def test_engine_runs_with_tensor_parallel_2(rendered: tuple[ServingSpec, dict[str, Any], V1Job]) -> None:
    spec, _, job = rendered
    engine = engine_of(job)
    assert engine.name == "engine"
    assert engine.restart_policy == "Always"  # a native sidecar: ends with the serve flow's container
    assert engine.image == "vllm/vllm-openai:v0.32.0"
    assert (engine.command or [])[-3:] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    args = engine.args or []
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args == [*spec.args, "--middleware", "ie_engine_guard.EngineGuard",
                    "--host", "0.0.0.0", "--port", "8000"]
    assert args[args.index("--model") + 1] == "/models/base"
    assert "support-bot=/models/adapter" in args
    assert engine.ports is not None and engine.ports[0].container_port == 8000


def test_checkpoints_are_mounted_read_only(rendered: tuple[ServingSpec, dict[str, Any], V1Job]) -> None:
    spec, _, job = rendered
    engine = engine_of(job)
    mounts = {m.mount_path: m for m in engine.volume_mounts or []}
    assert mounts["/models/base"].sub_path == "org_test/ckpt_demo-tiny-llama"
    assert mounts["/models/adapter"].sub_path == "org_test/ckpt_adapter"
    for target in (m.target for m in spec.mounts):
        assert mounts[target].name == "checkpoints"
        assert mounts[target].read_only is True
    assert mounts["/dev/shm"].name == "dshm"
    assert job.spec is not None and job.spec.template.spec is not None
    volumes = {v.name: v for v in job.spec.template.spec.volumes or []}
    claim = volumes["checkpoints"].persistent_volume_claim
    assert claim is not None and claim.claim_name == "ckpt-store" and claim.read_only is True
    shm = volumes["dshm"].empty_dir
    assert shm is not None and shm.medium == "Memory" and shm.size_limit == "4Gi"


def test_pod_is_placed_on_h100_nodes(rendered: tuple[ServingSpec, dict[str, Any], V1Job]) -> None:
    _, _, job = rendered
    assert job.spec is not None and job.spec.template.spec is not None
    pod = job.spec.template.spec
    assert pod.node_selector == {"nvidia.com/gpu.present": "true",
                                 "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod.tolerations is not None
    assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [
        ("nvidia.com/gpu", "Exists", "NoSchedule")]


def test_labels_and_backend_key(rendered: tuple[ServingSpec, dict[str, Any], V1Job]) -> None:
    spec, manifest, job = rendered
    assert job.spec is not None and job.spec.template.metadata is not None
    ours = {
        "inference-endpoints.org": "acme",
        "inference-endpoints.endpoint-id": "ep_0123456789ab",
        "inference-endpoints.endpoint": "support-bot",
        "inference-endpoints.serve-run": LABELS.serve_run_id,
    }
    pod_labels = job.spec.template.metadata.labels or {}
    assert ours.items() <= pod_labels.items()
    assert "prefect.io/flow-run-id" in pod_labels  # the worker's own, naming the serve run
    assert job.metadata is not None and ours.items() <= (job.metadata.labels or {}).items()
    env = {e.name: e for e in engine_of(job).env or []}
    assert env["HF_HUB_OFFLINE"].value == "1"
    source = env["VLLM_API_KEY"].value_from
    assert source is not None and source.secret_key_ref is not None
    ref = source.secret_key_ref
    assert (ref.name, ref.key) == (backend_key_secret_name(LABELS), BACKEND_KEY_FIELD)
    assert "be_secret" not in json.dumps(manifest), "the backend key belongs in a Secret"
    secret = validated(render_backend_key_secret(LABELS, spec.api_key, "endpoints"), "V1Secret")
    assert isinstance(secret, V1Secret)
    assert secret.metadata is not None and secret.metadata.name == ref.name == "ie-ep-0123456789ab-backend-key"
    assert secret.string_data == {BACKEND_KEY_FIELD: "be_secret"}


def test_job_variables_match_the_pools_variable_schema() -> None:
    """Prefect validates a run's job variables against the pool's schema: they must conform."""
    template = kubernetes_pool_template()
    variables = job_variables(INSTANCES["h100-80gb-x2"], lora_spec(), LABELS, checkpoint_pvc="ckpt-store")
    schema = {k: v for k, v in template["variables"].items() if k != "definitions"}
    jsonschema.validate(variables, schema)
    assert set(variables) <= set(template["variables"]["properties"])


def test_template_defaults_alone_mount_the_whole_store_read_only_at_models() -> None:
    job = validated(worker_manifest({}), "V1Job")
    engine = engine_of(job)
    assert engine.resources is not None and engine.resources.limits == {"nvidia.com/gpu": "1"}
    [models] = [m for m in engine.volume_mounts or [] if m.name == "checkpoints"]
    assert (models.mount_path, models.read_only, models.sub_path) == ("/models", True, None)
    assert job.spec.template.spec.node_selector == {"nvidia.com/gpu.present": "true"}


def test_cpu_instances_are_refused() -> None:
    with pytest.raises(ValueError, match="no GPU"):
        job_variables(replace(INSTANCES["cpu-dev"], gpu_count=0), lora_spec(), LABELS)
