"""Request and response bodies of the REST API (they are also its OpenAPI schema).

Input fields are loosely typed on purpose: validation reports every bad field at
once in the platform's own problem shape, instead of stopping at the first type error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from inference_endpoints.core.validation import DEFAULT_INSTANCE, DEFAULT_MAX_CONTEXT


class ProblemOut(BaseModel):
    code: str
    field: str
    message: str
    hint: str = ""


class ProblemsOut(BaseModel):
    problems: list[ProblemOut]
    fit: dict[str, str] | None = None


class ScalingIn(BaseModel):
    """The autoscaler's fields, the same on create and on scale."""

    max_replicas: Any = Field(default=None, description="Autoscale up to this many (default: min_replicas)",
                              json_schema_extra={"type": "integer"})
    scale_target: Any = Field(default=None, description="Requests in flight per replica (default 4)",
                              json_schema_extra={"type": "number"})
    scale_down_after_s: Any = Field(default=None, description="Cooldown before scaling down (default 300)",
                                    json_schema_extra={"type": "integer"})


class CreateEndpointIn(ScalingIn):
    name: Any = Field(description="DNS label, unique in the organization; part of the URL",
                      json_schema_extra={"type": "string", "example": "support-bot"})
    checkpoint: Any = Field(description="Checkpoint id or name (your organization's)",
                            json_schema_extra={"type": "string", "example": "demo-tiny-llama"})
    instance: Any = Field(default=DEFAULT_INSTANCE, description="Instance type (GET /api/v1/instances)",
                          json_schema_extra={"type": "string"})
    max_context: Any = Field(default=DEFAULT_MAX_CONTEXT, description="Maximum context length in tokens",
                             json_schema_extra={"type": "integer"})
    precision: Any = Field(default="auto", description="auto, bfloat16, float16 or float32",
                           json_schema_extra={"type": "string"})
    quantization: Any = Field(default="none", description="none, fp8, awq, gptq, bitsandbytes, "
                              "compressed-tensors", json_schema_extra={"type": "string"})
    idle_stop_minutes: Any = Field(default=None, description="Stop after this many idle minutes "
                                   "(empty: never)", json_schema_extra={"type": "integer"})
    min_replicas: Any = Field(default=1, description="Engines kept serving (1 to 8)",
                              json_schema_extra={"type": "integer"})


class IdleStopIn(BaseModel):
    idle_stop_minutes: Any = Field(default=None, description="Minutes without requests before the "
                                   "endpoint is stopped; null or 0 turns auto-stop off",
                                   json_schema_extra={"type": "integer"})


class ReasonOut(BaseModel):
    code: str
    message: str | None
    hint: str | None


class ModelOut(BaseModel):
    base_model: str = Field(description="A LoRA's base checkpoint; for full weights, their architecture")
    architecture: str
    checkpoint_id: str
    checkpoint: str
    kind: str
    checkpoint_status: str
    served_model_name: str


class InstanceRefOut(BaseModel):
    name: str
    accelerator: str
    memory_gib: float
    price_per_hour: float


class ServingOut(BaseModel):
    max_context: int
    precision: str
    quantization: str


class UrlsOut(BaseModel):
    url: str
    path_url: str
    openai_base: str
    openai_base_path: str
    health: str
    health_path: str


class RequestCountsOut(BaseModel):
    """Each status class apart; `errors` is 5xx plus broken-off streams, `rejected` the 4xx."""

    status_2xx: int = Field(alias="2xx")
    status_4xx: int = Field(alias="4xx")
    status_5xx: int = Field(alias="5xx")
    broken_streams: int
    ok: int
    rejected: int
    errors: int


class TrafficOut(BaseModel):
    requests: int
    errors: int = Field(description="5xx answers and streams the backend broke off (4xx are rejections)")
    in_flight: int
    by_class: RequestCountsOut
    last_request_at: datetime | None


class CostOut(BaseModel):
    so_far: float
    price_per_hour: float
    hours: float
    started_at: datetime | None
    ended_at: datetime | None
    currency: str


class IdleOut(BaseModel):
    idle: bool
    reason: str
    idle_seconds: int | None
    auto_stop_minutes: int | None


