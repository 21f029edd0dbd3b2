"""Read a checkpoint directory without loading its weights.

Registration must be cheap and must never execute anything from the checkpoint,
so everything here comes from JSON files and safetensors *headers*: the
weights themselves are never read (a 16 GB model is inspected in
milliseconds). Every problem is raised as a `CheckpointError` whose code is
stable, whose message names the offending file and whose hint says how to fix
it, because the person registering a checkpoint is the one who has to repair it.

Error codes raised here:

    not_a_directory, unreadable, symlink_outside, missing_config, invalid_config,
    no_weights, invalid_index, missing_shard, corrupt_weights, unsupported_dtype,
    no_tokenizer, invalid_tokenizer_config, invalid_adapter_config,
    lora_without_base, lora_no_weights
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from inference_endpoints.core.errors import CheckpointError
from inference_endpoints.core.facts import DTYPE_BYTES, CheckpointFacts, LoraFacts
from inference_endpoints.core.status import CheckpointKind
from inference_endpoints.services.checkpoint_files import (
    checkpoint_digest,
    require_directory,
    require_inside,
    total_bytes,
    unreadable,
)

__all__ = ["checkpoint_digest", "derive_max_positions", "inspect_checkpoint", "read_safetensors_header"]

# safetensors dtype codes -> the torch names used in facts.DTYPE_BYTES. Codes the
# platform cannot size (F8_E8M0, F4, U16/U32/U64, C64, ...) are rejected rather than
# guessed, so memory estimates never silently use a wrong element size.
SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}

# The safetensors library refuses headers above 100 MB; anything larger is garbage.
MAX_HEADER_BYTES = 100_000_000
# JSON side files (config, index, tokenizer_config, adapter_config) are small;
# refusing huge ones keeps a hostile directory from exhausting memory.
MAX_JSON_BYTES = 100 * 1024 * 1024

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"

REQUIRED_CONFIG_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")

# Files that let vLLM build a tokenizer from the checkpoint directory itself.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tekken.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.txt",
)
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# vLLM's `possible_keys` for the model's maximum length, in vLLM's order.
MAX_LEN_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
# What vLLM assumes when a config names no maximum length at all.
DEFAULT_MAX_LEN = 2048
# RoPE types whose `factor` vLLM does not multiply into the maximum length.
UNSCALED_ROPE_TYPES = ("su", "longrope", "llama3")

_CONVERT_HINT = (
    "Pickled weights (.bin/.pt) are not accepted because loading them can run arbitrary "
    'code. Convert them to safetensors, e.g. `python -c "from transformers import '
    "AutoModelForCausalLM as M; M.from_pretrained('IN', torch_dtype='auto')"
    ".save_pretrained('OUT', safe_serialization=True)\"`, then copy the tokenizer files."
)


# --------------------------------------------------------------------------- safetensors


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its safetensors header describes it."""

    name: str
    dtype: str  # torch name, e.g. "bfloat16"
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header: every byte of the file is accounted for."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_bytes: int  # size of the data region (file size - 8 - header length)


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse and validate a safetensors header by hand, reading no tensor data.

    Done by hand (not with the safetensors library) so the check needs no
    framework, reads at most 8 + header bytes, and can say precisely what is
    wrong. The checks are the ones the library applies at load time: sane header
    length, a JSON object header, known dtypes, byte sizes matching shapes,
    offsets contiguous from 0, and a data region exactly as long as the file.
    """
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _corrupt(
                    path,
                    f"{path} is truncated: {file_size} bytes, shorter than the 8-byte "
                    "header length that starts every safetensors file",
                )
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len == 0 or header_len > MAX_HEADER_BYTES:
                raise _corrupt(
                    path,
                    f"{path} is not a valid safetensors file: its header length field says "
                    f"{header_len} bytes (allowed: 1 to {MAX_HEADER_BYTES})",
                )
            if 8 + header_len > file_size:
                raise _corrupt(
                    path,
                    f"{path} is truncated or not a safetensors file: its header length "
                    f"field says {header_len} bytes but the file has only {file_size} bytes",
                )
            raw = f.read(header_len)
    except OSError as exc:
        raise unreadable(path, exc) from exc
    if len(raw) != header_len:
        raise _corrupt(path, f"{path} changed size while its header was being read")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _corrupt(path, f"{path} has a header that is not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _corrupt(path, f"{path} has a header that is not a JSON object")

    metadata_raw = header.pop("__metadata__", {})
    if not isinstance(metadata_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata_raw.items()
    ):
        raise _corrupt(path, f"{path} has a `__metadata__` entry that is not a string map")

    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        info, begin, end = _parse_tensor_entry(path, name, entry)
        tensors[name] = info
        spans.append((begin, end, name))

    data_bytes = file_size - 8 - header_len
    position, previous = 0, ""
    for begin, end, name in sorted(spans):
        if begin < position:
            raise _corrupt(
                path,
                f"{path}: tensor '{name}' (bytes {begin}-{end}) overlaps tensor '{previous}' "
                f"which ends at byte {position}",
            )
        if begin > position:
            raise _corrupt(
                path,
                f"{path}: data offsets are not contiguous: {begin - position} unused bytes "
                f"before tensor '{name}' at byte {begin}",
            )
        position, previous = end, name
    if position > data_bytes:
        raise _corrupt(
            path,
            f"{path} is truncated: its header describes {position} bytes of tensor data "
            f"but only {data_bytes} are present",
        )
    if position < data_bytes:
        raise _corrupt(
            path,
            f"{path} has {data_bytes - position} unexpected bytes after the last tensor "
            "(the safetensors loader rejects such files)",
        )
    return SafetensorsHeader(path, tensors, dict(metadata_raw), data_bytes)


def _parse_tensor_entry(path: Path, name: str, entry: Any) -> tuple[TensorInfo, int, int]:
    """Validate one header entry; returns the tensor and its [begin, end) data offsets."""
    if not isinstance(entry, dict):
        raise _corrupt(path, f"{path}: header entry for tensor '{name}' is not an object")
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(code, str):
        raise _corrupt(path, f"{path}: tensor '{name}' has no dtype")
    dtype = SAFETENSORS_DTYPES.get(code)
    if dtype is None:
        raise CheckpointError(
            "unsupported_dtype",
            f"{path}: tensor '{name}' has dtype {code}, which the platform cannot size",
            f"Supported safetensors dtypes: {', '.join(SAFETENSORS_DTYPES)}. "
            "Re-save the checkpoint in one of them (bfloat16 or float16 for most models).",
        )
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _corrupt(path, f"{path}: tensor '{name}' has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _corrupt(path, f"{path}: tensor '{name}' has invalid data_offsets {offsets!r}")
    begin, end = int(offsets[0]), int(offsets[1])
    numel = math.prod(shape)
    expected = int(numel * DTYPE_BYTES[dtype])
    if end - begin != expected:
        raise _corrupt(
            path,
            f"{path}: tensor '{name}' ({code}, shape {shape}) should take {expected} bytes "
            f"but its data_offsets span {end - begin}",
        )
    return TensorInfo(name, dtype, tuple(int(d) for d in shape), expected), begin, end


def _corrupt(path: Path, message: str) -> CheckpointError:
    return CheckpointError(
        "corrupt_weights",
        message,
        f"Re-copy or re-download {path.name}; if it was written by your own code, save it "
        "again with `safetensors` (e.g. `save_pretrained(..., safe_serialization=True)`).",
    )


# --------------------------------------------------------------------------- inspection


@dataclass(frozen=True)
class _Weights:
    param_count: int
    weight_bytes: int
    dtype: str


def inspect_checkpoint(path: Path) -> CheckpointFacts:
    """Describe a full or LoRA checkpoint directory from its files alone.

    A directory holding `adapter_config.json` is a LoRA adapter; anything else must
    be a full model with config.json, safetensors weights and a tokenizer.
    """
    root = require_directory(Path(path))
    if (root / ADAPTER_CONFIG_FILE).exists() or (root / ADAPTER_CONFIG_FILE).is_symlink():
        return _inspect_lora(root)
    return _inspect_full(root)


def _inspect_full(root: Path) -> CheckpointFacts:
    config_path = root / CONFIG_FILE
    if not config_path.exists():
        raise CheckpointError(
            "missing_config",
            f"{config_path} does not exist",
            "A full checkpoint needs the Hugging Face config.json next to its weights; "
            "save the model with `save_pretrained()`, or add adapter_config.json if this "
            "is a LoRA adapter.",
        )
    config = _read_json_object(root, config_path, "invalid_config", _CONFIG_HINT)
    text = _text_config(config)
    prefix = "text_config." if text is not config else ""

    architectures = config.get("architectures")
    if (
        not isinstance(architectures, list)
        or not architectures
        or not all(isinstance(a, str) and a for a in architectures)
    ):
        raise _invalid_config(config_path, "'architectures' must be a non-empty list of names")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise _invalid_config(config_path, "'model_type' is missing or not a string")
    values = {key: _config_int(config_path, text, key, prefix) for key in REQUIRED_CONFIG_KEYS}

    head_dim = text.get("head_dim")
    if head_dim is None:
        head_dim = values["hidden_size"] // values["num_attention_heads"]
    elif not _is_int(head_dim) or head_dim <= 0:
        raise _invalid_config(config_path, f"'{prefix}head_dim' must be a positive integer")
    kv_heads = _kv_heads(config_path, text, prefix) or values["num_attention_heads"]

    weights = _full_weights(root)
    tokenizer_config = _tokenizer_config(root)
    if not _has_tokenizer(root):
        raise CheckpointError(
            "no_tokenizer",
            f"{root} has no tokenizer (looked for {', '.join(TOKENIZER_FILES)}, "
            "vocab.json + merges.txt, *.tiktoken)",
            "Copy the tokenizer files of the base model into the directory, e.g. "
            "`AutoTokenizer.from_pretrained(BASE).save_pretrained(DIR)`.",
        )

    return CheckpointFacts(
        kind=CheckpointKind.FULL,
        architecture=architectures[0],
        model_type=model_type,
        param_count=weights.param_count,
        dtype=weights.dtype,
        config_dtype=_config_dtype(config, text),
        weight_bytes=weights.weight_bytes,
        total_bytes=total_bytes(root),
        max_positions=derive_max_positions(config, tokenizer_config),
        num_layers=values["num_hidden_layers"],
        num_kv_heads=kv_heads,
        head_dim=int(head_dim),
        hidden_size=values["hidden_size"],
        vocab_size=values["vocab_size"],
        has_tokenizer=True,
        has_chat_template=_has_chat_template(root, tokenizer_config),
        quantization_method=_quantization_method(config),
    )


_CONFIG_HINT = (
    "config.json must be the JSON object written by `save_pretrained()`; re-export it "
    "from the training code or copy it from the base model."
)


def _invalid_config(config_path: Path, what: str) -> CheckpointError:
    return CheckpointError("invalid_config", f"{config_path}: {what}", _CONFIG_HINT)


def _config_int(config_path: Path, text: Mapping[str, Any], key: str, prefix: str) -> int:
    value = text.get(key)
    if value is None:
        raise CheckpointError(
            "invalid_config",
            f"{config_path}: required key '{prefix}{key}' is missing",
            f"Add '{key}' to config.json (copy it from the base model's config); the "
            "platform needs it to size the KV cache.",
        )
    if not _is_int(value) or value <= 0:
        raise _invalid_config(config_path, f"'{prefix}{key}' must be a positive integer")
    return int(value)


def _kv_heads(config_path: Path, text: Mapping[str, Any], prefix: str) -> int | None:
    """KV heads under any of the names vLLM accepts (Falcon, Llama-2, ChatGLM)."""
    for key in ("n_head_kv", "num_kv_heads", "num_key_value_heads", "multi_query_group_num"):
        value = text.get(key)
        if value is None:
            continue
        if not _is_int(value) or value <= 0:
            raise _invalid_config(config_path, f"'{prefix}{key}' must be a positive integer")
        return int(value)
    return None


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language-model part of a (possibly multimodal) config, as vLLM reads it."""
    nested = config.get("text_config")
    return nested if isinstance(nested, dict) else config


