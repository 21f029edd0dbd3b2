"""The demo checkpoints: loadable, really trained, chat-ready, LoRA effective, reproducible.

The full build is cached in `default_demo_dir()` (set IE_DEMO_CACHE to move it),
so only the first run pays the ~20 s build.
"""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
import transformers

from inference_endpoints.localstack.demo import (
    BASE_NAME,
    MARKER_FILE,
    DemoCheckpoints,
    default_demo_dir,
    make_demo,
    sha256_file,
)

PROMPT = "What is an endpoint?"


@pytest.fixture(scope="session")
def demo() -> DemoCheckpoints:
    return make_demo(default_demo_dir())


@pytest.fixture(scope="session")
def tokenizer(demo: DemoCheckpoints):  # type: ignore[no-untyped-def]
    return transformers.AutoTokenizer.from_pretrained(demo.full)


def _load_base(demo: DemoCheckpoints):  # type: ignore[no-untyped-def]
    model = transformers.AutoModelForCausalLM.from_pretrained(demo.full)
    model.eval()
    return model


def test_files_are_complete(demo: DemoCheckpoints) -> None:
    full = {p.name for p in demo.full.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "training.json",
        MARKER_FILE,
    } <= full
    lora = {p.name for p in demo.lora.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", MARKER_FILE} <= lora
    assert not any(name.endswith((".bin", ".pt")) for name in full | lora)
    adapter_config = json.loads((demo.lora / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == BASE_NAME
    assert adapter_config["r"] == 8
    generation = json.loads((demo.full / "generation_config.json").read_text())
    assert generation["bos_token_id"] is not None and generation["eos_token_id"] is not None


def test_make_demo_is_cached(demo: DemoCheckpoints) -> None:
    before = (demo.full / "model.safetensors").stat().st_mtime_ns
    assert make_demo(default_demo_dir()) == demo
    assert (demo.full / "model.safetensors").stat().st_mtime_ns == before


def test_full_checkpoint_generates_text(demo: DemoCheckpoints, tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = _load_base(demo)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (128, 2, len(tokenizer))
    inputs = tokenizer("The morning was", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    new_tokens = out[0, inputs["input_ids"].shape[1] :]
    assert len(new_tokens) > 0
    text = tokenizer.decode(new_tokens, skip_special_tokens=True)
    assert text.strip()


def test_training_reduced_the_loss(demo: DemoCheckpoints) -> None:
    stats = json.loads((demo.full / "training.json").read_text())
    assert stats["steps"] == 300
    assert stats["final_loss"] < 0.5 * stats["initial_loss"]
    lora_stats = json.loads((demo.lora / "training.json").read_text())
    assert lora_stats["final_loss"] < lora_stats["initial_loss"]


def test_chat_template(demo: DemoCheckpoints, tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": PROMPT},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith(tokenizer.bos_token)
    assert PROMPT in rendered
    assert rendered.endswith("<|assistant|>\n")
    without_prompt = tokenizer.apply_chat_template(messages, tokenize=False)
    assert not without_prompt.endswith("<|assistant|>\n")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1  # template adds BOS, tokenizer must not again
    with pytest.raises(Exception, match="Unsupported role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)

    # The model was trained on this format: it answers and stops with EOS.
    model = _load_base(demo)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
    answer = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert tokenizer.eos_token_id in answer
    assert tokenizer.decode(answer, skip_special_tokens=True).strip()


def test_lora_changes_logits_and_disables_cleanly(demo: DemoCheckpoints, tokenizer) -> None:  # type: ignore[no-untyped-def]
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    base = _load_base(demo)
    with torch.no_grad():
        base_logits = base(**inputs).logits
    adapted = peft.PeftModel.from_pretrained(base, demo.lora)
    adapted.eval()
    with torch.no_grad():
        lora_logits = adapted(**inputs).logits
        with adapted.disable_adapter():
            disabled_logits = adapted(**inputs).logits
    assert (lora_logits - base_logits).abs().max().item() > 1.0
    torch.testing.assert_close(disabled_logits, base_logits, rtol=0, atol=1e-6)


def test_build_is_deterministic(tmp_path: Path) -> None:
    a = make_demo(tmp_path / "a", steps=5, lora_steps=5)
    b = make_demo(tmp_path / "b", steps=5, lora_steps=5)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "training.json"):
        assert sha256_file(a.full / name) == sha256_file(b.full / name), name
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert sha256_file(a.lora / name) == sha256_file(b.lora / name), name
    other_seed = make_demo(tmp_path / "c", steps=5, lora_steps=5, seed=1)
    assert sha256_file(other_seed.full / "model.safetensors") != sha256_file(a.full / "model.safetensors")


def test_stale_build_is_replaced(tmp_path: Path) -> None:
    first = make_demo(tmp_path, steps=3, lora_steps=3)
    (first.lora / MARKER_FILE).unlink()  # as if a build was interrupted halfway
    again = make_demo(tmp_path, steps=4, lora_steps=3)
    assert again == first
    assert json.loads((again.full / "training.json").read_text())["steps"] == 4
    assert (again.lora / MARKER_FILE).read_text() == (again.full / MARKER_FILE).read_text()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert leftovers == [again.full.name, again.lora.name]
