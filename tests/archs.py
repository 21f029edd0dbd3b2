"""Fixture builders: real published architectures, written without real weights.

Each builder writes the model's real config.json and safetensors files whose
headers are exactly what `save_pretrained()` produces (tensor names, shapes,
dtypes, contiguous data_offsets, 5 GB shards, index). The data region of the
large models is created sparse with `truncate()`, so a 16 GB checkpoint takes
no disk space yet has the right size and is not "truncated".
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# (name, safetensors dtype code, shape) in state-dict order.
Tensor = tuple[str, str, tuple[int, ...]]

DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "U8": 1, "I32": 4, "I64": 8}
MAX_SHARD_BYTES = 5_000_000_000  # transformers' max_shard_size="5GB"

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)


def tensor_bytes(tensor: Tensor) -> int:
    _name, code, shape = tensor
    return math.prod(shape) * DTYPE_SIZE[code]


def safetensors_header(
    tensors: Sequence[Tensor], metadata: dict[str, str] | None = None
) -> tuple[bytes, int]:
    """The header bytes (length prefix included) and data size `safetensors` would write.

    Offsets are assigned in name order, as the library does for same-dtype tensors;
    the JSON is padded with spaces to a multiple of 8 bytes like the real writer.
    """
    header: dict[str, Any] = {"__metadata__": metadata if metadata is not None else {"format": "pt"}}
    offset = 0
    for name, code, shape in sorted(tensors, key=lambda t: t[0]):
        size = tensor_bytes((name, code, shape))
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


def write_safetensors(path: Path, tensors: Sequence[Tensor], *, sparse: bool = True, seed: int = 0) -> int:
    """Write a safetensors file; sparse data when `sparse`, else deterministic bytes."""
    prefix, data_size = safetensors_header(tensors)
    with open(path, "wb") as f:
        f.write(prefix)
        if sparse:
            f.truncate(len(prefix) + data_size)
        else:
            f.write(random.Random(seed).randbytes(data_size))
    return len(prefix) + data_size


def write_raw_safetensors(path: Path, header: Any, data_size: int, *, pad: bool = True) -> None:
    """A hand-made (possibly broken) safetensors file for error tests."""
    raw = json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + data_size)


def llama_tensors(config: dict[str, Any], *, dtype: str = "BF16") -> list[Tensor]:
    """State-dict tensors of a Llama-family decoder (Llama, Mistral, Qwen2) from its config."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    qkv_bias = config.get("model_type") == "qwen2" or bool(config.get("attention_bias"))

    tensors: list[Tensor] = [("model.embed_tokens.weight", dtype, (vocab, hidden))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for proj, out in (("q_proj", q_dim), ("k_proj", kv_dim), ("v_proj", kv_dim)):
            tensors.append((f"{p}self_attn.{proj}.weight", dtype, (out, hidden)))
            if qkv_bias:
                tensors.append((f"{p}self_attn.{proj}.bias", dtype, (out,)))
        tensors += [
            (f"{p}self_attn.o_proj.weight", dtype, (hidden, q_dim)),
            (f"{p}mlp.gate_proj.weight", dtype, (inter, hidden)),
            (f"{p}mlp.up_proj.weight", dtype, (inter, hidden)),
            (f"{p}mlp.down_proj.weight", dtype, (hidden, inter)),
            (f"{p}input_layernorm.weight", dtype, (hidden,)),
            (f"{p}post_attention_layernorm.weight", dtype, (hidden,)),
        ]
    tensors.append(("model.norm.weight", dtype, (hidden,)))
    if not config.get("tie_word_embeddings", False):
        tensors.append(("lm_head.weight", dtype, (vocab, hidden)))
    return tensors


def shard_greedily(tensors: Sequence[Tensor], max_bytes: int) -> list[list[Tensor]]:
    """transformers' sharding: fill a shard in state-dict order until the next tensor overflows."""
    shards: list[list[Tensor]] = [[]]
    size = 0
    for tensor in tensors:
        nbytes = tensor_bytes(tensor)
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += nbytes
    return shards


def write_weights(
    directory: Path,
    tensors: Sequence[Tensor],
    *,
    shards: int | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    sparse: bool = True,
) -> list[str]:
    """model.safetensors, or model-XXXXX-of-YYYYY.safetensors + index when it needs shards.

    `shards` forces that many shards (split by tensor count) for small models.
    """
    if shards is not None:
        per = math.ceil(len(tensors) / shards)
        groups = [list(tensors[i * per : (i + 1) * per]) for i in range(shards)]
    else:
        groups = shard_greedily(tensors, max_shard_bytes)
    if len(groups) == 1:
        write_safetensors(directory / "model.safetensors", groups[0], sparse=sparse)
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    weight_map: dict[str, str] = {}
    for seed, (name, group) in enumerate(zip(names, groups, strict=True)):
        write_safetensors(directory / name, group, sparse=sparse, seed=seed)
        weight_map.update({t[0]: name for t in group})
    index = {
        "metadata": {"total_size": sum(tensor_bytes(t) for t in tensors)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_tokenizer(
    directory: Path,
    *,
    chat_template: str | None = CHATML_TEMPLATE,
    model_max_length: int | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """A minimal but well-formed tokenizers BPE tokenizer.json and tokenizer_config.json."""
    vocab = {"<s>": 0, "</s>": 1, **{chr(c): c - 30 for c in range(97, 123)}}
    write_json(
        directory / "tokenizer.json",
        {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [],
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False},
            "post_processor": None,
            "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": vocab, "merges": []},
        },
    )
    tokenizer_config: dict[str, Any] = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if chat_template is not None:
        tokenizer_config["chat_template"] = chat_template
    if model_max_length is not None:
        tokenizer_config["model_max_length"] = model_max_length
    tokenizer_config.update(extra or {})
    write_json(directory / "tokenizer_config.json", tokenizer_config)


# --------------------------------------------------------------------------- published models

LLAMA3_8B_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 8192,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}
LLAMA3_8B_PARAMS = 8_030_261_248

QWEN2_0_5B_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 896,
    "initializer_range": 0.02,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "model_type": "qwen2",
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
QWEN2_0_5B_PARAMS = 494_032_768

TINY_LLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "max_position_embeddings": 2048,
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 256,
}