def _config_dtype(config: Mapping[str, Any], text: Mapping[str, Any]) -> str | None:
    for source in (config, text):
        for key in ("torch_dtype", "dtype"):
            value = source.get(key)
            if isinstance(value, str) and value:
                return value
    return None


def _quantization_method(config: Mapping[str, Any]) -> str | None:
    """quant_method normalised like vLLM (lower case, compressed-tensors with a dash)."""
    for source in (config, _text_config(config)):
        for key in ("quantization_config", "compression_config"):
            quant = source.get(key)
            if isinstance(quant, dict):
                method = quant.get("quant_method")
                if isinstance(method, str) and method:
                    return method.lower().replace("compressed_tensors", "compressed-tensors")
    return None


def _full_weights(root: Path) -> _Weights:
    """Headers of the files vLLM would load: the index's shards, else every *.safetensors."""
    index_path = root / INDEX_FILE
    if index_path.exists() or index_path.is_symlink():
        shards, expected = _index_shards(root, index_path)
        headers = {shard: read_safetensors_header(shard) for shard in shards}
        for name, shard in expected:
            if name not in headers[shard].tensors:
                raise CheckpointError(
                    "invalid_index",
                    f"{index_path} maps tensor '{name}' to {shard.name}, which does not contain it",
                    "Regenerate the index with the weights (`save_pretrained()` writes both).",
                )
        return _summarise(list(headers.values()), root, "no_weights")

    files = sorted(p for p in root.glob("*.safetensors") if p.is_file())
    if not files:
        pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
        found = f" (found {', '.join(pickles)})" if pickles else ""
        raise CheckpointError(
            "no_weights",
            f"{root} has no *.safetensors weight files{found}",
            _CONVERT_HINT
            if pickles
            else "Save the model with `save_pretrained()`; "
            "the platform only serves safetensors weights. " + _CONVERT_HINT,
        )
    for file in files:
        require_inside(root, file)
    return _summarise([read_safetensors_header(f) for f in files], root, "no_weights")


