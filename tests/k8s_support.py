"""Render a serve run's Job manifest with prefect-kubernetes' own worker code (no cluster needed).

`KubernetesWorkerJobConfiguration` is what the Kubernetes worker builds for each flow run: the
pool's base job template filled with the deployment's and the run's job variables, then
`prepare_for_flow_run` (env, labels, command, generated name). Using it, rather than a copy of
its logic, shows the template and the variables our flows pass work with the real worker.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any
from uuid import uuid4

from kubernetes.client import ApiClient
from prefect.client.schemas.objects import FlowRun
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

from deployments.pools import GPU_POOLS

API = ApiClient()


def validated(manifest: dict[str, Any], kind: str) -> Any:
    """A strict round trip through the client's models: unknown or misplaced keys fail too."""
    model = API.deserialize(json.dumps(manifest), kind, "application/json")
    expected = copy.deepcopy(manifest)
    if kind == "V1Job":
        # prefect-kubernetes's own default template (and its manifest check) puts these two Job
        # fields in the pod spec, where Kubernetes ignores them; they are its, not ours.
        pod = expected["spec"]["template"]["spec"]
        assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    assert API.sanitize_for_serialization(model) == expected, "keys the client models do not know"
    return model


def kubernetes_pool_template() -> dict[str, Any]:
    [pool] = [p for p in GPU_POOLS if p.type == "kubernetes"]
    template = pool.job_template()
    assert template is not None
    return template


def worker_manifest(variables: dict[str, Any], *, template: dict[str, Any] | None = None,
                    flow_run: FlowRun | None = None) -> dict[str, Any]:
    """The Job manifest the worker would submit for a run with these job variables."""
    config = run_coro_as_sync(KubernetesWorkerJobConfiguration.from_template_and_values(
        template or kubernetes_pool_template(), dict(variables)))
    assert config is not None
    config.prepare_for_flow_run(flow_run or FlowRun(id=uuid4(), flow_id=uuid4(), name="serve/acme/support-bot"))
    manifest: dict[str, Any] = config.job_manifest
    return manifest


def kubelet_expand(value: str, env: Mapping[str, str] | None = None) -> str:
    """What the kubelet makes of a container's command, arg or env value before it runs.

    A port of Kubernetes' `third_party/forked/golang/expansion.Expand`: `$(NAME)` becomes the
    variable's value (kept as written when undefined), `$$` becomes `$`, any other `$` stays.
    """
    env = env or {}
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] != "$" or i + 1 == len(value):
            out.append(value[i])
            i += 1
            continue
        after = value[i + 1]
        end = value.find(")", i + 2) if after == "(" else -1
        if after == "$":
            out.append("$")
            i += 2
        elif end != -1:
            name = value[i + 2:end]
            out.append(env.get(name, f"$({name})"))
            i = end + 1
        else:  # `$x`, or `$(` with no closing parenthesis
            out.append(value[i:i + 2])
            i += 2
    return "".join(out)
