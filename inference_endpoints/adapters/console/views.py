"""What the list, the detail page and the API show about an endpoint, built from registry rows.

Pure: rows, gateway traffic and `now` in, a flat view out; one builder for the
pages and the API so they never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from inference_endpoints.adapters.console.traffic import NO_TRAFFIC, Traffic
from inference_endpoints.core.catalog import InstanceSpec
from inference_endpoints.core.cost import (
    CostSoFar,
    EngineSpan,
    IdleVerdict,
    aware,
    decide_idle,
    endpoint_cost,
)
from inference_endpoints.persistence.models import Checkpoint, Endpoint
from inference_endpoints.services.replicas import replica_settings
from inference_endpoints.settings import Settings
from inference_endpoints.urls import endpoint_urls

PHASES = {
    "pending": "queued: the create flow is picking it up",
    "deploying": "waiting for a worker to start the serve run",
    "loading": "engine started, loading the model",
    "healthy": "serving",
    "unhealthy": "not answering its health check",
    "stopping": "stopping the engine",
    "stopped": "not serving: its URL answers 503 until it is started again",
    "failed": "not serving",
}
CHANGING = frozenset({"pending", "deploying", "loading", "unhealthy", "stopping"})
STARTING = ("pending", "deploying", "loading")


@dataclass(frozen=True)
class EndpointView:
    id: str
    name: str
    org: str
    status: str
    phase: str
    reason_code: str | None
    reason_message: str | None
    reason_hint: str | None
    checkpoint_id: str
    checkpoint_name: str
    checkpoint_kind: str
    checkpoint_status: str
    base_model: str  # a LoRA's base checkpoint; for full weights (API, kept) their architecture
    architecture: str
    instance: str
    accelerator: str
    memory_gib: float
    max_context: int
    precision: str
    quantization: str
    url: str
    path_url: str
    model: str
    traffic: Traffic | None  # None when the gateway is not answering
    created_at: datetime
    healthy_at: datetime | None
    age: timedelta
    cost: CostSoFar
    idle: IdleVerdict
    idle_stop_minutes: int | None
    serve_run_id: str | None
    create_run_id: str | None
    replicas: dict[str, Any]  # bounds, the autoscaler's count, how many serve (services.replicas)

    @property
    def changing(self) -> bool:
        return self.status in CHANGING

    @property
    def starting(self) -> bool:
        return self.status in STARTING

    @property
    def terminal(self) -> bool:
        return self.status in ("stopped", "failed")

    @property
    def health_url(self) -> str:
        return f"{self.url}/health"

    @property
    def health_path_url(self) -> str:
        return f"{self.path_url}/health"

    @property
    def model_label(self) -> str:
        return f"{self.base_model} + {self.checkpoint_name}"

    @property
    def requests(self) -> int | None:
        return self.traffic.requests if self.traffic is not None else None

    def to_dict(self) -> dict[str, Any]:
        """The API's shape (see schemas.EndpointOut)."""
        t = self.traffic
        return {
            "id": self.id, "name": self.name, "organization": self.org, "status": self.status,
            "phase": self.phase,
            "reason": ({"code": self.reason_code, "message": self.reason_message,
                        "hint": self.reason_hint} if self.reason_code else None),
            "model": {"base_model": self.base_model, "architecture": self.architecture,
                      "checkpoint_id": self.checkpoint_id,
                      "checkpoint": self.checkpoint_name, "kind": self.checkpoint_kind,
                      "checkpoint_status": self.checkpoint_status, "served_model_name": self.model},
            "instance": {"name": self.instance, "accelerator": self.accelerator,
                         "memory_gib": self.memory_gib,
                         "price_per_hour": self.cost.price_per_hour},
            "serving": {"max_context": self.max_context, "precision": self.precision,
                        "quantization": self.quantization},
            "urls": {"url": self.url, "path_url": self.path_url,
                     "openai_base": f"{self.url}/v1", "openai_base_path": f"{self.path_url}/v1",
                     "health": self.health_url, "health_path": self.health_path_url},
            "authentication": "Authorization: Bearer <your organization's API key>",
            "traffic": ({"requests": t.requests, "errors": t.errors, "in_flight": t.in_flight,
                         "by_class": t.counts.as_dict(), "last_request_at": t.last_request_at}
                        if t is not None else None),
            "created_at": self.created_at, "healthy_at": self.healthy_at,
            "age_seconds": int(self.age.total_seconds()),
            "cost": {"so_far": self.cost.amount, "price_per_hour": self.cost.price_per_hour,
                     "hours": round(self.cost.hours, 6), "started_at": self.cost.started_at,
                     "ended_at": self.cost.ended_at, "currency": "USD"},
            "idle": {"idle": self.idle.idle, "reason": self.idle.reason,
                     "idle_seconds": (int(self.idle.idle_for.total_seconds())
                                      if self.idle.idle_for is not None else None),
                     "auto_stop_minutes": self.idle_stop_minutes},
            "serve_run_id": self.serve_run_id, "create_run_id": self.create_run_id,
            "replicas": self.replicas,
        }


def build_view(ep: Endpoint, *, org_name: str, checkpoint: Checkpoint | None,
               instance: InstanceSpec | None, spans: list[EngineSpan],
               traffic: dict[tuple[str, str], Traffic] | None, now: datetime,
               idle_threshold: timedelta, settings: Settings) -> EndpointView:
    urls = endpoint_urls(ep.name, org_name, settings)
    price = instance.price_per_hour if instance is not None else 0.0
    cost = endpoint_cost(spans, price, now)
    seen = None if traffic is None else traffic.get((org_name, ep.name), NO_TRAFFIC)
    idle = decide_idle(status=ep.status, healthy_at=ep.healthy_at,
                       last_request_at=seen.last_request_at if seen else None,
                       in_flight=seen.in_flight if seen else 0, now=now, threshold=idle_threshold)
    phase = PHASES.get(ep.status, ep.status)
    if ep.status in ("failed", "unhealthy") and ep.reason_message:
        phase = f"{phase}: {ep.reason_message.splitlines()[0]}"
    created = aware(ep.created_at)
    assert created is not None
    return EndpointView(
        id=ep.id, name=ep.name, org=org_name, status=ep.status, phase=phase,
        reason_code=ep.reason_code, reason_message=ep.reason_message, reason_hint=ep.reason_hint,
        checkpoint_id=ep.checkpoint_id,
        checkpoint_name=checkpoint.name if checkpoint else ep.checkpoint_id,
        checkpoint_kind=checkpoint.kind if checkpoint else "?",
        checkpoint_status=checkpoint.status if checkpoint else "?",
        base_model=checkpoint.base_model if checkpoint else "?",
        architecture=checkpoint.architecture if checkpoint else "?",
        instance=ep.instance,
        accelerator=instance.accelerator if instance else "?",
        memory_gib=round(instance.total_memory_mib / 1024, 1) if instance else 0.0,
        max_context=ep.max_context, precision=ep.precision, quantization=ep.quantization,
        url=urls.url, path_url=urls.path_url, model=ep.served_model_name or ep.name, traffic=seen,
        created_at=created, healthy_at=aware(ep.healthy_at), age=max(timedelta(0), now - created),
        cost=cost, idle=idle, idle_stop_minutes=ep.idle_stop_minutes,
        serve_run_id=ep.serve_run_id, create_run_id=ep.create_run_id,
        replicas=replica_settings(ep),
    )
