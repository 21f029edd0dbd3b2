"""What `--json` prints: one plain dict per thing, built once and shared with the tables.

These fields are a contract with scripts (README, "Machine-readable output"): add
fields freely, never rename or drop one.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from inference_endpoints.cli.common import Context
from inference_endpoints.cli.output import iso
from inference_endpoints.core.catalog import InstanceSpec
from inference_endpoints.persistence.models import Checkpoint, Endpoint
from inference_endpoints.services.replicas import replica_settings
from inference_endpoints.urls import endpoint_urls


def endpoint_summary(ctx: Context, ep: Endpoint, traffic: dict[Any, Any] | None) -> dict[str, Any]:
    """One row of `endpoints list`: what a caller needs (URL, model name) and its state."""
    org = ctx.org_name
    ckpt = ctx.registry.find_checkpoint(ctx.org_id, ep.checkpoint_id)
    stats = traffic.get((org, ep.name)) if traffic is not None else None
    counted = traffic is not None
    urls = endpoint_urls(ep.name, org, ctx.settings)
    return {
        "id": ep.id, "name": ep.name, "status": ep.status, "reason_code": ep.reason_code,
        "model": ep.served_model_name,
        "checkpoint": {"id": ep.checkpoint_id, "name": ckpt.name if ckpt else None},
        "base_model": ckpt.base_model if ckpt else None,
        "instance": ep.instance,
        "replicas": replica_settings(ep),
        # None: the gateway did not answer, so the counts are unknown (not zero)
        "in_flight": (stats.in_flight if stats else 0) if counted else None,
        "requests": (stats.requests if stats else 0) if counted else None,
        # 5xx answers and broken-off streams; 4xx (the caller's own mistakes) are "rejected"
        "errors": (stats.errors if stats else 0) if counted else None,
        "rejected": (stats.counts.rejected if stats else 0) if counted else None,
        "url": f"{urls.url}/v1", "path_url": f"{urls.path_url}/v1",
        "created_at": iso(ep.created_at),
    }


def replica_rows(ctx: Context, ep: Endpoint) -> list[dict[str, Any]]:
    """Each running replica (the live run is slot 0), times as ISO 8601."""
    from inference_endpoints.services.replicas import replica_rows as rows

    return [{k: iso(v) if isinstance(v, datetime) else v for k, v in row.items()}
            for row in rows(ctx.registry, ep)]


def endpoint_detail(ctx: Context, ep: Endpoint) -> dict[str, Any]:
    """`endpoints show --json`: the summary plus configuration, phases, replicas and activity."""
    from inference_endpoints.core.serving_config import ServingSpec

    org = ctx.org_name
    urls = endpoint_urls(ep.name, org, ctx.settings)
    spec = ServingSpec.from_json(ep.serving_config_json)
    document = endpoint_summary(ctx, ep, traffic=None)
    for unknown in ("in_flight", "requests"):  # `show` does not ask the gateway
        document.pop(unknown)
    document.update({
        "reason": ({"code": ep.reason_code, "message": ep.reason_message, "hint": ep.reason_hint}
                   if ep.reason_code else None),
        "health_url": f"{urls.path_url}/health",
        "max_context": ep.max_context, "precision": ep.precision, "quantization": ep.quantization,
        "serve_run_id": ep.serve_run_id,
        "phases": {"requested": iso(ep.created_at), "scheduled": iso(ep.scheduled_at),
                   "loading": iso(ep.loading_at), "healthy": iso(ep.healthy_at),
                   "ended": iso(ep.ended_at)},
        "replica_runs": replica_rows(ctx, ep),
        "serving_config": {"command": spec.command_line(), "env": dict(sorted(spec.env.items())),
                           "mounts": [{"source": m.source, "target": m.target, "read_only": True}
                                      for m in spec.mounts]},
        "activity": [{"at": iso(ev.at), "kind": ev.kind, "from_status": ev.from_status,
                      "to_status": ev.to_status, "reason_code": ev.reason_code,
                      "message": ev.message} for ev in ctx.registry.activity(ep.id)],
    })
    return document


def checkpoint_document(ctx: Context, row: Checkpoint, held_by: list[str] | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": row.id, "name": row.name, "kind": row.kind, "base_model": row.base_model,
        "status": row.status, "digest": row.digest, "size_bytes": row.size_bytes,
        "created_at": iso(row.created_at),
    }
    if held_by is not None:
        document["held_by"] = held_by
    return document


def checkpoint_detail(ctx: Context, row: Checkpoint) -> dict[str, Any]:
    document = checkpoint_document(ctx, row)
    document["storage_location"] = str(ctx.store.path_of(row.location))
    document["facts"] = json.loads(row.facts_json)
    return document


def instance_document(spec: InstanceSpec) -> dict[str, Any]:
    return {
        "name": spec.name, "accelerator": spec.accelerator, "gpu_count": spec.gpu_count,
        "memory_per_device_mib": spec.memory_per_device_mib,
        "precisions": [p for p in spec.precisions if p != "auto"], "fp8": spec.fp8,
        "price_per_hour": spec.price_per_hour, "work_pool": spec.work_pool, "runtime": spec.runtime,
    }
