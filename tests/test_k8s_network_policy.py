"""Each endpoint's NetworkPolicy: only the control plane and the endpoint's own pods reach its engine.

The policy is validated against the `kubernetes` client's models (strict round trip), and its
meaning is checked with a small reading of NetworkPolicy semantics (`admits`: which peer may open
which TCP port on a selected pod, as the Kubernetes documentation defines it), applied to the
pod labels the worker really renders for this endpoint's serve runs and to other pods. Whether a
cluster's CNI enforces it cannot be shown here (no cluster can run on these machines).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from kubernetes.client import V1NetworkPolicy
from pydantic import ValidationError

from blocks.settings_blocks import EngineHost
from inference_endpoints.adapters.k8s_manifest import (
    ENGINE_PORT,
    job_variables,
    network_policy_name,
    parse_cidrs,
    parse_labels,
    render_engine_network_policy,
)
from inference_endpoints.adapters.runtime.kubernetes import EXPORTER_PORT
from tests.k8s_support import validated, worker_manifest
from tests.test_k8s_manifest import INSTANCES, LABELS, lora_spec

NS = "endpoints"
GATEWAY, PROMETHEUS, ELSEWHERE = "10.0.0.5", "10.0.1.7", "10.0.2.9"
CIDRS = ["10.0.0.5", "10.0.1.0/24"]


@dataclass(frozen=True)
class Source:
    """Who opens a connection: a pod (labels, namespace) or a host outside the cluster."""

    ip: str
    labels: dict[str, str] = field(default_factory=dict)
    namespace: str | None = None  # None: not a pod

    def in_namespace_of(self, selector: dict[str, Any]) -> bool:
        return self.namespace is not None and _matches(selector, {"kubernetes.io/metadata.name": self.namespace})


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels is read here"
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_admits(peer: dict[str, Any], source: Source, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(source.ip)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except") or [])
    if source.namespace is None:
        return False
    in_ns = (source.in_namespace_of(peer["namespaceSelector"]) if "namespaceSelector" in peer
             else source.namespace == policy_ns)
    return in_ns and _matches(peer.get("podSelector") or {}, source.labels)


def admits(policy: dict[str, Any], pod: dict[str, str], source: Source, port: int) -> bool:
    """Whether `source` may open TCP `port` on a pod with labels `pod` in the policy's namespace."""
    spec, policy_ns = policy["spec"], policy["metadata"]["namespace"]
    if not _matches(spec["podSelector"], pod) or "Ingress" not in spec["policyTypes"]:
        return True  # not selected: this policy does not restrict it
    for rule in spec.get("ingress") or []:
        ports_ok = any(p.get("protocol", "TCP") == "TCP" and p["port"] <= port <= p.get("endPort", p["port"])
                       for p in rule.get("ports") or [{"port": 0, "endPort": 65535}])
        peers = rule.get("from") or []  # none listed: every source
        if ports_ok and (not peers or any(_peer_admits(peer, source, policy_ns) for peer in peers)):
            return True
    return False


def rendered_pod_labels(generation: str) -> dict[str, str]:
    """The labels the worker puts on a serve run's pod (prefect-kubernetes' own rendering)."""
    labels = replace(LABELS, serve_run_id=generation)
    variables = job_variables(INSTANCES["h100-80gb-x2"], lora_spec(), labels, checkpoint_pvc="ckpt")
    manifest = worker_manifest({**variables, "namespace": NS})
    pod_labels: dict[str, str] = manifest["spec"]["template"]["metadata"]["labels"]
    return pod_labels


@pytest.fixture(scope="module")
def policy() -> dict[str, Any]:
    return render_engine_network_policy(LABELS, control_plane_cidrs=CIDRS, namespace=NS)


def test_policy_is_a_valid_v1_network_policy(policy: dict[str, Any]) -> None:
    model = validated(policy, "V1NetworkPolicy")
    assert isinstance(model, V1NetworkPolicy)
    assert model.metadata is not None and model.metadata.name == network_policy_name(LABELS)
    assert model.metadata.namespace == NS
    assert model.spec is not None and model.spec.policy_types == ["Ingress"]


def test_it_selects_every_generation_of_this_endpoint_and_nothing_else(policy: dict[str, Any]) -> None:
    selector = policy["spec"]["podSelector"]
    mine = [rendered_pod_labels("g0"), rendered_pod_labels("g1")]  # a rolling replacement
    assert all(_matches(selector, pod) for pod in mine)
    other = {**mine[0], "inference-endpoints.endpoint-id": "ep_other"}
    assert not _matches(selector, other)
    assert not _matches(selector, {"app": "something-else"})


