"""Work pools the deployments run on, with the capacity each one models.

`POOLS` are served on this host (the local stack starts a process worker for each);
`GPU_POOLS` are served by workers on GPU hosts (see the README, "Adding a GPU host"), with
the base job templates in `deployments/docker/` and `deployments/k8s/`. `ensure_pools`
creates all of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Pool:
    name: str
    type: str
    concurrency: int | None  # how many runs the pool's hosts can hold at once
    description: str
    base_job_template: Path | None = None  # None: the process worker's default

    def job_template(self) -> dict[str, Any] | None:
        """This pool's own base job template, if it has one.

        Docker and Kubernetes pools use hand-written templates derived from prefect-docker
        0.7.4 and prefect-kubernetes 0.8.0, so neither package is needed to create the pools.
        """
        if self.base_job_template is None:
            return None
        template: dict[str, Any] = json.loads(self.base_job_template.read_text())
        return template


POOLS: tuple[Pool, ...] = (
    Pool("control-plane", "process", None, "Short orchestration flows: create, stop, collect"),
    # This machine: 2 cores and 24 GiB; each tiny CPU engine takes ~1.5 GiB and a core.
    Pool("cpu-dev", "process", 4, "vLLM-CPU engines on this host"),
)

GPU_POOLS: tuple[Pool, ...] = (
    # Docker hosts: the serve flow runs in a container and starts the engine as a sibling
    # container with the instance's GPUs (docker runtime); one worker per host.
    Pool("gpu-docker", "docker", None, "vLLM engines in containers on Docker GPU hosts",
         TEMPLATES / "docker" / "base-job-template.json"),
    # Kubernetes: one Job per serve run, the engine a sidecar holding nvidia.com/gpu.
    Pool("gpu-kubernetes", "kubernetes", None, "vLLM engines as GPU pods on Kubernetes",
         TEMPLATES / "k8s" / "base-job-template.json"),
)
ALL_POOLS: tuple[Pool, ...] = POOLS + GPU_POOLS