def _index_shards(root: Path, index_path: Path) -> tuple[list[Path], list[tuple[str, Path]]]:
    """The shard files an index names, each checked to exist inside the directory."""
    hint = "Regenerate model.safetensors.index.json together with the shards."
    index = _read_json_object(root, index_path, "invalid_index", hint)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            "invalid_index", f"{index_path} has no 'weight_map' object of tensor -> file", hint
        )
    shards: dict[str, Path] = {}
    expected: list[tuple[str, Path]] = []
    for tensor, filename in weight_map.items():
        if not isinstance(filename, str) or not filename:
            raise CheckpointError(
                "invalid_index", f"{index_path}: tensor '{tensor}' maps to {filename!r}", hint
            )
        if filename not in shards:
            shard = root / filename
            if Path(filename).is_absolute() or ".." in Path(filename).parts:
                raise CheckpointError(
                    "invalid_index",
                    f"{index_path}: shard {filename!r} points outside {root}",
                    hint,
                )
            if not shard.is_file():
                raise CheckpointError(
                    "missing_shard",
                    f"{index_path} names shard {filename}, which is not in {root}",
                    "Copy every model-XXXXX-of-YYYYY.safetensors file listed in the index; "
                    "an interrupted download or copy usually leaves one out.",
                )
            require_inside(root, shard)
            shards[filename] = shard
        expected.append((tensor, shards[filename]))
    return list(shards.values()), expected


