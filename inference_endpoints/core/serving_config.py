"""Render the vLLM command line and environment for one endpoint. Pure and golden-tested.

The runtime decides where checkpoints appear (`model_root`: a per-endpoint
directory for the process runtime, `/models` in a container); the renderer
only composes paths under it, so the rendered config is exactly what runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from inference_endpoints.core.fit import GIB, GPU_MEMORY_UTILIZATION
from inference_endpoints.core.validation import ValidatedCreate

ENGINE_MODULE = "vllm.entrypoints.openai.api_server"
# vLLM accepts only these LoRA ranks for --max-lora-rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


@dataclass(frozen=True)
class Mount:
    source: str  # checkpoint location inside the store
    target: str  # where the engine sees it
    read_only: bool = True


@dataclass(frozen=True)
class ServingSpec:
    args: list[str]  # engine arguments, without --host/--port (the runtime adds them)
    env: dict[str, str]
    mounts: list[Mount]
    served_model_name: str
    model_path: str
    api_key: str = field(repr=False, default="")

    def public_dict(self) -> dict[str, Any]:
        """Everything but the secret: what users and golden files see."""
        data = asdict(self)
        data.pop("api_key")
        return data

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ServingSpec:
        data = json.loads(text)
        data["mounts"] = [Mount(**m) for m in data["mounts"]]
        return cls(**data)

    def command_line(self) -> str:
        return " ".join(["python", "-m", ENGINE_MODULE, *self.args])


CPU_MIN_MEMORY_SHARE = 0.2


def lora_rank_for_vllm(rank: int) -> int:
    """Round up to the next rank vLLM accepts."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's maximum of {VLLM_LORA_RANKS[-1]}")


def render(request: ValidatedCreate, *, model_root: str, api_key: str) -> ServingSpec:
    ckpt = request.checkpoint
    instance = request.instance
    root = model_root.rstrip("/")
    mounts: list[Mount] = []
    args: list[str] = []
    if ckpt.base is not None:
        assert ckpt.facts.lora is not None
        model_path = f"{root}/base"
        adapter_path = f"{root}/adapter"
        mounts += [Mount(ckpt.base.location, model_path), Mount(ckpt.location, adapter_path)]
        served = f"{request.name}-base"
        lora_args = [
            "--enable-lora",
            "--lora-modules",
            f"{request.name}={adapter_path}",
            "--max-lora-rank",
            str(lora_rank_for_vllm(ckpt.facts.lora.rank)),
            "--max-loras",
            "1",
        ]
    else:
        model_path = f"{root}/model"
        mounts.append(Mount(ckpt.location, model_path))
        served = request.name
        lora_args = []
    args += [
        "--model",
        model_path,
        "--served-model-name",
        served,
        "--max-model-len",
        str(request.max_context),
        "--dtype",
        request.fit.serving_dtype,
    ]
    if request.quantization != "none":
        args += ["--quantization", request.quantization]
    args += ["--tensor-parallel-size", str(instance.gpu_count)]
    env = dict(OFFLINE_ENV)
    if instance.is_cpu:
        # vLLM-CPU would otherwise reserve most of the host's RAM for KV cache.
        kv_gib = max(1, math.ceil(request.fit.kv_cache_bytes / GIB))
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_gib)
        # Several engines share a CPU host (a rolling replacement runs two at once); vLLM's
        # default pins every engine's threads to the same cores, starving the newcomer.
        env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        # On CPU the flag is the share of the host's RAM vLLM insists is free at start (0.92 by
        # default: a busy host then refuses to start an engine, measured here). Ask for what
        # the fit check says the engine needs, with room to spare.
        host_bytes = instance.memory_per_device_mib * 1024 * 1024
        share = min(0.9, max(CPU_MIN_MEMORY_SHARE, 2 * request.fit.required_bytes / host_bytes))
        args += ["--enforce-eager", "--gpu-memory-utilization", f"{share:.2f}"]
    else:
        args += ["--gpu-memory-utilization", str(GPU_MEMORY_UTILIZATION)]
    args += lora_args
    return ServingSpec(
        args=args,
        env=env,
        mounts=mounts,
        served_model_name=request.name,
        model_path=model_path,
        api_key=api_key,
    )
