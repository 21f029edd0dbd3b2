"""Use cases shared by the CLI, the API and the flows: register a checkpoint, plan an endpoint.

Each one checks everything first and writes last, so a rejected request leaves
nothing behind.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inference_endpoints.core.bounds import name_too_long, path_problems
from inference_endpoints.core.errors import CheckpointError, Problem, RequestInvalid, shown
from inference_endpoints.core.serving_config import ServingSpec, render
from inference_endpoints.core.status import CheckpointKind, CheckpointStatus, EndpointStatus
from inference_endpoints.core.validation import CreateRequest, ValidatedCreate, validate_create
from inference_endpoints.persistence.models import Checkpoint, Endpoint, new_id
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import CheckpointStore
from inference_endpoints.services.checkpoints import checkpoint_digest, inspect_checkpoint
from inference_endpoints.services.import_roots import SourcePolicy, check_source

CHECKPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def register_checkpoint(
    registry: Registry,
    store: CheckpointStore,
    org_id: str,
    source: Path | str,
    name: str,
    base: str | None = None,
    *,
    sources: SourcePolicy,
) -> Checkpoint:
    """Inspect `source`, copy it into the store, and record it. All-or-nothing.

    `source` must lie inside one of the organization's import roots (`sources`); that is
    checked before anything else looks at it, and everything after reads its real path.
    """
    problems = name_problems(registry, org_id, name, base)
    raw = source if isinstance(source, str) else str(source)
    path_bad = path_problems(raw)
    if path_bad:
        raise RequestInvalid([*problems, *path_bad])
    org = registry.get_org(org_id)
    if org is None:
        raise RequestInvalid([*problems, Problem("org_not_found", "org", "No such organization.")])
    try:
        real = check_source(registry, sources, org, raw)
    except RequestInvalid as exc:
        raise RequestInvalid([*problems, *exc.problems]) from None
    try:
        facts = inspect_checkpoint(real)
    except CheckpointError as exc:
        raise RequestInvalid([*problems, exc.problem]) from None
    base_row: Checkpoint | None = None
    if facts.kind == CheckpointKind.LORA:
        assert facts.lora is not None
        base_ref = base or facts.lora.base_model
        base_row = registry.find_checkpoint(org_id, base_ref, available_only=True)
        if base_row is None or base_row.kind != CheckpointKind.FULL:
            problems.append(Problem(
                "base_not_found", "base",
                f"The adapter's base model {shown(base_ref)} is not an available full checkpoint "
                "in this organization.",
                "Register the base checkpoint first, or name it with --base.",
            ))
    elif base is not None:
        problems.append(Problem(
            "unexpected_base", "base", "Only LoRA adapters take a base checkpoint.",
            "Drop --base for a full checkpoint.",
        ))
    if problems:
        raise RequestInvalid(problems)
    ckpt_id = new_id("ckpt")
    location = f"{org_id}/{ckpt_id}"
    stored = store.import_dir(real, location)
    try:
        row = Checkpoint(
            id=ckpt_id,
            org_id=org_id,
            name=name,
            kind=facts.kind.value,
            base_model=base_row.name if base_row else facts.architecture,
            base_checkpoint_id=base_row.id if base_row else None,
            location=location,
            size_bytes=facts.total_bytes,
            digest=checkpoint_digest(stored),
            architecture=facts.architecture,
            facts_json=facts.to_json(),
            status=CheckpointStatus.AVAILABLE,
        )
        return registry.add_checkpoint(row)
    except BaseException:
        store.reclaim(location)  # never leave unrecorded bytes behind
        raise


def name_problems(registry: Registry, org_id: str, name: str, base: str | None) -> list[Problem]:
    """The name's and base's problems; long ones are named, never echoed whole."""
    problems: list[Problem] = []
    too_long = name_too_long(name, "name")
    if too_long is not None:
        problems.append(too_long)
    elif not isinstance(name, str) or not CHECKPOINT_NAME.match(name):
        problems.append(Problem(
            "invalid_name", "name", f"{shown(name)} is not a valid checkpoint name.",
            "Use up to 128 letters, digits, dots, hyphens and underscores.",
        ))
    elif registry.checkpoint_name_taken(org_id, name):
        problems.append(Problem(
            "name_taken", "name", f"A checkpoint named {shown(name)} already exists.",
            "Pick another name, or delete the existing checkpoint first.",
        ))
    base_long = name_too_long(base, "base")
    if base_long is not None:
        problems.append(base_long)
    return problems


@dataclass(frozen=True)
class Plan:
    endpoint_id: str
    request: ValidatedCreate
    spec: ServingSpec


def plan_create(
    registry: Registry,
    org_id: str,
    request: CreateRequest,
    model_root_for: Callable[[str, str], str],
    endpoint_id: str | None = None,
) -> Plan:
    """Validate and render; writes nothing. `model_root_for(runtime, endpoint_id)`."""
    endpoint_id = endpoint_id or new_id("ep")
    validated = validate_create(
        request,
        checkpoint=registry.checkpoint_view(org_id, request.checkpoint),
        name_taken=registry.endpoint_name_taken(org_id, request.name),
        instances=registry.instances(),
    )
    spec = render(
        validated,
        model_root=model_root_for(validated.instance.runtime, endpoint_id),
        api_key=f"be_{secrets.token_urlsafe(24)}",
    )
    return Plan(endpoint_id, validated, spec)


def start_again(registry: Registry, org_id: str, ref: str) -> Endpoint:
    """Serve a stopped (or failed) endpoint again with its name, URL and configuration.

    Validated like a create against today's checkpoint and catalog (a deleted checkpoint,
    or an instance that no longer fits it, is refused with the field and a fix) before the
    guarded write; the reconciler submits the new live run. A refusal writes nothing.
    """
    ep = registry.find_endpoint(org_id, ref)
    if ep is None:
        raise RequestInvalid.single("endpoint_not_found", "name", f"No endpoint {shown(ref)}.",
                                    "`endpoints list` shows this organization's endpoints.")
    if ep.status not in (EndpointStatus.STOPPED.value, EndpointStatus.FAILED.value):
        raise RequestInvalid.single(
            "endpoint_not_stopped", "name", f"{ep.name} is {ep.status}: only a stopped or failed "
            "endpoint can be started.",
            "Wait until it has stopped (`endpoints show`), or leave it serving.")
    checkpoint = registry.checkpoint_view(org_id, ep.checkpoint_id)
    request = CreateRequest(ep.name, ep.checkpoint_id, ep.instance, ep.max_context, ep.precision,
                            ep.quantization)
    validated = validate_create(request, checkpoint=checkpoint, name_taken=False,
                                instances=registry.instances())
    leased = [validated.checkpoint.id] + ([validated.checkpoint.base.id] if validated.checkpoint.base else [])
    if registry.runs.start_again(ep.id, leased) is None:  # it changed since it was read
        raise RequestInvalid.single("endpoint_not_stopped", "name",
                                    f"{ep.name} changed while it was being started.", "Try again.")
    fresh = registry.get_endpoint(ep.id)
    assert fresh is not None
    return fresh
