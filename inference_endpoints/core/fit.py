"""Will the model fit? Weights + KV cache for one full-length sequence + runtime overhead.

The arithmetic is deliberately simple so a person can check it by hand:

    weights   = parameters x bytes per parameter at the serving dtype
                (or the checkpoint's own tensor bytes when it is pre-quantized;
                fp8 on the fly = 1 byte per parameter)
    kv_cache  = 2 x layers x kv_heads x head_dim x kv bytes x max_context
    overhead  = a fixed allowance per device (CUDA context, activations, graphs)
    available = memory per device x devices x gpu_memory_utilization

It fits when weights + kv_cache + overhead <= available.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from inference_endpoints.core.catalog import InstanceSpec
from inference_endpoints.core.facts import DTYPE_BYTES, CheckpointFacts
from inference_endpoints.core.status import PRE_QUANTIZED_METHODS

MIB = 1024 * 1024
GIB = 1024 * MIB
GPU_MEMORY_UTILIZATION = 0.9
GPU_OVERHEAD_PER_DEVICE = 1 * GIB
CPU_OVERHEAD = GIB // 2
CONTEXT_GRANULARITY = 256  # suggested max contexts are rounded down to this


@dataclass(frozen=True)
class FitEstimate:
    serving_dtype: str
    weights_bytes: int
    kv_bytes_per_token: int
    kv_cache_bytes: int
    overhead_bytes: int
    available_bytes: int
    max_context: int
    largest_fitting_context: int

    @property
    def required_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes

    @property
    def fits(self) -> bool:
        return self.required_bytes <= self.available_bytes

    @property
    def shortfall_bytes(self) -> int:
        return max(0, self.required_bytes - self.available_bytes)

    def as_rows(self) -> list[tuple[str, str]]:
        return [
            ("serving dtype", self.serving_dtype),
            ("weights", gib(self.weights_bytes)),
            (f"KV cache ({self.max_context} tokens)", gib(self.kv_cache_bytes)),
            ("runtime overhead", gib(self.overhead_bytes)),
            ("required", gib(self.required_bytes)),
            ("available", gib(self.available_bytes)),
            ("largest max context that fits", str(self.largest_fitting_context)),
        ]


def gib(n: int) -> str:
    """Sizes as people read them: a tiny model's weights are MiB, not "0.00 GiB"."""
    if 0 < abs(n) < GIB // 100:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / GIB:.2f} GiB"


def serving_dtype(facts: CheckpointFacts, instance: InstanceSpec, precision: str) -> str:
    """The dtype vLLM will compute in: an explicit precision, else the checkpoint's own.

    With `auto`, vLLM keeps a 16-bit checkpoint's dtype and runs float32 checkpoints
    in 16 bits on GPUs (bfloat16 where supported, else float16).
    """
    if precision != "auto":
        return precision
    declared = facts.config_dtype or facts.dtype
    if instance.is_cpu:  # vLLM-CPU computes in float32 here (see CPU_BFLOAT16_BROKEN)
        return "float32"
    if declared in ("bfloat16", "float16"):
        if declared == "bfloat16" and "bfloat16" not in instance.precisions:
            return "float16"
        return declared
    return "bfloat16" if "bfloat16" in instance.precisions else "float16"


def weights_bytes(facts: CheckpointFacts, dtype: str, quantization: str) -> int:
    if facts.quantization_method or quantization in PRE_QUANTIZED_METHODS:
        return facts.weight_bytes  # already packed: the file sizes are the truth
    if quantization == "fp8":
        return facts.param_count  # one byte per parameter
    return int(facts.param_count * DTYPE_BYTES[dtype])


def estimate_fit(
    model: CheckpointFacts,
    instance: InstanceSpec,
    max_context: int,
    precision: str,
    quantization: str = "none",
    adapter: CheckpointFacts | None = None,
) -> FitEstimate:
    """Estimate memory for serving `model` (the base, for a LoRA) plus an optional adapter."""
    dtype = serving_dtype(model, instance, precision)
    weights = weights_bytes(model, dtype, quantization)
    if adapter is not None:
        weights += adapter.weight_bytes
    kv_per_token = model.kv_bytes_per_token(DTYPE_BYTES[dtype])
    if instance.is_cpu:
        overhead = CPU_OVERHEAD
        available = instance.total_memory_mib * MIB
    else:
        overhead = GPU_OVERHEAD_PER_DEVICE * instance.gpu_count
        available = int(instance.total_memory_mib * MIB * GPU_MEMORY_UTILIZATION)
    room = available - weights - overhead
    largest = 0
    if room > 0 and kv_per_token > 0:
        tokens = room // kv_per_token
        largest = tokens if tokens < CONTEXT_GRANULARITY else tokens - tokens % CONTEXT_GRANULARITY
        if model.max_positions is not None:
            largest = min(largest, model.max_positions)
    return FitEstimate(
        serving_dtype=dtype,
        weights_bytes=weights,
        kv_bytes_per_token=kv_per_token,
        kv_cache_bytes=kv_per_token * max_context,
        overhead_bytes=overhead,
        available_bytes=available,
        max_context=max_context,
        largest_fitting_context=largest,
    )


def smallest_fitting_instance(
    model: CheckpointFacts,
    instances: Iterable[InstanceSpec],
    max_context: int,
    precision: str,
    quantization: str = "none",
    adapter: CheckpointFacts | None = None,
) -> InstanceSpec | None:
    """The cheapest GPU instance that fits the request as asked, if any."""
    candidates = []
    for spec in instances:
        if spec.is_cpu or (precision != "auto" and precision not in spec.precisions):
            continue
        if quantization != "none" and quantization not in spec.quantizations:
            continue
        if estimate_fit(model, spec, max_context, precision, quantization, adapter).fits:
            candidates.append(spec)
    return min(candidates, key=lambda s: s.price_per_hour, default=None)