def _summarise(headers: list[SafetensorsHeader], root: Path, code: str) -> _Weights:
    bytes_by_dtype: dict[str, int] = {}
    params = 0
    for header in headers:
        for tensor in header.tensors.values():
            params += tensor.numel
            bytes_by_dtype[tensor.dtype] = bytes_by_dtype.get(tensor.dtype, 0) + tensor.nbytes
    if not bytes_by_dtype:
        names = ", ".join(h.path.name for h in headers)
        raise CheckpointError(
            code,
            f"{root}: the safetensors files ({names}) contain no tensors",
            "Save the trained weights again; the files present are empty.",
        )
    # Most bytes wins; ties go to the alphabetically first name so the result is stable.
    dtype = min(bytes_by_dtype, key=lambda d: (-bytes_by_dtype[d], d))
    return _Weights(params, sum(bytes_by_dtype.values()), dtype)


def _tokenizer_config(root: Path) -> dict[str, Any] | None:
    path = root / TOKENIZER_CONFIG_FILE
    if not (path.exists() or path.is_symlink()):
        return None
    return _read_json_object(
        root,
        path,
        "invalid_tokenizer_config",
        "Re-save the tokenizer with `tokenizer.save_pretrained(DIR)` or remove the file.",
    )


def _has_tokenizer(root: Path) -> bool:
    if any((root / name).is_file() for name in TOKENIZER_FILES):
        return True
    if (root / "vocab.json").is_file() and (root / "merges.txt").is_file():
        return True
    return any(p.is_file() for p in root.glob("*.tiktoken"))


