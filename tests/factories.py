"""Hand-made CheckpointFacts for pure tests (no files needed)."""

from __future__ import annotations

from dataclasses import replace

from inference_endpoints.core.facts import CheckpointFacts, LoraFacts
from inference_endpoints.core.status import CheckpointKind
from inference_endpoints.core.validation import CheckpointView

LLAMA3_8B = CheckpointFacts(
    kind=CheckpointKind.FULL,
    architecture="LlamaForCausalLM",
    model_type="llama",
    param_count=8_030_261_248,
    dtype="bfloat16",
    config_dtype="bfloat16",
    weight_bytes=16_060_522_496,
    total_bytes=16_060_600_000,
    max_positions=8192,
    num_layers=32,
    num_kv_heads=8,
    head_dim=128,
    hidden_size=4096,
    vocab_size=128256,
    has_tokenizer=True,
    has_chat_template=True,
    quantization_method=None,
)

TINY = CheckpointFacts(
    kind=CheckpointKind.FULL,
    architecture="LlamaForCausalLM",
    model_type="llama",
    param_count=700_000,
    dtype="float32",
    config_dtype="float32",
    weight_bytes=2_800_000,
    total_bytes=3_000_000,
    max_positions=2048,
    num_layers=2,
    num_kv_heads=2,
    head_dim=64,
    hidden_size=128,
    vocab_size=1024,
    has_tokenizer=True,
    has_chat_template=True,
    quantization_method=None,
)

TINY_LORA = CheckpointFacts(
    kind=CheckpointKind.LORA,
    architecture="LORA",
    model_type="",
    param_count=8192,
    dtype="float32",
    config_dtype=None,
    weight_bytes=32_768,
    total_bytes=40_000,
    max_positions=None,
    num_layers=0,
    num_kv_heads=0,
    head_dim=0,
    hidden_size=0,
    vocab_size=0,
    has_tokenizer=False,
    has_chat_template=False,
    quantization_method=None,
    lora=LoraFacts(rank=12, alpha=16.0, target_modules=("q_proj", "v_proj"),
                   base_model="demo-tiny-llama"),
)

LLAMA3_8B_AWQ = replace(LLAMA3_8B, quantization_method="awq", weight_bytes=5_700_000_000,
                        dtype="int32")


def view(facts: CheckpointFacts, name: str = "ckpt", status: str = "available",
         base: CheckpointView | None = None) -> CheckpointView:
    return CheckpointView(id=f"ckpt_{name}", name=name, status=status,
                          location=f"org_test/ckpt_{name}", facts=facts, base=base)
