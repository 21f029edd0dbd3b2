"""Checkpoint inspection: real architectures, RoPE length rules, every error code, digests."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from inference_endpoints.core.errors import CheckpointError
from inference_endpoints.core.facts import CheckpointFacts
from inference_endpoints.core.status import CheckpointKind
from inference_endpoints.services.checkpoints import (
    checkpoint_digest,
    derive_max_positions,
    inspect_checkpoint,
    read_safetensors_header,
)
from tests import archs


def error_of(path: Path) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        inspect_checkpoint(path)
    return info.value


def assert_error(path: Path, code: str, *in_message: str) -> CheckpointError:
    err = error_of(path)
    assert err.problem.code == code, err.problem
    for text in in_message:
        assert text in err.problem.message, err.problem.message
    assert err.problem.hint, "every error must say how to fix it"
    return err


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- published models


def test_llama3_8b_facts(tmp_path: Path) -> None:
    ckpt = archs.write_llama3_8b(tmp_path / "llama3")
    facts = inspect_checkpoint(ckpt)

    assert facts.kind is CheckpointKind.FULL
    assert facts.architecture == "LlamaForCausalLM"
    assert facts.model_type == "llama"
    assert facts.param_count == archs.LLAMA3_8B_PARAMS == 8_030_261_248
    assert facts.weight_bytes == 16_060_522_496  # the real index's metadata.total_size
    assert facts.dtype == "bfloat16"
    assert facts.config_dtype == "bfloat16"
    assert facts.num_layers == 32
    assert facts.num_kv_heads == 8
    assert facts.head_dim == 128
    assert facts.hidden_size == 4096
    assert facts.vocab_size == 128256
    assert facts.max_positions == 8192
    assert facts.has_tokenizer and facts.has_chat_template
    assert facts.quantization_method is None
    assert facts.lora is None
    assert facts.total_bytes == dir_size(ckpt) > facts.weight_bytes
    assert facts.kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2  # 128 KiB per token


def test_llama3_8b_is_sharded_like_the_hub(tmp_path: Path) -> None:
    ckpt = archs.write_llama3_8b(tmp_path / "llama3")
    shards = sorted(p.name for p in ckpt.glob("*.safetensors"))
    assert shards == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 16_060_522_496
    # Byte-for-byte the sizes of the files on the Hub (headers included).
    sizes = [(ckpt / name).stat().st_size for name in shards]
    assert sizes == [4_976_698_672, 4_999_802_720, 4_915_916_176, 1_168_138_808]
    assert len(index["weight_map"]) == 291
    # Same split as the published repo: embeddings + layers 0-8 first, lm_head last.
    assert index["weight_map"]["model.layers.8.mlp.down_proj.weight"] == shards[0]
    assert index["weight_map"]["model.layers.9.self_attn.q_proj.weight"] == shards[1]
    assert index["weight_map"]["lm_head.weight"] == shards[3]
    header = read_safetensors_header(ckpt / shards[0])
    embed = header.tensors["model.embed_tokens.weight"]
    assert (embed.dtype, embed.shape) == ("bfloat16", (128256, 4096))
    assert header.metadata == {"format": "pt"}


def test_qwen2_0_5b_facts(tmp_path: Path) -> None:
    ckpt = archs.write_qwen2_0_5b(tmp_path / "qwen2")
    facts = inspect_checkpoint(ckpt)

    assert facts.architecture == "Qwen2ForCausalLM"
    assert facts.model_type == "qwen2"
    assert facts.param_count == archs.QWEN2_0_5B_PARAMS == 494_032_768
    assert facts.weight_bytes == 2 * 494_032_768
    assert facts.dtype == "bfloat16"
    assert facts.num_layers == 24
    assert facts.num_kv_heads == 2
    assert facts.head_dim == 64
    assert facts.hidden_size == 896
    assert facts.vocab_size == 151936
    assert facts.max_positions == 32768
    assert facts.has_chat_template
    assert facts.total_bytes == dir_size(ckpt)
    assert sorted(p.name for p in ckpt.glob("*.safetensors")) == ["model.safetensors"]
    header = read_safetensors_header(ckpt / "model.safetensors")
    assert "lm_head.weight" not in header.tensors  # tied embeddings
    assert header.tensors["model.layers.0.self_attn.k_proj.bias"].shape == (128,)


def test_published_fixtures_are_sparse(tmp_path: Path) -> None:
    ckpt = archs.write_qwen2_0_5b(tmp_path / "qwen2")
    st = (ckpt / "model.safetensors").stat()
    assert st.st_size > 988_000_000
    if hasattr(st, "st_blocks"):
        assert st.st_blocks * 512 < 16 * 1024 * 1024


def test_facts_round_trip_json(tmp_path: Path) -> None:
    facts = inspect_checkpoint(archs.write_tiny_llama(tmp_path / "tiny"))
    assert CheckpointFacts.from_json(facts.to_json()) == facts
    lora = inspect_checkpoint(archs.write_lora(tmp_path / "lora"))
    assert CheckpointFacts.from_json(lora.to_json()) == lora


# --------------------------------------------------------------------------- small models


def test_tiny_llama_facts(tmp_path: Path) -> None:
    facts = inspect_checkpoint(archs.write_tiny_llama(tmp_path / "tiny"))
    # embed + lm_head 2*256*64, per layer q/o 64*64 each, k/v 32*64 each, mlp 3*128*64, norms 2*64
    per_layer = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64 + 2 * 64
    assert facts.param_count == 2 * 256 * 64 + 2 * per_layer + 64
    assert facts.weight_bytes == 2 * facts.param_count
    assert (facts.num_layers, facts.num_kv_heads, facts.head_dim) == (2, 2, 16)
    assert facts.max_positions == 2048


def test_sharded_and_single_file_agree(tmp_path: Path) -> None:
    single = inspect_checkpoint(archs.write_tiny_llama(tmp_path / "single"))
    sharded_dir = archs.write_tiny_llama(tmp_path / "sharded", shards=3)
    assert len(list(sharded_dir.glob("model-*-of-00003.safetensors"))) == 3
    assert (sharded_dir / "model.safetensors.index.json").is_file()
    sharded = inspect_checkpoint(sharded_dir)
    assert sharded.param_count == single.param_count
    assert sharded.weight_bytes == single.weight_bytes
    assert sharded.dtype == single.dtype


def test_stray_safetensors_outside_the_index_are_ignored(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny", shards=2)
    expected = inspect_checkpoint(ckpt).param_count
    archs.write_safetensors(ckpt / "consolidated.safetensors", [("x", "F32", (10,))])
    assert inspect_checkpoint(ckpt).param_count == expected  # vLLM loads only indexed shards


def test_dominant_dtype_is_the_one_with_most_bytes(tmp_path: Path) -> None:
    ckpt = tmp_path / "mixed"
    archs.write_tiny_llama(ckpt)
    (ckpt / "model.safetensors").unlink()
    archs.write_safetensors(
        ckpt / "model.safetensors",
        [("a", "F32", (10,)), ("b", "BF16", (30,)), ("c", "I8", (50,))],
    )
    facts = inspect_checkpoint(ckpt)
    assert facts.dtype == "bfloat16"  # 60 bytes vs 40 (F32) and 50 (I8)
    assert facts.param_count == 90
    assert facts.weight_bytes == 40 + 60 + 50


def test_config_details(tmp_path: Path) -> None:
    facts = inspect_checkpoint(
        archs.write_tiny_llama(
            tmp_path / "tiny",
            head_dim=32,
            num_key_value_heads=None,
            torch_dtype=None,
            dtype="float16",
            quantization_config={"quant_method": "compressed_tensors"},
            chat_template=None,
        )
    )
    assert facts.head_dim == 32  # explicit head_dim wins over hidden_size // heads
    assert facts.num_kv_heads == 4  # falls back to num_attention_heads
    assert facts.config_dtype == "float16"  # transformers v5 name
    assert facts.quantization_method == "compressed-tensors"
    assert not facts.has_chat_template


@pytest.mark.parametrize("name", ["chat_template.jinja", "chat_template.json"])
def test_chat_template_files(tmp_path: Path, name: str) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny", chat_template=None)
    (ckpt / name).write_text("{{ messages }}")
    assert inspect_checkpoint(ckpt).has_chat_template


def test_tokenizer_model_without_tokenizer_json(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny", tokenizer=False)
    (ckpt / "tokenizer.model").write_bytes(b"\x0a\x00")
    facts = inspect_checkpoint(ckpt)
    assert facts.has_tokenizer and not facts.has_chat_template


def test_multimodal_text_config_is_read(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "mm")
    text = json.loads((ckpt / "config.json").read_text())
    archs.write_json(
        ckpt / "config.json",
        {
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "torch_dtype": "bfloat16",
            "text_config": {**text, "max_position_embeddings": 4096},
        },
    )
    facts = inspect_checkpoint(ckpt)
    assert facts.architecture == "LlavaForConditionalGeneration"
    assert facts.model_type == "llava"
    assert (facts.num_layers, facts.num_kv_heads, facts.hidden_size) == (2, 2, 64)
    assert facts.max_positions == 4096


# --------------------------------------------------------------------------- max positions


def cfg(**extra: Any) -> dict[str, Any]:
    return {"model_type": "llama", "max_position_embeddings": 4096, **extra}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (cfg(), 4096),
        (cfg(rope_scaling=None), 4096),
        # Llama 3.1: llama3 scaling is already reflected in max_position_embeddings.
        (
            cfg(
                max_position_embeddings=131072,
                rope_scaling={
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                },
            ),
            131072,
        ),
        # Qwen2.5 long-context recipe: yarn restarts from the original length.
        (
            cfg(
                max_position_embeddings=32768,
                rope_scaling={
                    "type": "yarn",
                    "factor": 4.0,
                    "original_max_position_embeddings": 32768,
                },
            ),
            131072,
        ),
        (
            cfg(
                max_position_embeddings=16384,
                rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192},
            ),
            32768,
        ),
        (cfg(rope_scaling={"rope_type": "yarn", "factor": 2.0}), 8192),  # no original given
        (cfg(rope_scaling={"type": "linear", "factor": 2.0}), 8192),
        (cfg(rope_scaling={"rope_type": "dynamic", "factor": 1.5}), 6144),
        (cfg(rope_scaling={"rope_type": "default"}), 4096),  # no factor
        (cfg(rope_scaling={"type": "su", "factor": 4.0}), 4096),
        (cfg(rope_scaling={"rope_type": "longrope", "factor": 32.0}), 4096),
        # transformers v5 spelling, flat and nested per layer type.
        (cfg(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}), 16384),
        (cfg(rope_parameters={"rope_type": "default", "rope_theta": 1e4}), 4096),
        (
            cfg(
                rope_parameters={
                    "full_attention": {"rope_type": "linear", "factor": 2.0},
                    "sliding_attention": {"rope_type": "default"},
                }
            ),
            8192,
        ),
        # Gemma 3's max_position_embeddings is already scaled.
        (
            {
                "model_type": "gemma3",
                "text_config": {
                    "max_position_embeddings": 131072,
                    "rope_scaling": {"rope_type": "linear", "factor": 8.0},
                },
            },
            131072,
        ),
        # Minimum over the known keys.
        ({"model_type": "x", "n_positions": 1024, "max_seq_len": 2048}, 1024),
        ({"model_type": "x", "seq_length": 32768, "max_sequence_length": 8192}, 8192),
        # Command-R: model_max_length overrides the minimum.
        ({"model_type": "cohere", "max_position_embeddings": 8192, "model_max_length": 131072}, 131072),
        # Nothing known: vLLM assumes 2048.
        ({"model_type": "x"}, 2048),
        ({"model_type": "x", "max_position_embeddings": "lots"}, 2048),
        # Nested text config wins.
        ({"model_type": "llava", "text_config": {"max_position_embeddings": 4096}}, 4096),
    ],
)
def test_derive_max_positions(config: dict[str, Any], expected: int) -> None:
    assert derive_max_positions(config) == expected


def test_tokenizer_model_max_length_caps_the_length() -> None:
    assert derive_max_positions(cfg(), {"model_max_length": 2048}) == 2048
    assert derive_max_positions(cfg(), {"model_max_length": 10**30}) == 4096
    assert derive_max_positions(cfg(), {}) == 4096


def test_rope_scaling_applies_through_inspection(tmp_path: Path) -> None:
    yarn = archs.write_tiny_llama(
        tmp_path / "yarn",
        max_position_embeddings=2048,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
    )
    assert inspect_checkpoint(yarn).max_positions == 4096
    llama3 = archs.write_tiny_llama(
        tmp_path / "llama3",
        max_position_embeddings=2048,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 256},
    )
    assert inspect_checkpoint(llama3).max_positions == 2048


# --------------------------------------------------------------------------- LoRA


def test_lora_facts(tmp_path: Path) -> None:
    facts = inspect_checkpoint(archs.write_lora(tmp_path / "lora", r=8, alpha=16))
    assert facts.kind is CheckpointKind.LORA
    assert facts.architecture == "LORA"
    assert facts.model_type == ""
    assert facts.max_positions is None
    assert (facts.num_layers, facts.num_kv_heads, facts.head_dim) == (0, 0, 0)
    assert (facts.hidden_size, facts.vocab_size) == (0, 0)
    assert facts.dtype == "float32"
    # 2 layers x (q: 8*64 + 64*8, v: 8*64 + 32*8)
    assert facts.param_count == 2 * (8 * 64 + 64 * 8 + 8 * 64 + 32 * 8)
    assert facts.weight_bytes == 4 * facts.param_count
    assert not facts.has_tokenizer and not facts.has_chat_template
    assert facts.lora is not None
    assert facts.lora.rank == 8
    assert facts.lora.alpha == 16.0
    assert facts.lora.target_modules == ("q_proj", "v_proj")  # sorted
    assert facts.lora.base_model == "demo-tiny-llama"


def test_lora_target_modules_as_string_and_tokenizer(tmp_path: Path) -> None:
    ckpt = archs.write_lora(tmp_path / "lora", target_modules="q_proj")
    archs.write_tokenizer(ckpt)
    facts = inspect_checkpoint(ckpt)
    assert facts.lora is not None and facts.lora.target_modules == ("q_proj",)
    assert facts.has_tokenizer and facts.has_chat_template


# --------------------------------------------------------------------------- errors


def test_not_a_directory(tmp_path: Path) -> None:
    assert_error(tmp_path / "missing", "not_a_directory", "does not exist")
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    assert_error(file, "not_a_directory", "not a directory")


def test_missing_config(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    (ckpt / "config.json").unlink()
    assert_error(ckpt, "missing_config", "config.json")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ("\udcff", "UTF-8"),
    ],
)
def test_invalid_config_file(tmp_path: Path, content: str, message: str) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    (ckpt / "config.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    assert_error(ckpt, "invalid_config", "config.json", message)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_size": None}, "'hidden_size' is missing"),
        ({"num_hidden_layers": None}, "'num_hidden_layers' is missing"),
        ({"num_attention_heads": None}, "'num_attention_heads' is missing"),
        ({"vocab_size": None}, "'vocab_size' is missing"),
        ({"hidden_size": "64"}, "'hidden_size' must be a positive integer"),
        ({"num_hidden_layers": 0}, "'num_hidden_layers' must be a positive integer"),
        ({"num_key_value_heads": True}, "'num_key_value_heads' must be a positive integer"),
        ({"head_dim": -1}, "'head_dim' must be a positive integer"),
        ({"architectures": None}, "'architectures'"),
        ({"architectures": []}, "'architectures'"),
        ({"model_type": None}, "'model_type'"),
    ],
)
def test_invalid_config_values(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    config = json.loads((ckpt / "config.json").read_text())
    for key, value in overrides.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    archs.write_json(ckpt / "config.json", config)
    assert_error(ckpt, "invalid_config", "config.json", message)


def test_missing_text_config_key_names_the_nesting(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "mm")
    archs.write_json(
        ckpt / "config.json",
        {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "text_config": {}},
    )
    assert_error(ckpt, "invalid_config", "'text_config.num_hidden_layers' is missing")


def test_no_weights(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    (ckpt / "model.safetensors").unlink()
    err = assert_error(ckpt, "no_weights", "no *.safetensors")
    assert "safe_serialization=True" in err.problem.hint


def test_no_weights_mentions_bin_pickles(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x02pickle")
    err = assert_error(ckpt, "no_weights", "pytorch_model.bin")
    assert ".bin" in err.problem.hint and "not accepted" in err.problem.hint
    assert "save_pretrained" in err.problem.hint


def test_no_tensors_at_all(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    archs.write_raw_safetensors(ckpt / "model.safetensors", {"__metadata__": {"format": "pt"}}, 0)
    assert_error(ckpt, "no_weights", "contain no tensors")


def test_missing_shard(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny", shards=3)
    (ckpt / "model-00002-of-00003.safetensors").unlink()
    assert_error(ckpt, "missing_shard", "model-00002-of-00003.safetensors", "index.json")


def test_invalid_index(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny", shards=2)
    index_path = ckpt / "model.safetensors.index.json"
    good = json.loads(index_path.read_text())

    index_path.write_text("{oops")
    assert_error(ckpt, "invalid_index", "model.safetensors.index.json", "not valid JSON")

    archs.write_json(index_path, {"metadata": {}})
    assert_error(ckpt, "invalid_index", "weight_map")

    archs.write_json(index_path, {"weight_map": {"model.norm.weight": "../elsewhere.safetensors"}})
    assert_error(ckpt, "invalid_index", "outside")

    moved = dict(good["weight_map"])
    moved["model.norm.weight"] = "model-00001-of-00002.safetensors"
    if good["weight_map"]["model.norm.weight"] == moved["model.norm.weight"]:
        moved["model.norm.weight"] = "model-00002-of-00002.safetensors"
    archs.write_json(index_path, {"weight_map": moved})
    assert_error(ckpt, "invalid_index", "model.norm.weight", "does not contain it")


# Corrupt safetensors files. Each case builds a broken file next to a valid config.


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _good_header() -> dict[str, Any]:
    return {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]},
    }


def test_good_handmade_file_is_accepted(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    archs.write_raw_safetensors(ckpt / "model.safetensors", _good_header(), 32)
    facts = inspect_checkpoint(ckpt)
    assert (facts.param_count, facts.weight_bytes, facts.dtype) == (10, 32, "float32")


def test_header_without_padding_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    archs.write_raw_safetensors(path, _good_header(), 32, pad=False)
    assert set(read_safetensors_header(path).tensors) == {"a", "b"}


CORRUPT_CASES: list[tuple[Any, str]] = [
    (lambda p: _write(p, b"\x01\x02\x03"), "truncated"),
    (lambda p: _write(p, struct.pack("<Q", 2**60) + b"{}"), "header length"),
    (lambda p: _write(p, struct.pack("<Q", 0)), "header length"),
    (lambda p: _write(p, struct.pack("<Q", 4096) + b'{"a":'), "truncated or not a safetensors"),
    (lambda p: _write(p, struct.pack("<Q", 16) + b"garbage!garbage!"), "not valid UTF-8 JSON"),
    (lambda p: _write(p, struct.pack("<Q", 2) + b"\xff\xfe"), "not valid UTF-8 JSON"),
    (lambda p: _write(p, struct.pack("<Q", 8) + b"[1, 2]  "), "not a JSON object"),
    (
        lambda p: archs.write_raw_safetensors(p, {"__metadata__": {"format": 1}}, 0),
        "__metadata__",
    ),
    (lambda p: archs.write_raw_safetensors(p, {"a": [1]}, 0), "not an object"),
    (
        lambda p: archs.write_raw_safetensors(p, {"a": {"shape": [1], "data_offsets": [0, 4]}}, 4),
        "no dtype",
    ),
    (
        lambda p: archs.write_raw_safetensors(
            p, {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, 4
        ),
        "invalid shape",
    ),
    (
        lambda p: archs.write_raw_safetensors(
            p, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, 4
        ),
        "invalid data_offsets",
    ),
    # Overlapping tensors.
    (
        lambda p: archs.write_raw_safetensors(
            p,
            {
                "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
            },
            24,
        ),
        "overlaps",
    ),
    # A hole between tensors.
    (
        lambda p: archs.write_raw_safetensors(
            p,
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]},
            },
            24,
        ),
        "not contiguous",
    ),
    # Byte size disagrees with shape x dtype.
    (
        lambda p: archs.write_raw_safetensors(
            p, {"a": {"dtype": "BF16", "shape": [3, 3], "data_offsets": [0, 36]}}, 36
        ),
        "should take 18 bytes",
    ),
    # File shorter than the header says.
    (
        lambda p: archs.write_raw_safetensors(
            p, {"a": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}, 100
        ),
        "truncated",
    ),
    # Bytes after the last tensor (the loader rejects these too).
    (
        lambda p: archs.write_raw_safetensors(
            p, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 12
        ),
        "unexpected bytes",
    ),
]


@pytest.mark.parametrize(("build", "message"), CORRUPT_CASES)
def test_corrupt_weights(tmp_path: Path, build: Any, message: str) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    build(ckpt / "model.safetensors")
    assert_error(ckpt, "corrupt_weights", "model.safetensors", message)


@pytest.mark.parametrize(("build", "message"), CORRUPT_CASES)
def test_corrupt_cases_are_rejected_by_the_safetensors_library(
    tmp_path: Path, build: Any, message: str
) -> None:
    """Our hand parser must never be stricter or looser than the real loader."""
    path = tmp_path / "model.safetensors"
    build(path)
    with pytest.raises(Exception):  # noqa: B017 - the library raises several types
        safe_open(str(path), "numpy").__enter__()


def test_fixtures_load_with_the_safetensors_library(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny", shards=2)
    archs.write_raw_safetensors(tmp_path / "raw.safetensors", _good_header(), 32, pad=False)
    for path in [*ckpt.glob("*.safetensors"), tmp_path / "raw.safetensors"]:
        with safe_open(str(path), "numpy") as f:
            assert set(f.keys()) == set(read_safetensors_header(path).tensors)


def test_truncated_real_shard(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny", shards=2)
    shard = ckpt / "model-00002-of-00002.safetensors"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 1)
    assert_error(ckpt, "corrupt_weights", shard.name, "truncated")


def test_truncated_published_checkpoint(tmp_path: Path) -> None:
    ckpt = archs.write_llama3_8b(tmp_path / "llama3")
    shard = ckpt / "model-00003-of-00004.safetensors"
    with open(shard, "r+b") as f:
        f.truncate(4_000_000_000)  # an interrupted copy
    assert_error(ckpt, "corrupt_weights", shard.name, "truncated")


def test_unsupported_dtype(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    archs.write_raw_safetensors(
        ckpt / "model.safetensors",
        {"a": {"dtype": "F8_E8M0", "shape": [4], "data_offsets": [0, 4]}},
        4,
    )
    assert_error(ckpt, "unsupported_dtype", "model.safetensors", "F8_E8M0")


def test_no_tokenizer(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny", tokenizer=False)
    assert_error(ckpt, "no_tokenizer", str(ckpt), "tokenizer.json")
    (ckpt / "vocab.json").write_text("{}")
    assert_error(ckpt, "no_tokenizer")  # vocab.json alone is not a BPE tokenizer
    (ckpt / "merges.txt").write_text("#version: 0.2\n")
    assert inspect_checkpoint(ckpt).has_tokenizer


def test_invalid_tokenizer_config(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    (ckpt / "tokenizer_config.json").write_text("{broken")
    assert_error(ckpt, "invalid_tokenizer_config", "tokenizer_config.json")


def test_invalid_adapter_config(tmp_path: Path) -> None:
    ckpt = archs.write_lora(tmp_path / "lora")
    (ckpt / "adapter_config.json").write_text("not json")
    assert_error(ckpt, "invalid_adapter_config", "adapter_config.json", "not valid JSON")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"r": None}, "'r'"),
        ({"r": 0}, "'r'"),
        ({"lora_alpha": "16"}, "'lora_alpha'"),
        ({"target_modules": None}, "'target_modules'"),
        ({"target_modules": []}, "'target_modules'"),
        ({"peft_type": "IA3"}, "only LoRA"),
    ],
)
def test_invalid_adapter_values(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    ckpt = archs.write_lora(tmp_path / "lora")
    config = json.loads((ckpt / "adapter_config.json").read_text())
    config.update(overrides)
    archs.write_json(ckpt / "adapter_config.json", config)
    assert_error(ckpt, "invalid_adapter_config", "adapter_config.json", message)


@pytest.mark.parametrize("base", [None, ""])
def test_lora_without_base(tmp_path: Path, base: str | None) -> None:
    ckpt = archs.write_lora(tmp_path / "lora", base=base)
    err = assert_error(ckpt, "lora_without_base", "adapter_config.json", "base_model_name_or_path")
    assert err.problem.field == "base_model_name_or_path"


def test_lora_no_weights(tmp_path: Path) -> None:
    ckpt = archs.write_lora(tmp_path / "lora", weights=False)
    assert_error(ckpt, "lora_no_weights", "adapter_model.safetensors")
    (ckpt / "adapter_model.bin").write_bytes(b"\x80\x02")
    err = assert_error(ckpt, "lora_no_weights", "adapter_model.bin")
    assert "not accepted" in err.problem.hint


def test_corrupt_lora_weights(tmp_path: Path) -> None:
    ckpt = archs.write_lora(tmp_path / "lora")
    weights = ckpt / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-3])
    assert_error(ckpt, "corrupt_weights", "adapter_model.safetensors", "truncated")


def test_adapter_config_wins_over_config_json(tmp_path: Path) -> None:
    ckpt = archs.write_lora(tmp_path / "lora")
    archs.write_json(ckpt / "config.json", archs.TINY_LLAMA_CONFIG)
    assert inspect_checkpoint(ckpt).kind is CheckpointKind.LORA


def test_weights_symlinked_outside_are_refused(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    outside = tmp_path / "elsewhere.safetensors"
    (ckpt / "model.safetensors").rename(outside)
    (ckpt / "model.safetensors").symlink_to(outside)
    err = assert_error(ckpt, "symlink_outside", "model.safetensors")
    assert str(outside) not in err.problem.message  # where a link leads is not told


def test_config_symlinked_outside_is_refused(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    outside = tmp_path / "config.json"
    (ckpt / "config.json").rename(outside)
    (ckpt / "config.json").symlink_to(outside)
    assert_error(ckpt, "symlink_outside", "config.json")


def test_symlink_inside_the_directory_is_fine(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    (ckpt / "blobs").mkdir()
    (ckpt / "model.safetensors").rename(ckpt / "blobs" / "abc123")
    (ckpt / "model.safetensors").symlink_to("blobs/abc123")
    facts = inspect_checkpoint(ckpt)
    assert facts.total_bytes == dir_size(ckpt / "blobs") + sum(
        p.stat().st_size for p in ckpt.iterdir() if p.is_file() and not p.is_symlink()
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    (ckpt / "model.safetensors").chmod(0)
    try:
        assert_error(ckpt, "unreadable", "model.safetensors")
    finally:
        (ckpt / "model.safetensors").chmod(0o644)


# --------------------------------------------------------------------------- total bytes, digest


def test_total_bytes_counts_nested_files_but_not_symlink_targets(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    before = inspect_checkpoint(ckpt).total_bytes
    (ckpt / "extra").mkdir()
    (ckpt / "extra" / "notes.txt").write_bytes(b"x" * 1000)
    big = tmp_path / "big.bin"
    big.write_bytes(b"y" * 50_000)
    (ckpt / "link.bin").symlink_to(big)
    (ckpt / "outside-dir").symlink_to(tmp_path, target_is_directory=True)  # would loop
    assert inspect_checkpoint(ckpt).total_bytes == before + 1000


def test_digest_is_stable_and_location_independent(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "a", shards=2)
    digest = checkpoint_digest(ckpt)
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert checkpoint_digest(ckpt) == digest
    copy = tmp_path / "b"
    shutil.copytree(ckpt, copy)
    os.utime(copy / "config.json", (0, 0))
    assert checkpoint_digest(copy) == digest


def test_digest_changes_when_one_byte_changes(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    digest = checkpoint_digest(ckpt)
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    changed = checkpoint_digest(ckpt)
    assert changed != digest
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    assert checkpoint_digest(ckpt) == digest


def test_digest_covers_names_and_nested_files(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    digest = checkpoint_digest(ckpt)
    (ckpt / "tokenizer.json").rename(ckpt / "tok.json")
    renamed = checkpoint_digest(ckpt)
    assert renamed != digest
    (ckpt / "sub").mkdir()
    (ckpt / "sub" / "empty").write_bytes(b"")
    assert checkpoint_digest(ckpt) != renamed


def test_digest_does_not_follow_symlinks(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    target = tmp_path / "outside.txt"
    target.write_text("one")
    (ckpt / "link.txt").symlink_to(target)
    (ckpt / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    digest = checkpoint_digest(ckpt)

    target.write_text("two")  # content behind the link is not part of the digest
    assert checkpoint_digest(ckpt) == digest

    (ckpt / "link.txt").unlink()
    (ckpt / "link.txt").symlink_to(tmp_path / "other.txt")  # the link target string is
    assert checkpoint_digest(ckpt) != digest


def test_digest_of_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        checkpoint_digest(tmp_path / "nope")
    assert info.value.problem.code == "not_a_directory"


def test_config_that_is_a_directory_is_unreadable(tmp_path: Path) -> None:
    ckpt = archs.write_tiny_llama(tmp_path / "tiny")
    (ckpt / "config.json").unlink()
    (ckpt / "config.json").mkdir()
    assert_error(ckpt, "unreadable", "config.json")
