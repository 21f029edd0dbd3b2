"""An endpoint's running replicas as the CLI, the API and the console show them: one reading."""

from __future__ import annotations

import json
from typing import Any

from inference_endpoints.core.lifecycle import Role
from inference_endpoints.persistence.models import Endpoint, ServeRun
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.run_facts import wanted_replicas


def replica_phase(run: ServeRun) -> str:
    return ("draining" if run.stop_requested_at else "ready" if run.ready_at
            else "loading" if run.engine_started_at else "queued" if run.queued_message
            else "waiting for a worker" if run.flow_run_id else "recorded")


def replica_rows(registry: Registry, ep: Endpoint) -> list[dict[str, Any]]:
    """Each running replica (the live run is slot 0): phase, address, serve run and timings."""
    rows = []
    for run in registry.runs.of(ep.id):
        if run.ended_at is not None or run.role == Role.CANDIDATE.value:
            continue
        rows.append({
            "replica": 0 if run.role == Role.LIVE.value else run.replica,
            "phase": replica_phase(run), "address": run.backend_url, "serve_run": run.id,
            "flow_run_id": run.flow_run_id, "queued_message": run.queued_message,
            "created_at": run.created_at, "engine_started_at": run.engine_started_at,
            "ready_at": run.ready_at,
        })
    return sorted(rows, key=lambda r: r["replica"])


def replica_settings(ep: Endpoint) -> dict[str, Any]:
    """The bounds, the autoscaler's count now and its settings, and how many replicas serve."""
    return {"min": ep.min_replicas, "max": ep.max_replicas, "wanted": wanted_replicas(ep),
            "ready": len(json.loads(ep.backend_urls)) if ep.backend_urls else 0,
            "autoscaled": ep.max_replicas > ep.min_replicas, "scale_target": ep.scale_target,
            "scale_down_after_s": ep.scale_down_after_s}
