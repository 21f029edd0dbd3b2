"""The engine on Kubernetes: a native sidecar of the serve run's pod, and the cluster calls around it.

On the `gpu-kubernetes` pool the worker creates one Job per serve run (`k8s_manifest.py`): the
serve flow is the pod's main container and vLLM its `engine` sidecar, started by the kubelet
before the flow with the GPUs and the read-only checkpoint mounts. So the serve flow does not
start or stop the engine itself (`SidecarRuntime`): the engine answers on the pod's IP, Kubernetes
restarts it if it crashes (the flow's health probes turn the endpoint unhealthy meanwhile), and
the kubelet stops it when the flow's container ends — also when that container is killed, so a
dead serve run never leaves an engine serving.

`KubeCluster` holds the calls the control plane makes: the endpoint's backend key Secret and
its engine NetworkPolicy (both created before a serve run, deleted when the endpoint ends) and
the engine's log lines.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from inference_endpoints.adapters.runtime import CONTAINER_MODEL_ROOT
from inference_endpoints.adapters.runtime.base import EngineHandle, EngineLabels
from inference_endpoints.core.serving_config import ServingSpec

ENGINE_CONTAINER = "engine"
POD_IP_ENV = "IE_POD_IP"  # set by the pool's job template from the pod's status.podIP
# The serve run's device exporter in the pod: a fixed port, the only one besides the engine's
# that the endpoint's NetworkPolicy opens (to the control plane's Prometheus).
EXPORTER_PORT = 9400


def exporter_address(runtime_kind: str, backend_host: str) -> tuple[str, int]:
    """Where a serve run's device exporter listens: in a pod, the pod IP's `EXPORTER_PORT`
    (where Prometheus may reach it); elsewhere a free port of the backend host."""
    pod_ip = os.environ.get(POD_IP_ENV)
    if runtime_kind == SidecarRuntime.kind and pod_ip:
        return pod_ip, EXPORTER_PORT
    return backend_host, 0


class KubeCluster:
    """The Kubernetes API as the control plane and serve runs use it (kubernetes client)."""

    def __init__(self, kubeconfig: str = "", namespace: str = "default", context: str = "") -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.context = context

    def _api(self) -> Any:
        from kubernetes import client, config

        if self.kubeconfig:
            return config.new_client_from_config(config_file=self.kubeconfig, context=self.context or None)
        try:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except config.ConfigException:
            return config.new_client_from_config(context=self.context or None)

    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self._api())

    def _networking(self) -> Any:
        from kubernetes import client

        return client.NetworkingV1Api(self._api())

    def ensure_secret(self, manifest: dict[str, Any]) -> None:
        """Create the Secret, or replace it if it exists (retries and restarts are safe)."""
        core = self._core()
        self._create_or_replace(core.create_namespaced_secret, core.replace_namespaced_secret, manifest)

    def delete_secret(self, name: str) -> bool:
        """Delete the Secret; False if there was none."""
        return self._delete(self._core().delete_namespaced_secret, name)

    def ensure_network_policy(self, manifest: dict[str, Any]) -> None:
        """Create the NetworkPolicy, or replace it if it exists (a new generation, a retry)."""
        net = self._networking()
        self._create_or_replace(net.create_namespaced_network_policy,
                                net.replace_namespaced_network_policy, manifest)

    def delete_network_policy(self, name: str) -> bool:
        """Delete the NetworkPolicy; False if there was none."""
        return self._delete(self._networking().delete_namespaced_network_policy, name)

    def _create_or_replace(self, create: Callable[..., Any], replace: Callable[..., Any],
                           manifest: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            create(self.namespace, manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise
            replace(manifest["metadata"]["name"], self.namespace, manifest)

    def _delete(self, delete: Callable[..., Any], name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            delete(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def container_log(self, pod: str, container: str, lines: int) -> list[str]:
        text: str = self._core().read_namespaced_pod_log(
            pod, self.namespace, container=container, tail_lines=lines)
        return text.splitlines()


class SidecarEngine:
    """The pod's engine sidecar, as the serve flow in the same pod sees it."""

    def __init__(self, url: str, pod: str, cluster: KubeCluster | None) -> None:
        self._url = url
        self._pod = pod
        self._cluster = cluster

    @property
    def url(self) -> str:
        return self._url

    def exit_code(self) -> int | None:
        """Never final: the kubelet restarts a crashed sidecar; health probes report the gap."""
        return None

    def tail(self, lines: int = 20) -> list[str]:
        if self._cluster is None:
            return []
        try:
            return self._cluster.container_log(self._pod, ENGINE_CONTAINER, lines)
        except Exception as exc:  # logs are a diagnostic; RBAC may not allow them
            return [f"(engine log unavailable: {exc})"]

    def stop(self, grace_s: float = 10.0) -> None:
        """Nothing to do: the kubelet stops the sidecar when the serve flow's container ends."""


class SidecarRuntime:
    """The serve flow's view of an engine Kubernetes runs next to it in the same pod."""

    kind = "sidecar"

    def __init__(self, engine_port: int, cluster: KubeCluster | None = None) -> None:
        self.engine_port = engine_port
        self.cluster = cluster

    def model_root(self, endpoint_id: str) -> str:
        return CONTAINER_MODEL_ROOT

    def start(self, spec: ServingSpec, *, sources: dict[str, Path], host: str, port: int,
              labels: EngineLabels, log_path: Path) -> EngineHandle:
        """Point at the sidecar (already started by the kubelet with `spec`'s arguments)."""
        pod_ip = os.environ.get(POD_IP_ENV) or "127.0.0.1"
        pod = os.environ.get("HOSTNAME", "")
        return SidecarEngine(f"http://{pod_ip}:{self.engine_port}", pod, self.cluster)

    def leftovers(self, endpoint_id: str) -> Sequence[EngineHandle]:
        """None can outlive its pod: the sidecar ends with the serve flow's container."""
        return []

