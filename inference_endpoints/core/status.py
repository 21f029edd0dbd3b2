"""Statuses, reason codes and the allowed transitions between them.

Status says *what* an endpoint is doing; the reason code says *why* it ended
up there. Both are shown to users, so each reason carries a default hint.
"""

from __future__ import annotations

from enum import StrEnum


class EndpointStatus(StrEnum):
    PENDING = "pending"
    DEPLOYING = "deploying"
    LOADING = "loading"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def is_starting(self) -> bool:
        return self in STARTING_STATUSES


TERMINAL_STATUSES = frozenset({EndpointStatus.STOPPED, EndpointStatus.FAILED})
STARTING_STATUSES = frozenset(
    {EndpointStatus.PENDING, EndpointStatus.DEPLOYING, EndpointStatus.LOADING}
)

_S = EndpointStatus
ALLOWED_TRANSITIONS: dict[EndpointStatus, frozenset[EndpointStatus]] = {
    _S.PENDING: frozenset({_S.DEPLOYING, _S.LOADING, _S.HEALTHY, _S.STOPPING, _S.FAILED}),
    # A restarted endpoint that dies again while starting goes back to unhealthy, so the
    # restart policy (not the first-start timeout) decides what happens next.
    _S.DEPLOYING: frozenset({_S.LOADING, _S.HEALTHY, _S.UNHEALTHY, _S.STOPPING, _S.FAILED}),
    _S.LOADING: frozenset({_S.HEALTHY, _S.UNHEALTHY, _S.STOPPING, _S.FAILED}),
    _S.HEALTHY: frozenset({_S.UNHEALTHY, _S.STOPPING, _S.FAILED}),
    _S.UNHEALTHY: frozenset(
        {_S.HEALTHY, _S.DEPLOYING, _S.LOADING, _S.STOPPING, _S.FAILED}
    ),
    _S.STOPPING: frozenset({_S.STOPPED, _S.FAILED}),
    _S.STOPPED: frozenset(),
    _S.FAILED: frozenset(),
}


def can_transition(current: EndpointStatus, target: EndpointStatus) -> bool:
    return target in ALLOWED_TRANSITIONS[current]


def sources_for(target: EndpointStatus) -> frozenset[EndpointStatus]:
    """Statuses from which `target` may be entered (used by guarded updates)."""
    return frozenset(s for s, targets in ALLOWED_TRANSITIONS.items() if target in targets)


class ReasonCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    DOES_NOT_FIT = "does_not_fit"
    DEPLOY_FAILED = "deploy_failed"
    DEPLOY_TIMEOUT = "deploy_timeout"
    ENGINE_EXITED = "engine_exited"
    HEALTH_TIMEOUT = "health_timeout"
    STOPPED_BY_USER = "stopped_by_user"
    WORKER_LOST = "worker_lost"
    RUN_ENDED = "run_ended"
    CHECKPOINT_UNAVAILABLE = "checkpoint_unavailable"
    HEALTH_CHECK_FAILED = "health_check_failed"
    RESTART_LIMIT = "restart_limit"
    IDLE_TIMEOUT = "idle_timeout"
    QUEUED_FOR_CAPACITY = "queued_for_capacity"  # not a failure: it starts when a slot frees


REASON_HINTS: dict[ReasonCode, str] = {
    ReasonCode.INVALID_REQUEST: "Fix the fields named in the error and create the endpoint again.",
    ReasonCode.DOES_NOT_FIT: "Lower --max-context or pick a larger instance (see `endpoints instances`).",
    ReasonCode.DEPLOY_FAILED: "Check that the work pool has a running worker (`endpoints status`).",
    ReasonCode.DEPLOY_TIMEOUT: (
        "No worker picked up the serve run in time: start one for the instance's work pool "
        "(`endpoints up`) or raise the instance's startup timeout."
    ),
    ReasonCode.ENGINE_EXITED: "Read the engine's last log lines above; the checkpoint may be damaged.",
    ReasonCode.HEALTH_TIMEOUT: (
        "The engine did not become healthy in time; raise the instance's startup timeout "
        "or use a smaller max context."
    ),
    ReasonCode.STOPPED_BY_USER: "Create the endpoint again to serve it.",
    ReasonCode.WORKER_LOST: "The host or worker serving this endpoint went away; create it again.",
    ReasonCode.RUN_ENDED: "The serve run ended unexpectedly; see its logs in Prefect.",
    ReasonCode.CHECKPOINT_UNAVAILABLE: "Register the checkpoint again or pick another one.",
    ReasonCode.HEALTH_CHECK_FAILED: (
        "The engine stopped answering /health; it is restarted if it does not recover."
    ),
    ReasonCode.IDLE_TIMEOUT: "Stopped after receiving no requests; create it again when needed.",
    ReasonCode.QUEUED_FOR_CAPACITY: (
        "Every slot of the instance's work pool is taken: it starts when one frees. Stop an "
        "endpoint on that pool, or raise the pool's limit "
        "(`prefect work-pool set-concurrency-limit POOL N`) if its hosts can hold more."
    ),
    ReasonCode.RESTART_LIMIT: (
        "The endpoint kept crashing; read the engine log (`endpoints show`) and create it again."
    ),
}


class CheckpointStatus(StrEnum):
    AVAILABLE = "available"
    DELETED = "deleted"
    RECLAIMING = "reclaiming"
    RECLAIMED = "reclaimed"


class CheckpointKind(StrEnum):
    FULL = "full"
    LORA = "lora"


class Precision(StrEnum):
    AUTO = "auto"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class Quantization(StrEnum):
    """Serving-time quantization methods the platform knows how to check."""

    NONE = "none"
    FP8 = "fp8"
    AWQ = "awq"
    GPTQ = "gptq"
    BITSANDBYTES = "bitsandbytes"
    COMPRESSED_TENSORS = "compressed-tensors"


# Methods that only make sense when the checkpoint was already quantized with them.
PRE_QUANTIZED_METHODS = frozenset(
    {Quantization.AWQ, Quantization.GPTQ, Quantization.COMPRESSED_TENSORS}
)