def write_llama3_8b(directory: Path) -> Path:
    """meta-llama/Meta-Llama-3-8B: 4 sparse bf16 shards + index, 8,030,261,248 params."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "config.json", LLAMA3_8B_CONFIG)
    write_json(
        directory / "generation_config.json",
        {"bos_token_id": 128000, "eos_token_id": 128001, "transformers_version": "4.40.0.dev0"},
    )
    write_weights(directory, llama_tensors(LLAMA3_8B_CONFIG))
    write_tokenizer(
        directory,
        chat_template=LLAMA3_TEMPLATE,
        model_max_length=1000000000000000019884624838656,
        extra={"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
    )
    return directory


def write_qwen2_0_5b(directory: Path) -> Path:
    """Qwen/Qwen2-0.5B: one sparse bf16 model.safetensors, tied embeddings, 494,032,768 params."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "config.json", QWEN2_0_5B_CONFIG)
    write_weights(directory, llama_tensors(QWEN2_0_5B_CONFIG))
    write_tokenizer(
        directory,
        chat_template=CHATML_TEMPLATE,
        model_max_length=32768,
        extra={"bos_token": None, "eos_token": "<|endoftext|>", "tokenizer_class": "Qwen2Tokenizer"},
    )
    return directory


def write_tiny_llama(
    directory: Path,
    *,
    shards: int = 1,
    weights_dtype: str = "BF16",
    tokenizer: bool = True,
    chat_template: str | None = CHATML_TEMPLATE,
    **config_overrides: Any,
) -> Path:
    """A small Llama checkpoint with real (deterministic) weight bytes.

    `config_overrides` replace config.json keys (None removes the key); tensor
    shapes follow the resulting config, so the checkpoint stays consistent.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(TINY_LLAMA_CONFIG)
    for key, value in config_overrides.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    write_json(directory / "config.json", config)
    write_weights(
        directory,
        llama_tensors({**TINY_LLAMA_CONFIG, **config}, dtype=weights_dtype),
        shards=shards,
        sparse=False,
    )
    if tokenizer:
        write_tokenizer(directory, chat_template=chat_template)
    return directory


def write_lora(
    directory: Path,
    base: str | None = "demo-tiny-llama",
    r: int = 8,
    *,
    alpha: float = 16,
    target_modules: Sequence[str] | str = ("v_proj", "q_proj"),
    num_layers: int = 2,
    hidden_size: int = 64,
    kv_dim: int = 32,
    weights: bool = True,
    **config_overrides: Any,
) -> Path:
    """A PEFT LoRA adapter for the tiny Llama: adapter_config.json + adapter_model.safetensors.

    `base=None` leaves base_model_name_or_path out; `weights=False` writes no weights.
    """
    directory.mkdir(parents=True, exist_ok=True)
    targets: Any = target_modules if isinstance(target_modules, str) else list(target_modules)
    config: dict[str, Any] = {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": base,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": alpha,
        "lora_dropout": 0.05,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": {},
        "revision": None,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }
    if base is None:
        del config["base_model_name_or_path"]
    config.update(config_overrides)
    write_json(directory / "adapter_config.json", config)
    if weights:
        out_dims = {"q_proj": hidden_size, "k_proj": kv_dim, "v_proj": kv_dim, "o_proj": hidden_size}
        modules = [targets] if isinstance(targets, str) else targets
        tensors: list[Tensor] = []
        for i in range(num_layers):
            for module in sorted(modules):
                prefix = f"base_model.model.model.layers.{i}.self_attn.{module}"
                out = out_dims.get(module, hidden_size)
                tensors.append((f"{prefix}.lora_A.weight", "F32", (r, hidden_size)))
                tensors.append((f"{prefix}.lora_B.weight", "F32", (out, r)))
        write_safetensors(directory / "adapter_model.safetensors", tensors, sparse=False)
    return directory