class ReplicasOut(BaseModel):
    min: int
    max: int
    wanted: int = Field(description="Engines wanted now (the autoscaler's count within min and max)")
    ready: int = Field(description="Engines serving now")
    autoscaled: bool
    scale_target: float = Field(description="Requests in flight per replica the autoscaler aims at")
    scale_down_after_s: int


class ReplicaRunOut(BaseModel):
    replica: int
    phase: str
    address: str | None
    serve_run: str
    flow_run_id: str | None
    queued_message: str | None
    created_at: datetime
    engine_started_at: datetime | None
    ready_at: datetime | None


class ScaleIn(ScalingIn):
    min_replicas: Any = Field(description="Engines kept serving (1 to 8)",
                              json_schema_extra={"type": "integer"})


class EndpointOut(BaseModel):
    id: str
    name: str
    organization: str
    status: str
    phase: str
    reason: ReasonOut | None
    model: ModelOut
    instance: InstanceRefOut
    serving: ServingOut
    urls: UrlsOut
    authentication: str
    traffic: TrafficOut | None = Field(description="Gateway counters; null when the gateway is down")
    created_at: datetime
    healthy_at: datetime | None
    age_seconds: int
    cost: CostOut
    idle: IdleOut
    serve_run_id: str | None
    create_run_id: str | None
    replicas: ReplicasOut


class EndpointDetailOut(EndpointOut):
    serving_config: dict[str, Any]
    replica_runs: list[ReplicaRunOut] = Field(description="Each running replica (the live run is 0)")
    effective: dict[str, Any] = Field(description="What the running engine reports (GET /v1/models)")


class EndpointPageOut(BaseModel):
    items: list[EndpointOut]
    total: int
    limit: int
    offset: int
    cost_total: float = Field(description="The organization's spend so far (USD): every engine it ran, "
                              "removed endpoints' included, so it never decreases")


class StopOut(BaseModel):
    outcome: str
    run_id: str | None
    endpoint: EndpointOut | None


class ActivityOut(BaseModel):
    id: int | None
    endpoint_id: str
    endpoint: str | None
    at: datetime
    kind: str
    from_status: str | None
    to_status: str | None
    reason_code: str | None
    message: str


class HolderOut(BaseModel):
    endpoint: str
    endpoint_id: str
    endpoint_status: str | None
    serve_run: str | None


class CheckpointOut(BaseModel):
    id: str
    name: str
    kind: str
    base_model: str
    base_checkpoint_id: str | None
    size_bytes: int
    digest: str
    architecture: str
    status: str
    created_at: datetime
    deleted_at: datetime | None
    reclaimed_at: datetime | None
    used_by: list[HolderOut]


class CheckpointDetailOut(CheckpointOut):
    facts: dict[str, Any]


class RegisterCheckpointIn(BaseModel):
    path: Any = Field(description="Absolute path of the checkpoint directory on the control plane",
                      json_schema_extra={"type": "string"})
    name: Any = Field(description="Name for the checkpoint", json_schema_extra={"type": "string"})
    base: Any = Field(default=None, description="Base checkpoint of a LoRA adapter",
                      json_schema_extra={"type": "string"})


class DeleteCheckpointOut(BaseModel):
    id: str
    name: str
    status: str
    newly_deleted: bool
    bytes: str = Field(description="`held` while an endpoint run can still read them")
    held_by: list[HolderOut]
    orphaned_adapters: list[str]
    message: str


class InstanceOut(BaseModel):
    name: str
    accelerator: str
    gpu_count: int
    memory_per_device_mib: int
    total_memory_gib: float
    precisions: list[str]
    quantizations: list[str]
    fp8: bool
    price_per_hour: float
    work_pool: str
    description: str


class KeyOut(BaseModel):
    id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class NewKeyOut(KeyOut):
    key: str = Field(description="The key itself: shown only in this response, never again")


class CreateKeyIn(BaseModel):
    name: Any = Field(description="What the key is for", json_schema_extra={"type": "string"})


class OrgOut(BaseModel):
    id: str
    name: str
