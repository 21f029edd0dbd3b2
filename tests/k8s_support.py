"""Render a serve run's Job manifest with prefect-kubernetes' own worker code (no cluster needed).

`KubernetesWorkerJobConfiguration` is what the Kubernetes worker builds for each flow run: the
pool's base job template filled with the deployment's and the run's job variables, then
`prepare_for_flow_run` (env, labels, command, generated name). Using it, rather than a copy of
its logic, shows the template and the variables our flows pass work with the real worker.
"""

from __future__ import annotations

import copy
import json
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
