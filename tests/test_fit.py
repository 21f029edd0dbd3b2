"""The fit check against arithmetic done by hand, for two published architectures
(Meta-Llama-3-8B / 3.1-8B and Qwen2-0.5B), written as config.json + safetensors
headers (sparse files: no weights on disk)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference_endpoints.core.catalog import by_name
from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.core.facts import CheckpointFacts
from inference_endpoints.core.fit import GIB, MIB, estimate_fit
from inference_endpoints.core.validation import CreateRequest, validate_create
from inference_endpoints.services.checkpoints import inspect_checkpoint
from tests.archs import write_llama3_8b, write_qwen2_0_5b
from tests.factories import view

INSTANCES = by_name()


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory: pytest.TempPathFactory) -> CheckpointFacts:
    return inspect_checkpoint(write_llama3_8b(tmp_path_factory.mktemp("llama3-8b")))


@pytest.fixture(scope="module")
def llama31_8b(tmp_path_factory: pytest.TempPathFactory) -> CheckpointFacts:
    """Llama-3.1-8B: the same tensors, 128K positions (rope type llama3 keeps the number)."""
    path = write_llama3_8b(tmp_path_factory.mktemp("llama31-8b"))
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 131072
    config["rope_scaling"] = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192, "rope_type": "llama3"}
    (path / "config.json").write_text(json.dumps(config))
    return inspect_checkpoint(path)


@pytest.fixture(scope="module")
def qwen05b(tmp_path_factory: pytest.TempPathFactory) -> CheckpointFacts:
    return inspect_checkpoint(write_qwen2_0_5b(tmp_path_factory.mktemp("qwen2-0.5b")))


def test_llama3_8b_bf16_on_a10g_fits(llama8b: CheckpointFacts) -> None:
    fit = estimate_fit(llama8b, INSTANCES["a10g-24gb"], 8192, "bfloat16")
    assert fit.weights_bytes == 8_030_261_248 * 2 == 16_060_522_496
    assert fit.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131_072
    assert fit.kv_cache_bytes == 131_072 * 8192 == 1 * GIB
    assert fit.overhead_bytes == 1 * GIB
    assert fit.required_bytes == 18_208_006_144
    assert fit.available_bytes == int(22528 * MIB * 0.9) == 21_260_088_115
    assert fit.fits


def test_llama3_8b_on_t4_does_not_fit_and_names_a_bigger_instance(llama8b: CheckpointFacts) -> None:
    fit = estimate_fit(llama8b, INSTANCES["t4-16gb"], 8192, "float16")
    # 15360 MiB x 0.9 = 13824 MiB = 14,495,514,624 B < 16,060,522,496 B of weights alone.
    assert fit.available_bytes == 14_495_514_624
    assert not fit.fits and fit.largest_fitting_context == 0
    with pytest.raises(RequestInvalid) as exc:
        validate_create(CreateRequest("e", "c", "t4-16gb", 8192, "float16"),
                        checkpoint=view(llama8b), name_taken=False, instances=INSTANCES)
    (problem,) = exc.value.problems
    assert (problem.code, problem.field) == ("does_not_fit", "instance")
    assert "l4-24gb" in problem.hint  # the cheapest instance on which it fits
    assert f"{(18_208_006_144 - 14_495_514_624) / GIB:.2f} GiB short" in problem.message


def test_llama31_8b_full_context_does_not_fit_a10g_and_suggests_a_max_context(
    llama31_8b: CheckpointFacts,
) -> None:
    assert llama31_8b.max_positions == 131072
    fit = estimate_fit(llama31_8b, INSTANCES["a10g-24gb"], 131072, "bfloat16")
    # KV: 131,072 B/token x 131,072 tokens = 16 GiB; room for KV = 21,260,088,115 - 16,060,522,496
    # - 1,073,741,824 = 4,125,823,795 B -> 31,477 tokens -> rounded down to 256: 31,232.
    assert fit.kv_cache_bytes == 16 * GIB
    assert not fit.fits
    assert fit.largest_fitting_context == 31_232
    with pytest.raises(RequestInvalid) as exc:
        validate_create(CreateRequest("e", "c", "a10g-24gb", 131072, "bfloat16"),
                        checkpoint=view(llama31_8b), name_taken=False, instances=INSTANCES)
    (problem,) = exc.value.problems
    assert (problem.code, problem.field) == ("does_not_fit", "max_context")
    assert "--max-context 31232" in problem.hint
    ok = validate_create(CreateRequest("e", "c", "a10g-24gb", 31232, "bfloat16"),
                         checkpoint=view(llama31_8b), name_taken=False, instances=INSTANCES)
    assert ok.fit.fits


def test_llama3_8b_fp8_on_l4_counts_one_byte_per_parameter(llama8b: CheckpointFacts) -> None:
    fit = estimate_fit(llama8b, INSTANCES["l4-24gb"], 8192, "bfloat16", "fp8")
    assert fit.weights_bytes == 8_030_261_248
    assert fit.fits


def test_qwen2_05b_on_t4_auto_runs_in_float16(qwen05b: CheckpointFacts) -> None:
    assert qwen05b.param_count == 494_032_768
    fit = estimate_fit(qwen05b, INSTANCES["t4-16gb"], 32768, "auto")
    assert fit.serving_dtype == "float16"  # bf16 checkpoint, no bf16 on a T4
    assert fit.weights_bytes == 988_065_536
    assert fit.kv_bytes_per_token == 2 * 24 * 2 * 64 * 2 == 12_288
    assert fit.kv_cache_bytes == 12_288 * 32768 == 402_653_184
    assert fit.required_bytes == 988_065_536 + 402_653_184 + GIB == 2_464_460_544
    assert fit.fits


def test_qwen2_05b_on_cpu_dev_float32(qwen05b: CheckpointFacts) -> None:
    fit = estimate_fit(qwen05b, INSTANCES["cpu-dev"], 32768, "float32")
    assert fit.weights_bytes == 494_032_768 * 4
    assert fit.kv_bytes_per_token == 24_576
    assert fit.available_bytes == 8 * GIB and fit.overhead_bytes == GIB // 2
    # room = 8 GiB - 1,976,131,072 - 536,870,912 = 6,076,932,608 B -> 247,271 tokens,
    # capped at the model's 32,768 positions.
    assert fit.largest_fitting_context == 32768
    assert fit.fits


def test_max_context_above_model_limit_is_reported(qwen05b: CheckpointFacts, tmp_path: Path) -> None:
    with pytest.raises(RequestInvalid) as exc:
        validate_create(CreateRequest("e", "c", "a100-80gb", 65536, "bfloat16"),
                        checkpoint=view(qwen05b), name_taken=False, instances=INSTANCES)
    assert [(p.code, p.field) for p in exc.value.problems] == [
        ("max_context_too_large", "max_context")]
    assert "32768" in exc.value.problems[0].hint


@pytest.mark.parametrize(("size", "shown"), [
    (0, "0.00 GiB"), (5 * 2**20, "5.0 MiB"), (GIB // 100 - 1, "10.2 MiB"), (GIB // 100, "0.01 GiB"),
    (3 * GIB // 2, "1.50 GiB"),
])
def test_sizes_read_as_people_read_them(size: int, shown: str) -> None:
    from inference_endpoints.core.fit import gib

    assert gib(size) == shown
