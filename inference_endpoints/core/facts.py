"""What the platform knows about a checkpoint, read from its files without loading weights.

Inspection produces these; the fit check, validation and the config renderer
consume them. They are stored with the checkpoint record as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from inference_endpoints.core.status import CheckpointKind

DTYPE_BYTES: dict[str, float] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "int8": 1,
    "uint8": 1,
    "int32": 4,
    "int64": 8,
    "int16": 2,
    "bool": 1,
    "float64": 8,
}


@dataclass(frozen=True)
class LoraFacts:
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model: str  # `base_model_name_or_path` exactly as the adapter names it


@dataclass(frozen=True)
class CheckpointFacts:
    kind: CheckpointKind
    architecture: str  # e.g. "LlamaForCausalLM"; for LoRA the adapter's peft_type
    model_type: str  # config.json model_type ("llama", "qwen2", ...); "" for LoRA
    param_count: int  # number of elements across all weight tensors
    dtype: str  # the dominant tensor dtype in the safetensors files
    config_dtype: str | None  # torch_dtype / dtype declared in config.json
    weight_bytes: int  # bytes of tensor data according to the safetensors headers
    total_bytes: int  # bytes of every file in the directory
    max_positions: int | None  # derived as vLLM does; None for LoRA adapters
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    has_tokenizer: bool
    has_chat_template: bool
    quantization_method: str | None  # config.json quantization_config.quant_method
    lora: LoraFacts | None = None

    def kv_bytes_per_token(self, kv_dtype_bytes: float) -> int:
        """K and V for every layer, every KV head, one token."""
        return int(2 * self.num_layers * self.num_kv_heads * self.head_dim * kv_dtype_bytes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointFacts:
        data = dict(data)
        data["kind"] = CheckpointKind(data["kind"])
        lora = data.get("lora")
        if lora is not None:
            data["lora"] = LoraFacts(
                rank=int(lora["rank"]),
                alpha=float(lora["alpha"]),
                target_modules=tuple(lora["target_modules"]),
                base_model=str(lora["base_model"]),
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> CheckpointFacts:
        return cls.from_dict(json.loads(text))
