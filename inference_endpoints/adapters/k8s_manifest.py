"""The Kubernetes Job of one serve run on the `gpu-kubernetes` work pool, rendered without a cluster.

The pool's base job template (`deployments/k8s/base-job-template.json`) is prefect-kubernetes
0.8.0's default plus an engine. Its pod has two containers:

- `prefect-job`: the serve flow, as Prefect's Kubernetes worker runs it (control-plane image);
- `engine`: vLLM in the official image, as a native sidecar (an init container with
  `restartPolicy: Always`, Kubernetes 1.29 or later). It starts before the serve flow, shares
  the pod's network (the flow probes it at the pod's IP), alone holds the GPUs
  (`nvidia.com/gpu` limit = the instance's GPU count), and Kubernetes stops it when the serve
  flow's container ends, so a stopped or killed serve run never leaves an engine behind.
  Engine and control plane stay in separate images (vLLM pins FastAPI below what Prefect needs).

The engine runs the engine guard (every route but /health and /metrics needs its key) the
way Docker containers do: its source travels in the environment and `sh -c GUARD_BOOT`
writes it to the engine's own /tmp before exec'ing vLLM. The container holds no privilege
(the template's `securityContext`: no capability, none to gain, RuntimeDefault seccomp, a
read-only root with emptyDirs at /tmp, /root and /var/tmp) and no service-account token (an
empty directory is mounted where Kubernetes would put it, so it puts none there).

Each checkpoint of the rendered serving config is a read-only `subPath` mount of the
checkpoint-store PVC (whose root is the store root) at exactly the path the renderer used
(`/models/...`), and the PVC volume itself is mounted read-only. GPU nodes are selected by
GPU feature discovery labels (`nvidia.com/gpu.present`, `nvidia.com/gpu.product`) and the
`nvidia.com/gpu` taint is tolerated.

Each endpoint also gets a NetworkPolicy (`render_engine_network_policy`, created with its key
Secret before a serve run): its engine pods admit TCP only to the engine port, from the
control plane (the gateway and Prometheus, as CIDRs of their hosts or labels of their pods)
and from the endpoint's own pods (the serve flow probes its sidecar at the pod IP; a rolling
replacement runs two generations), and to the device exporter's port from the control plane.

`job_variables` gives the per-run job variables (what `run_deployment(job_variables=...)`
passes for the serve deployment on that pool); the Kubernetes worker fills the base job
template with them (tests render it with prefect-kubernetes' own worker code). Pure: no
cluster, no network.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any

from inference_endpoints.adapters.runtime.base import EngineLabels
from inference_endpoints.adapters.runtime.engine_guard import (
    GUARD_BOOT,
    GUARD_MIDDLEWARE,
    GUARD_SOURCE,
    GUARD_SOURCE_ENV,
    GUARD_TARGET,
)
from inference_endpoints.adapters.runtime.kubernetes import EXPORTER_PORT
from inference_endpoints.core.catalog import InstanceSpec
from inference_endpoints.core.serving_config import ENGINE_MODULE, ServingSpec

ENGINE_PORT = 8000
ENGINE_PYTHON = "python3"  # the official vllm/vllm-openai image (the template's engine_command)
APP_LABELS = {"app.kubernetes.io/name": "inference-endpoints-engine"}
# The engine's writable places under its read-only root, emptyDir volumes of the pool's template,
# and the empty directory that keeps the pod's service-account token out of the engine.
ENGINE_SCRATCH_MOUNTS: tuple[dict[str, Any], ...] = (
    {"name": "engine-tmp", "mountPath": "/tmp"},
    {"name": "engine-home", "mountPath": "/root"},
    {"name": "engine-var-tmp", "mountPath": "/var/tmp"},
    {"name": "engine-no-token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
     "readOnly": True},
)
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
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}$")
_LABEL_VALUE = re.compile(rf"^({_LABEL_NAME})?$")
ENDPOINT_ID_LABEL = "inference-endpoints.endpoint-id"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by Kubernetes on every namespace


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


def pod_labels(labels: EngineLabels) -> dict[str, str]:
    """The engine pod's labels: the app name (kept when a run's labels replace the default) and ours."""
    return {**APP_LABELS, **engine_labels(labels)}


def kube_literal(value: str) -> str:
    """`value` escaped for a container's command, args or env value.

    The kubelet expands `$(VAR)` there and turns `$$` into `$`; doubling every `$` makes it pass
    any string through unchanged (a lone `$` before anything else is kept as it is).
    """
    return value.replace("$", "$$")


def job_variables(
    instance: InstanceSpec,
    spec: ServingSpec,
    labels: EngineLabels,
    *,
    checkpoint_pvc: str | None = None,
    engine_image: str | None = None,
    engine_port: int = ENGINE_PORT,
    engine_python: str = ENGINE_PYTHON,
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
    plain = {**spec.env, "PYTHONPATH": GUARD_TARGET, GUARD_SOURCE_ENV: GUARD_SOURCE}
    env: list[dict[str, Any]] = [{"name": k, "value": kube_literal(v)} for k, v in sorted(plain.items())]
    env.append({"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": backend_key_secret_name(labels), "key": BACKEND_KEY_FIELD}}})
    mounts: list[dict[str, Any]] = [
        {"name": "checkpoints", "mountPath": m.target, "subPath": m.source.strip("/"), "readOnly": True}
        for m in spec.mounts
    ]
    mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    mounts.extend(dict(m) for m in ENGINE_SCRATCH_MOUNTS)
    pods = pod_labels(labels)
    command = ["sh", "-c", GUARD_BOOT, "ie-engine", engine_python, "-m", ENGINE_MODULE]
    args = [*spec.args, *GUARD_MIDDLEWARE, "--host", "0.0.0.0", "--port", str(engine_port)]
    variables: dict[str, Any] = {
        "name": dns_label(f"ie-{labels.endpoint_name}", limit=50),
        "labels": pods,
        "engine_labels": pods,
        "gpu_count": str(instance.gpu_count),
        "node_selector": {"nvidia.com/gpu.present": "true",
                          "nvidia.com/gpu.product": product or gpu_product(instance)},
        "engine_image": engine_image or instance.image,
        "engine_command": [kube_literal(part) for part in command],
        "engine_args": [kube_literal(arg) for arg in args],
        "engine_env": env,
        "engine_port": engine_port,
        "checkpoint_mounts": mounts,
        "shm_size": f"{SHM_GIB_PER_GPU * instance.gpu_count}Gi",
    }
    if checkpoint_pvc:
        variables["checkpoint_pvc"] = checkpoint_pvc
    return variables


def parse_cidrs(text: str, field: str = "control_plane_cidrs") -> list[str]:
    """Comma-separated addresses or CIDRs as CIDRs (`10.0.0.5` is `10.0.0.5/32`).

    Strict: `10.0.0.5/24` (host bits set) is refused rather than widened to the /24. The
    error names `field`, the setting the text came from.
    """
    cidrs: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            cidrs.append(str(ipaddress.ip_network(item)))
        except ValueError as exc:
            raise ValueError(f"{field}: {item!r} is not an IP address or CIDR ({exc})") from None
    return cidrs


def parse_labels(text: str, field: str = "control_plane_pod_labels") -> dict[str, str]:
    """Comma-separated `key=value` pod labels, checked against Kubernetes' label syntax."""
    labels: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = (p.strip() for p in item.partition("="))
        if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise ValueError(f"{field}: {item!r} is not a key=value Kubernetes label")
        labels[key] = value
    return labels


