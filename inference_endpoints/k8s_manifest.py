"""The Kubernetes Job of one serve run on the `gpu-kubernetes` work pool, rendered without a cluster.

The pool's base job template (`deployments/k8s/base-job-template.json`) is prefect-kubernetes
0.8.0's default plus an engine. Its pod has two containers:

- `prefect-job`: the serve flow, as Prefect's Kubernetes worker runs it (control-plane image);
- `engine`: vLLM in the official image, as a native sidecar (an init container with
  `restartPolicy: Always`, Kubernetes 1.29 or later). It starts before the serve flow, shares
  the pod's network (the flow probes it at 127.0.0.1), alone holds the GPUs
  (`nvidia.com/gpu` limit = the instance's GPU count), and Kubernetes stops it when the serve
  flow's container ends, so a stopped or killed serve run never leaves an engine behind.
  Engine and control plane stay in separate images (vLLM pins FastAPI below what Prefect needs).

Each checkpoint of the rendered serving config is a read-only `subPath` mount of the
checkpoint-store PVC (whose root is the store root) at exactly the path the renderer used
(`/models/...`), and the PVC volume itself is mounted read-only. GPU nodes are selected by
GPU feature discovery labels (`nvidia.com/gpu.present`, `nvidia.com/gpu.product`) and the
`nvidia.com/gpu` taint is tolerated.

`job_variables` gives the per-run job variables (what `run_deployment(job_variables=...)`
passes for the serve deployment on that pool); the Kubernetes worker fills the base job
template with them (tests render it with prefect-kubernetes' own worker code). Pure: no
cluster, no network.
"""

from __future__ import annotations

import re
from typing import Any

from inference_endpoints.catalog import InstanceSpec
from inference_endpoints.runtime.base import EngineLabels
from inference_endpoints.serving_config import ServingSpec

ENGINE_PORT = 8000
BACKEND_KEY_FIELD = "api-key"
SHM_GIB_PER_GPU = 2
# `nvidia.com/gpu.product` as NVIDIA GPU feature discovery labels the nodes of each instance type.
GPU_PRODUCTS = {
    "t4-16gb": "Tesla-T4",
    "l4-24gb": "NVIDIA-L4",
    "a10g-24gb": "NVIDIA-A10G",
    "a100-40gb": "NVIDIA-A100-SXM4-40GB",
    "a100-80gb": "NVIDIA-A100-SXM4-80GB",
    "h100-80gb": "NVIDIA-H100-80GB-HBM3",
    "h100-80gb-x2": "NVIDIA-H100-80GB-HBM3",
    "h200-141gb": "NVIDIA-H200",
}
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_DNS_UNSAFE = re.compile(r"[^a-z0-9-]")


def label_value(value: str) -> str:
    """A valid Kubernetes label value: at most 63 characters, alphanumeric at both ends."""
    return _LABEL_UNSAFE.sub("-", value)[:63].strip("-_.")


def dns_label(value: str, limit: int = 63) -> str:
    """A valid DNS-1123 label (object names): lowercase alphanumerics and '-'."""
    return _DNS_UNSAFE.sub("-", value.lower())[:limit].strip("-")


def gpu_product(instance: InstanceSpec) -> str:
    return GPU_PRODUCTS.get(instance.name, instance.accelerator.replace(" ", "-"))


def backend_key_secret_name(labels: EngineLabels) -> str:
    return dns_label(f"ie-{labels.endpoint_id}-backend-key")


def render_backend_key_secret(labels: EngineLabels, api_key: str,
                              namespace: str = "default") -> dict[str, Any]:
    """The Secret the engine reads its backend API key from (created before the serve run)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": backend_key_secret_name(labels), "namespace": namespace,
                     "labels": engine_labels(labels)},
        "type": "Opaque",
        "stringData": {BACKEND_KEY_FIELD: api_key},
    }


def engine_labels(labels: EngineLabels) -> dict[str, str]:
    return {key: label_value(value) for key, value in labels.as_dict().items()}


def job_variables(
    instance: InstanceSpec,
    spec: ServingSpec,
    labels: EngineLabels,
    *,
    checkpoint_pvc: str | None = None,
    engine_image: str | None = None,
    engine_port: int = ENGINE_PORT,
    product: str | None = None,
) -> dict[str, Any]:
    """Per-run job variables of the serve deployment on the Kubernetes pool.

    `spec` must be rendered with the container model root (`/models`): its mount targets
    become the engine's mount paths and its `source`s (store-relative) the PVC sub-paths.
    """
    if instance.gpu_count < 1:
        raise ValueError(f"{instance.name} has no GPU; the Kubernetes pool serves GPU instances")
    for mount in spec.mounts:
        if not mount.target.startswith("/"):
            raise ValueError(f"mount target {mount.target!r} must be an absolute container path")
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
    env.append({"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": backend_key_secret_name(labels), "key": BACKEND_KEY_FIELD}}})
    mounts: list[dict[str, Any]] = [
        {"name": "checkpoints", "mountPath": m.target, "subPath": m.source.strip("/"), "readOnly": True}
        for m in spec.mounts
    ]
    mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    pod_labels = engine_labels(labels)
    variables: dict[str, Any] = {
        "name": dns_label(f"ie-{labels.endpoint_name}", limit=50),
        "labels": pod_labels,
        "engine_labels": pod_labels,
        "gpu_count": str(instance.gpu_count),
        "node_selector": {"nvidia.com/gpu.present": "true",
                          "nvidia.com/gpu.product": product or gpu_product(instance)},
        "engine_image": engine_image or instance.image,
        "engine_args": [*spec.args, "--host", "0.0.0.0", "--port", str(engine_port)],
        "engine_env": env,
        "engine_port": engine_port,
        "checkpoint_mounts": mounts,
        "shm_size": f"{SHM_GIB_PER_GPU * instance.gpu_count}Gi",
    }
    if checkpoint_pvc:
        variables["checkpoint_pvc"] = checkpoint_pvc
    return variables