def _has_chat_template(root: Path, tokenizer_config: Mapping[str, Any] | None) -> bool:
    if tokenizer_config and tokenizer_config.get("chat_template"):
        return True
    return any((root / name).is_file() for name in CHAT_TEMPLATE_FILES)


def _inspect_lora(root: Path) -> CheckpointFacts:
    config_path = root / ADAPTER_CONFIG_FILE
    hint = (
        "adapter_config.json must be the JSON object written by PEFT's `save_pretrained()`; "
        "save the adapter again from the training code."
    )
    config = _read_json_object(root, config_path, "invalid_adapter_config", hint)

    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base.strip():
        raise CheckpointError(
            "lora_without_base",
            f"{config_path} does not name its base model (base_model_name_or_path is {base!r})",
            "Set base_model_name_or_path to the name of the registered base checkpoint the "
            "adapter was trained on.",
            field_name="base_model_name_or_path",
        )
    peft_type = config.get("peft_type", "LORA")
    if not isinstance(peft_type, str) or peft_type.upper() != "LORA":
        raise CheckpointError(
            "invalid_adapter_config",
            f"{config_path}: peft_type is {peft_type!r}; only LoRA adapters can be served",
            "Train a LoRA adapter (peft LoraConfig) or merge this adapter into a full model.",
        )
    rank = config.get("r")
    if not _is_int(rank) or rank <= 0:
        raise CheckpointError(
            "invalid_adapter_config", f"{config_path}: 'r' must be a positive integer", hint
        )
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        raise CheckpointError(
            "invalid_adapter_config", f"{config_path}: 'lora_alpha' must be a positive number", hint
        )
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise CheckpointError(
            "invalid_adapter_config",
            f"{config_path}: 'target_modules' must be a module name or a non-empty list of them",
            hint,
        )

    weights_path = root / ADAPTER_WEIGHTS_FILE
    if not weights_path.is_file():
        pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
        found = f" (found {', '.join(pickles)})" if pickles else ""
        raise CheckpointError(
            "lora_no_weights",
            f"{weights_path} does not exist{found}",
            "Save the adapter with `model.save_pretrained(DIR)` (PEFT writes "
            "adapter_model.safetensors by default)." + (" " + _CONVERT_HINT if pickles else ""),
        )
    require_inside(root, weights_path)
    weights = _summarise([read_safetensors_header(weights_path)], root, "lora_no_weights")
    tokenizer_config = _tokenizer_config(root)

    return CheckpointFacts(
        kind=CheckpointKind.LORA,
        architecture=peft_type.upper(),
        model_type="",
        param_count=weights.param_count,
        dtype=weights.dtype,
        config_dtype=None,
        weight_bytes=weights.weight_bytes,
        total_bytes=total_bytes(root),
        max_positions=None,
        num_layers=0,
        num_kv_heads=0,
        head_dim=0,
        hidden_size=0,
        vocab_size=0,
        has_tokenizer=_has_tokenizer(root),
        has_chat_template=_has_chat_template(root, tokenizer_config),
        quantization_method=None,
        lora=LoraFacts(
            rank=int(rank),
            alpha=float(alpha),
            target_modules=tuple(sorted(set(targets))),
            base_model=base,
        ),
    )


