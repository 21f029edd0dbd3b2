"""Check a create request before anything is deployed, and report every problem at once.

Pure: the caller looks up the checkpoint (scoped to the caller's organization,
so another org's checkpoint is indistinguishable from a missing one), whether
the name is taken, and the instance catalog, and passes them in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from inference_endpoints.core.catalog import InstanceSpec
from inference_endpoints.core.errors import Problem, RequestInvalid, shown
from inference_endpoints.core.facts import CheckpointFacts
from inference_endpoints.core.fit import FitEstimate, estimate_fit, gib, smallest_fitting_instance
from inference_endpoints.core.status import (
    PRE_QUANTIZED_METHODS,
    CheckpointKind,
    CheckpointStatus,
    Precision,
    Quantization,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


DEFAULT_MAX_CONTEXT = 2048  # one default for the CLI, the API, the console and the Prefect run forms
DEFAULT_INSTANCE = "cpu-dev"


@dataclass(frozen=True)
class CreateRequest:
    """Raw user input; loosely typed on purpose so every bad field can be reported."""

    name: Any
    checkpoint: Any
    instance: Any
    max_context: Any
    precision: Any = "auto"
    quantization: Any = "none"


@dataclass(frozen=True)
class CheckpointView:
    """A checkpoint as validation needs it (already scoped to the caller's org)."""

    id: str
    name: str
    status: str
    location: str
    facts: CheckpointFacts
    base: CheckpointView | None = None

    @property
    def kind(self) -> CheckpointKind:
        return self.facts.kind

    @property
    def model_facts(self) -> CheckpointFacts:
        """The facts of the model that actually runs (the base, for an adapter)."""
        return self.base.facts if self.base is not None else self.facts


@dataclass(frozen=True)
class ValidatedCreate:
    name: str
    checkpoint: CheckpointView
    instance: InstanceSpec
    max_context: int
    precision: str
    quantization: str
    fit: FitEstimate


def check_name(name: Any, name_taken: bool) -> list[Problem]:
    if not isinstance(name, str) or not DNS_LABEL.match(name):
        return [
            Problem(
                "invalid_name",
                "name",
                f"{shown(name)} is not a valid endpoint name.",
                "Use 1-63 lowercase letters, digits and hyphens, starting and ending with a "
                "letter or digit (it becomes part of the endpoint's URL).",
            )
        ]
    if name_taken:
        return [
            Problem(
                "name_taken",
                "name",
                f"An endpoint named {shown(name)} already exists in this organization.",
                "Pick another name, or remove the existing endpoint first (`endpoints rm`).",
            )
        ]
    return []


def check_checkpoint(ref: Any, checkpoint: CheckpointView | None) -> list[Problem]:
    if checkpoint is None:
        return [
            Problem(
                "checkpoint_not_found",
                "checkpoint",
                f"No checkpoint {shown(ref)} in this organization.",
                "List your checkpoints with `endpoints checkpoint list`.",
            )
        ]
    if checkpoint.status != CheckpointStatus.AVAILABLE:
        return [
            Problem(
                "checkpoint_deleted",
                "checkpoint",
                f"Checkpoint {shown(checkpoint.name)} was deleted and cannot be served by new endpoints.",
                "Register the checkpoint again or pick another one.",
            )
        ]
    if checkpoint.kind == CheckpointKind.LORA and (
        checkpoint.base is None or checkpoint.base.status != CheckpointStatus.AVAILABLE
    ):
        base = checkpoint.facts.lora.base_model if checkpoint.facts.lora else "?"
        return [
            Problem(
                "base_checkpoint_unavailable",
                "checkpoint",
                f"The adapter's base model {shown(base)} is not an available checkpoint here.",
                "Register the base checkpoint under that name, then create the endpoint again.",
            )
        ]
    return []


def check_instance(ref: Any, instances: dict[str, InstanceSpec]) -> list[Problem]:
    if not isinstance(ref, str) or ref not in instances:
        return [
            Problem(
                "unknown_instance",
                "instance",
                f"Unknown instance type {shown(ref)}.",
                "Choose one of: " + ", ".join(sorted(instances)) + " (`endpoints instances`).",
            )
        ]
    return []


def parse_max_context(value: Any) -> tuple[int | None, list[Problem]]:
    parsed: int | None = None
    if isinstance(value, bool):
        parsed = None
    elif isinstance(value, int):
        parsed = value
    elif isinstance(value, str) and value.strip().isdigit():
        parsed = int(value.strip())
    if parsed is None or parsed <= 0:
        return None, [
            Problem(
                "invalid_max_context",
                "max_context",
                f"max_context must be a positive whole number of tokens, got {shown(value)}.",
                "For example --max-context 2048.",
            )
        ]
    return parsed, []


def check_precision(value: Any, instance: InstanceSpec | None) -> list[Problem]:
    allowed = [p.value for p in Precision]
    if value not in allowed:
        return [
            Problem(
                "invalid_precision",
                "precision",
                f"Unknown precision {shown(value)}.",
                "Use one of: " + ", ".join(allowed) + ".",
            )
        ]
    if instance is not None and value not in instance.precisions:
        usable = [p for p in instance.precisions if p != "auto"]
        if instance.is_cpu and value in ("bfloat16", "float16"):
            return [Problem(
                "precision_unsupported", "precision",
                f"{instance.name} serves with vLLM-CPU, whose engine loads a {value} model and then "
                "dies on its first completion on this CPU.",
                "Use --precision float32 (or auto, which is float32 here), or pick a GPU instance "
                f"for {value}.",
            )]
        return [
            Problem(
                "precision_unsupported",
                "precision",
                f"{instance.name} ({instance.accelerator}) cannot compute in {value}.",
                "Use " + " or ".join(usable) + " on this instance, or pick an instance that "
                f"supports {value}.",
            )
        ]
    return []


def check_quantization(
    value: Any, checkpoint: CheckpointView | None, instance: InstanceSpec | None
) -> list[Problem]:
    allowed = [q.value for q in Quantization]
    if value not in allowed:
        return [
            Problem(
                "invalid_quantization",
                "quantization",
                f"Unknown quantization {shown(value)}.",
                "Use one of: " + ", ".join(allowed) + ".",
            )
        ]
    problems: list[Problem] = []
    pre = checkpoint.model_facts.quantization_method if checkpoint is not None else None
    if checkpoint is not None:
        if pre and value not in ("none", pre):
            problems.append(
                Problem(
                    "quantization_mismatch",
                    "quantization",
                    f"The checkpoint is already quantized with {pre}; it cannot be served as {value}.",
                    f"Use --quantization {pre} (or none, which keeps the checkpoint's own).",
                )
            )
        elif not pre and value in PRE_QUANTIZED_METHODS:
            problems.append(
                Problem(
                    "quantization_mismatch",
                    "quantization",
                    f"{value} needs a checkpoint quantized with {value}; this one is not.",
                    "Quantize the checkpoint first, use fp8 on an fp8-capable GPU, or use none.",
                )
            )
    if not problems and instance is not None and value != "none":
        if value == "fp8" and not instance.fp8 and not instance.is_cpu:
            problems.append(
                Problem(
                    "quantization_unsupported",
                    "quantization",
                    f"{instance.name} ({instance.accelerator}, compute capability "
                    f"{instance.compute_capability}) has no fp8 support.",
                    "Use an fp8-capable instance (l4-24gb, h100-80gb, h200-141gb) or none.",
                )
            )
        elif value not in instance.quantizations:
            problems.append(
                Problem(
                    "quantization_unsupported",
                    "quantization",
                    f"{instance.name} does not support {value} quantization.",
                    "Use --quantization none on this instance, or pick a GPU instance.",
                )
            )
    return problems


def check_fit(
    checkpoint: CheckpointView,
    instance: InstanceSpec,
    instances: dict[str, InstanceSpec],
    max_context: int,
    precision: str,
    quantization: str,
) -> tuple[FitEstimate, list[Problem]]:
    adapter = checkpoint.facts if checkpoint.base is not None else None
    model = checkpoint.model_facts
    fit = estimate_fit(model, instance, max_context, precision, quantization, adapter)
    problems: list[Problem] = []
    if model.max_positions is not None and max_context > model.max_positions:
        problems.append(
            Problem(
                "max_context_too_large",
                "max_context",
                f"max_context {max_context} exceeds the model's limit of "
                f"{model.max_positions} tokens.",
                f"Use --max-context {model.max_positions} or less.",
            )
        )
    elif not fit.fits:
        if fit.largest_fitting_context > 0:
            hint = (
                f"Use --max-context {fit.largest_fitting_context} or less on {instance.name}"
            )
        else:
            hint = f"The weights alone do not fit on {instance.name}"
        bigger = smallest_fitting_instance(
            model, instances.values(), max_context, precision, quantization, adapter
        )
        hint += f", or use {bigger.name}." if bigger else "."
        problems.append(
            Problem(
                "does_not_fit",
                "max_context" if fit.largest_fitting_context > 0 else "instance",
                f"Needs {gib(fit.required_bytes)} (weights {gib(fit.weights_bytes)} + KV cache "
                f"{gib(fit.kv_cache_bytes)} + overhead {gib(fit.overhead_bytes)}) but "
                f"{instance.name} offers {gib(fit.available_bytes)}: "
                f"{gib(fit.shortfall_bytes)} short.",
                hint,
            )
        )
    return fit, problems


def validate_create(
    request: CreateRequest,
    *,
    checkpoint: CheckpointView | None,
    name_taken: bool,
    instances: dict[str, InstanceSpec],
) -> ValidatedCreate:
    """Return the checked request, or raise `RequestInvalid` listing every problem."""
    problems = check_name(request.name, name_taken)
    ckpt_problems = check_checkpoint(request.checkpoint, checkpoint)
    problems += ckpt_problems
    usable_checkpoint = checkpoint if not ckpt_problems else None
    inst_problems = check_instance(request.instance, instances)
    problems += inst_problems
    instance = instances[request.instance] if not inst_problems else None
    max_context, ctx_problems = parse_max_context(request.max_context)
    problems += ctx_problems
    prec_problems = check_precision(request.precision, instance)
    problems += prec_problems
    quant_problems = check_quantization(request.quantization, usable_checkpoint, instance)
    problems += quant_problems
    fit: FitEstimate | None = None
    if (
        usable_checkpoint is not None
        and instance is not None
        and max_context is not None
        and not prec_problems
        and not quant_problems
    ):
        fit, fit_problems = check_fit(
            usable_checkpoint,
            instance,
            instances,
            max_context,
            request.precision,
            request.quantization,
        )
        problems += fit_problems
    elif usable_checkpoint is not None and instance is not None and max_context is not None:
        # A wrong precision or quantization still shows the estimate (at the instance's own
        # defaults for the wrong one), so the form's fit panel does not vanish over one field.
        adapter = usable_checkpoint.facts if usable_checkpoint.base is not None else None
        fit = estimate_fit(usable_checkpoint.model_facts, instance, max_context,
                           "auto" if prec_problems else request.precision,
                           "none" if quant_problems else request.quantization, adapter)
    if problems:
        details: dict[str, Any] = {}
        if fit is not None:
            details["fit"] = dict(fit.as_rows())
        raise RequestInvalid(problems, details)
    assert usable_checkpoint is not None and instance is not None
    assert max_context is not None and fit is not None
    return ValidatedCreate(
        name=request.name,
        checkpoint=usable_checkpoint,
        instance=instance,
        max_context=max_context,
        precision=request.precision,
        quantization=request.quantization,
        fit=fit,
    )
