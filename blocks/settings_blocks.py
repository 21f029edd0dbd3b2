"""Configuration that lives in Prefect, so every worker (on any host) finds the same things.

Registered with `prefect block register -m blocks.settings_blocks`; documents named
`default` are saved by `endpoints up`. Method names avoid Block's own (`save`,
`load`, `delete`, ...).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from inference_endpoints.adapters.k8s_manifest import dns_label, parse_cidrs, parse_labels
from inference_endpoints.adapters.runtime import model_root_resolver
from inference_endpoints.adapters.runtime.kubernetes import KubeCluster
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import LocalCheckpointStore
from inference_endpoints.services.import_roots import SourcePolicy
from inference_endpoints.settings import Settings


class RegistryDatabase(Block):
    """Where the endpoint registry lives (SQLite file or PostgreSQL URL)."""

    _block_type_name = "Registry Database"
    _block_type_slug = "registry-database"
    _description = "Connection URL of the Inference Endpoints registry."

    url: SecretStr = Field(description="SQLAlchemy URL, e.g. postgresql://user@host/db")

    def registry(self) -> Registry:
        return Registry(self.url.get_secret_value())


class CheckpointStoreConfig(Block):
    """Where checkpoint bytes are kept. `local` is a filesystem root shared by the workers."""

    _block_type_name = "Checkpoint Store"
    _block_type_slug = "checkpoint-store"
    _description = "Root of the checkpoint store that endpoints mount read-only."

    kind: str = Field(default="local", description="Store implementation (local)")
    root: str = Field(description="Filesystem root of the store")
    imports_root: str = Field(default="", description="Parent of the organizations' drop folders "
                              "(`<imports_root>/<org>`, import roots all); empty: `$IE_DATA_DIR/imports`")

    def open_store(self) -> LocalCheckpointStore:
        if self.kind != "local":
            raise ValueError(f"unknown checkpoint store kind {self.kind!r}")
        return LocalCheckpointStore(Path(self.root))

    def source_policy(self) -> SourcePolicy:
        """Where organizations may register checkpoints from, as the flows on this host see it."""
        settings = Settings()
        policy = SourcePolicy.from_settings(settings, store_root=Path(self.root))
        if self.imports_root:
            policy = replace(policy, imports_dir=Path(self.imports_root))
        return policy


class EngineHost(Block):
    """How a work pool's hosts run the engine (interpreter, address to bind)."""

    _block_type_name = "Engine Host"
    _block_type_slug = "engine-host"
    _description = "Per-pool engine settings for serve runs."

    engine_python: str = Field(description="Python interpreter that has vLLM installed")
    backend_host: str = Field(default="127.0.0.1", description="Internal address engines bind")
    run_dir: str = Field(description="Per-endpoint scratch (mount points) on the host")
    log_dir: str = Field(description="Engine logs on the host")
    readonly_mode: str = Field(default="auto", description="auto, bind or permissions")
    runtime: str = Field(default="",
                         description="Override the instance's runtime: process, docker or sidecar")
    image: str = Field(default="", description="Engine image for the docker runtime (overrides the catalog)")
    docker_host: str = Field(default="", description="Docker daemon URL, e.g. unix:///run/docker.sock")
    kubeconfig: str = Field(default="", description="Kubernetes pools: kubeconfig file (empty: in-cluster, "
                            "then ~/.kube/config)")
    kube_context: str = Field(default="", description="Kubernetes pools: kubeconfig context (empty: current)")
    namespace: str = Field(default="default", description="Kubernetes pools: namespace of serve Jobs and "
                           "engine Secrets")
    checkpoint_pvc: str = Field(default="inference-endpoints-checkpoints",
                                description="Kubernetes pools: PVC holding the checkpoint store")
    control_plane_cidrs: str = Field(
        default="", description="Kubernetes pools: comma-separated addresses or CIDRs of the control "
        "plane's hosts (the gateway and Prometheus, as the engine pods see them, e.g. "
        "10.0.0.5,10.0.1.0/24). Each endpoint's NetworkPolicy lets only these, the pods below and "
        "the endpoint's own pods reach its engine; one of the two is required")
    control_plane_pod_labels: str = Field(
        default="", description="Kubernetes pools: labels (key=value,...) of control-plane pods in "
        "the cluster (gateway, Prometheus) the engines' NetworkPolicy also admits; empty: none")
    control_plane_namespace: str = Field(
        default="", description="Kubernetes pools: namespace of those pods (empty: the engines' namespace)")

    @field_validator("control_plane_cidrs")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        parse_cidrs(value, "EngineHost.control_plane_cidrs")
        return value

    @field_validator("control_plane_pod_labels")
    @classmethod
    def _pod_labels(cls, value: str) -> str:
        parse_labels(value, "EngineHost.control_plane_pod_labels")
        return value

    @field_validator("control_plane_namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if value and dns_label(value) != value:
            raise ValueError(f"EngineHost.control_plane_namespace: {value!r} is not a namespace name")
        return value

    def runtime_for(self, instance_runtime: str) -> str:
        return self.runtime or instance_runtime

    def model_root(self, instance_runtime: str, endpoint_id: str, generation: int = 0) -> str:
        """Where the endpoint's checkpoints appear to engines on this pool (override applied)."""
        return model_root_resolver(Path(self.run_dir), generation)(
            self.runtime_for(instance_runtime), endpoint_id)

    def cluster(self) -> KubeCluster:
        return KubeCluster(self.kubeconfig, self.namespace, self.kube_context)

    def control_plane_peers(self) -> dict[str, Any]:
        """Who may reach this pool's engines: the keyword arguments of
        `k8s_manifest.render_engine_network_policy`."""
        return {"control_plane_cidrs": parse_cidrs(self.control_plane_cidrs),
                "control_plane_pods": parse_labels(self.control_plane_pod_labels),
                "control_plane_namespace": self.control_plane_namespace}