# --------------------------------------------------------------------------- max length


def derive_max_positions(config: Mapping[str, Any], tokenizer_config: Mapping[str, Any] | None = None) -> int:
    """The longest context vLLM will accept for this config, derived as vLLM derives it.

    Followed: vLLM's `ModelArchConfigConvertorBase.derive_max_model_len_and_key` plus the
    RoPE part of `_get_and_verify_max_len` (vllm/config/model.py, v0.11+ with
    `rope_parameters`; the same rules as the older `rope_scaling` code):

    1. On the text config (`text_config` when nested), take the minimum over the keys
       in `MAX_LEN_KEYS`; a truthy `model_max_length` then overrides it (Command-R).
    2. Cap it with tokenizer_config.json's `model_max_length` when that is present.
    3. If nothing was found, assume 2048 as vLLM does.
    4. Unless `model_type` contains "gemma3" (already scaled), for each RoPE parameter
       set (`rope_parameters`, else `rope_scaling`; a per-layer-type nested map counts
       each set) whose type is not su/longrope/llama3: take its `factor` (default 1.0),
       and for yarn restart from its `original_max_position_embeddings` when given;
       multiply once by the factor. The legacy `type` key is read like `rope_type`.

    Not followed: user overrides, sliding-window disabling and sentence-transformers
    encoder configs, which are serve-time choices rather than checkpoint facts. For
    LongRoPE vLLM *defaults* to original_max_position_embeddings but accepts up to
    the value returned here.
    """
    text = _text_config(config)
    derived = math.inf
    for key in MAX_LEN_KEYS:
        value = _number(text.get(key))
        if value is not None:
            derived = min(derived, value)
    override = _number(text.get("model_max_length"))
    if override:
        derived = override
    if tokenizer_config:
        cap = _number(tokenizer_config.get("model_max_length"))
        if cap is not None:
            derived = min(derived, cap)
    if derived == math.inf:
        derived = DEFAULT_MAX_LEN

    model_type = config.get("model_type")
    rope_sets = _rope_parameter_sets(text)
    if rope_sets and "gemma3" not in (model_type if isinstance(model_type, str) else ""):
        factor = 1.0
        for params in rope_sets:
            rope_type = params.get("rope_type", params.get("type", "default"))
            if rope_type in UNSCALED_ROPE_TYPES:
                continue
            set_factor = _number(params.get("factor"))
            if set_factor is not None:
                factor = set_factor
            if rope_type == "yarn":
                original = _number(params.get("original_max_position_embeddings"))
                if original is not None:
                    derived = original
        derived *= factor
    return int(derived)


def _rope_parameter_sets(text: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """RoPE settings as a list of parameter dicts (one per layer type when nested)."""
    params = text.get("rope_parameters")
    if not isinstance(params, dict) or not params:
        params = text.get("rope_scaling")
    if not isinstance(params, dict) or not params:
        return []
    values = list(params.values())
    if "rope_type" not in params and "type" not in params and all(isinstance(v, dict) for v in values):
        return values
    return [params]


def _read_json_object(root: Path, path: Path, code: str, hint: str) -> dict[str, Any]:
    """Parse a JSON side file, turning every failure into `code` with the file named."""
    require_inside(root, path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise CheckpointError(code, f"{path} is {size} bytes, too large to be JSON", hint)
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise unreadable(path, exc) from exc
    except UnicodeDecodeError as exc:
        raise CheckpointError(code, f"{path} is not UTF-8 text ({exc})", hint) from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(code, f"{path} is not valid JSON ({exc})", hint) from exc
    if not isinstance(data, dict):
        raise CheckpointError(code, f"{path} must hold a JSON object, not {type(data).__name__}", hint)
    return data


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> float | None:
    """A JSON number as a float, or None for anything else (bools, strings, null)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