def network_policy_name(labels: EngineLabels) -> str:
    return dns_label(f"ie-{labels.endpoint_id}-engine")


def endpoint_pod_selector(labels: EngineLabels) -> dict[str, Any]:
    """Every engine pod of this endpoint, whatever its generation (and no other endpoint's)."""
    return {"matchLabels": {**APP_LABELS, ENDPOINT_ID_LABEL: label_value(labels.endpoint_id)}}


def render_engine_network_policy(
    labels: EngineLabels,
    *,
    control_plane_cidrs: Sequence[str] = (),
    control_plane_pods: Mapping[str, str] | None = None,
    control_plane_namespace: str = "",
    namespace: str = "default",
    engine_port: int = ENGINE_PORT,
    exporter_port: int = EXPORTER_PORT,
) -> dict[str, Any]:
    """The endpoint's NetworkPolicy: nothing reaches its engine pods but the control plane and
    the endpoint's own pods, and those only on the engine's (and exporter's) port.

    `control_plane_cidrs` are the gateway's and Prometheus' hosts as the pods see them;
    `control_plane_pods` selects control-plane pods in the cluster (in `control_plane_namespace`,
    default: the policy's own). One of the two is needed: without them no gateway could reach
    the engine, and the endpoint would pass its in-pod probe yet never answer its URL.
    """
    control: list[dict[str, Any]] = [
        {"ipBlock": {"cidr": cidr}} for cidr in parse_cidrs(",".join(control_plane_cidrs))]
    if control_plane_pods:
        peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(control_plane_pods)}}
        if control_plane_namespace:
            peer["namespaceSelector"] = {"matchLabels": {NAMESPACE_NAME_LABEL: control_plane_namespace}}
        control.append(peer)
    if not control:
        raise ValueError("control_plane_cidrs is empty (and so is control_plane_pod_labels): the "
                         "engine's NetworkPolicy would let no gateway or Prometheus reach it; set it "
                         "to the addresses of their hosts")
    pods = endpoint_pod_selector(labels)
    meta = {k: v for k, v in engine_labels(labels).items() if k != "inference-endpoints.serve-run"}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": network_policy_name(labels), "namespace": namespace,
                     "labels": {**APP_LABELS, **meta}},
        "spec": {
            "podSelector": pods,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [*control, {"podSelector": pods}],
                 "ports": [{"protocol": "TCP", "port": engine_port}]},
                {"from": control, "ports": [{"protocol": "TCP", "port": exporter_port}]},
            ],
        },
    }