def test_only_the_control_plane_and_the_endpoints_pods_reach_the_engine_port(policy: dict[str, Any]) -> None:
    pod = rendered_pod_labels("g0")
    sibling = Source("10.4.0.2", rendered_pod_labels("g1"), NS)  # the other generation's serve flow
    itself = Source("10.4.0.1", pod, NS)  # the serve flow probing its sidecar at the pod IP
    other_endpoint = Source("10.4.0.3", {**pod, "inference-endpoints.endpoint-id": "ep_other"}, NS)
    same_labels_elsewhere = Source("10.4.0.4", pod, "another-namespace")
    admitted = {GATEWAY: Source(GATEWAY), PROMETHEUS: Source(PROMETHEUS), "self": itself, "sibling": sibling}
    for name, source in admitted.items():
        assert admits(policy, pod, source, ENGINE_PORT), name
    for source in (Source(ELSEWHERE), other_endpoint, same_labels_elsewhere, Source("192.168.0.1")):
        assert not admits(policy, pod, source, ENGINE_PORT), source
    for port in (22, 8001, 8080, 29500, 65535):  # nothing else on the pod, from anyone
        for source in (Source(GATEWAY), sibling, other_endpoint):
            assert not admits(policy, pod, source, port), (source, port)


def test_the_device_exporter_port_is_open_to_the_control_plane_only(policy: dict[str, Any]) -> None:
    pod = rendered_pod_labels("g0")
    assert admits(policy, pod, Source(PROMETHEUS), EXPORTER_PORT)
    assert not admits(policy, pod, Source(ELSEWHERE), EXPORTER_PORT)
    assert not admits(policy, pod, Source("10.4.0.2", rendered_pod_labels("g1"), NS), EXPORTER_PORT)
    assert not admits(policy, pod, Source("10.4.0.3", {**pod, "inference-endpoints.endpoint-id": "x"}, NS),
                      EXPORTER_PORT)


def test_control_plane_pods_in_the_cluster_can_be_admitted_by_labels() -> None:
    policy = render_engine_network_policy(LABELS, control_plane_pods={"app": "ie-gateway"},
                                          control_plane_namespace="ie-system", namespace=NS)
    validated(policy, "V1NetworkPolicy")
    pod = rendered_pod_labels("g0")
    assert admits(policy, pod, Source("10.9.0.1", {"app": "ie-gateway"}, "ie-system"), ENGINE_PORT)
    assert not admits(policy, pod, Source("10.9.0.1", {"app": "ie-gateway"}, NS), ENGINE_PORT)
    assert not admits(policy, pod, Source("10.9.0.2", {"app": "other"}, "ie-system"), ENGINE_PORT)
    assert not admits(policy, pod, Source(GATEWAY), ENGINE_PORT)  # no CIDR given: no host outside


def test_addresses_become_cidrs_and_bad_ones_are_named() -> None:
    assert parse_cidrs(" 10.0.0.5, 10.0.1.0/24,,fd00::/64 ") == ["10.0.0.5/32", "10.0.1.0/24", "fd00::/64"]
    for bad in ("10.0.0.5/24", "10.0.0.300", "gateway.internal", "10.0.0.0/33"):
        with pytest.raises(ValueError, match=rf"control_plane_cidrs: '{bad}' is not an IP address or CIDR"):
            parse_cidrs(f"10.0.0.1,{bad}")
        with pytest.raises(ValueError, match="control_plane_cidrs"):
            render_engine_network_policy(LABELS, control_plane_cidrs=[bad])


def test_engine_host_refuses_a_bad_cidr_or_label_naming_the_field() -> None:
    with pytest.raises(ValidationError, match=r"EngineHost\.control_plane_cidrs: '10\.1\.2\.3/8'"):
        EngineHost(engine_python="python3", run_dir="/tmp/ie", log_dir="/tmp/ie",
                   control_plane_cidrs="10.0.0.5,10.1.2.3/8")
    with pytest.raises(ValidationError, match=r"EngineHost\.control_plane_pod_labels: 'app'"):
        EngineHost(engine_python="python3", run_dir="/tmp/ie", log_dir="/tmp/ie", control_plane_pod_labels="app")
    with pytest.raises(ValidationError, match=r"EngineHost\.control_plane_namespace: 'IE System'"):
        EngineHost(engine_python="python3", run_dir="/tmp/ie", log_dir="/tmp/ie", control_plane_namespace="IE System")
    host = EngineHost(engine_python="python3", run_dir="/tmp/ie", log_dir="/tmp/ie",
                      control_plane_cidrs="10.0.0.5", control_plane_pod_labels="app=gw,tier=edge")
    assert host.control_plane_peers() == {"control_plane_cidrs": ["10.0.0.5/32"],
                                          "control_plane_pods": {"app": "gw", "tier": "edge"},
                                          "control_plane_namespace": ""}


def test_labels_follow_kubernetes_syntax() -> None:
    assert parse_labels("app=gw, example.com/role=gateway,empty=") == {
        "app": "gw", "example.com/role": "gateway", "empty": ""}
    for bad in ("app", "=gw", "app=gw gw", "-app=gw", f"app={'x' * 64}"):
        with pytest.raises(ValueError, match="is not a key=value Kubernetes label"):
            parse_labels(bad)


def test_without_any_control_plane_source_it_refuses_rather_than_fence_the_gateway_out() -> None:
    with pytest.raises(ValueError, match="control_plane_cidrs is empty"):
        render_engine_network_policy(LABELS, namespace=NS)
