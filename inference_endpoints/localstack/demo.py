"""The project's demo/test models, built offline and deterministically.

`make_demo()` trains a tiny Llama (about 0.6M parameters) and a LoRA adapter
for it from the text in `data/demo_corpus.txt`, so the demo, the tests and CI
have a real checkpoint to register and serve without downloading anything. The
same seed gives byte-identical weights on the same machine, and a finished
build is cached (see `default_demo_dir()`), so it is paid for once.

torch, transformers, tokenizers and peft (the `demo` extra) are imported only
inside the build, so the core can import this module to find the cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference_endpoints.settings import default_demo_dir

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
__all__ = ["DemoCheckpoints", "default_demo_dir", "make_demo"]

# Bump when anything that changes the built files changes (corpus, recipe,
# library behaviour we rely on): cached builds with another version are rebuilt.
DEMO_VERSION = "1"
MARKER_FILE = ".demo-version"
BASE_NAME = "demo-tiny-llama"
LORA_NAME = "demo-tiny-llama-lora"
CORPUS_PATH = Path(__file__).parent / "data" / "demo_corpus.txt"

VOCAB_SIZE = 1024
SEQ_LEN = 64
BATCH_SIZE = 8
BASE_LR = 3e-3
LORA_LR = 1e-2

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_TOKENS)  # ids 0..5, in this order

# One turn is "<|role|>\n{content}</s>\n"; the assistant's turn ends with EOS so
# that generation (and vLLM's chat endpoint) stops there.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unsupported role: ' + message['role']) }}"
    "{%- endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class DemoCheckpoints:
    """Where the two demo checkpoints live."""

    full: Path
    lora: Path


def make_demo(dest: Path, *, steps: int = 300, seed: int = 0, lora_steps: int = 150) -> DemoCheckpoints:
    """Build (or reuse) `dest/demo-tiny-llama` and `dest/demo-tiny-llama-lora`.

    A build is reused only if both directories carry a marker for this version,
    step count and seed. Otherwise it is built in a temporary directory under
    `dest` and renamed into place, under a file lock so concurrent callers
    (parallel test sessions, CI jobs) build it once.
    """
    dest = Path(dest)
    ckpts = DemoCheckpoints(full=dest / BASE_NAME, lora=dest / LORA_NAME)
    marker = _marker_text(steps=steps, seed=seed, lora_steps=lora_steps)
    if _is_complete(ckpts, marker):
        return ckpts
    dest.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest / ".demo.lock"):
        if _is_complete(ckpts, marker):  # another process built it meanwhile
            return ckpts
        with tempfile.TemporaryDirectory(dir=dest, prefix=".build-") as tmp_name:
            tmp = Path(tmp_name)
            started = time.perf_counter()
            _build(tmp / BASE_NAME, tmp / LORA_NAME, steps=steps, seed=seed, lora_steps=lora_steps)
            for path in (tmp / BASE_NAME, tmp / LORA_NAME):
                (path / MARKER_FILE).write_text(marker)
                _make_readable(path)
            # Old builds are moved into the temp dir, which then deletes them.
            for built, final in ((tmp / LORA_NAME, ckpts.lora), (tmp / BASE_NAME, ckpts.full)):
                if final.exists():
                    final.rename(tmp / f"old-{final.name}")
                built.rename(final)
            logger.info("built demo checkpoints in %.1fs at %s", time.perf_counter() - started, dest)
    return ckpts


def sha256_file(path: Path) -> str:
    """Digest used to check that two builds are byte-identical."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_corpus(path: Path = CORPUS_PATH) -> dict[str, list[list[tuple[str, str]]]]:
    """Parse the corpus into sections of blocks.

    Each block is a list of (role, text) pairs: a prose paragraph is a single
    ("text", ...) pair, a conversation is its system/user/assistant turns.
    """
    sections: dict[str, list[list[tuple[str, str]]]] = {}
    current: list[list[tuple[str, str]]] | None = None
    lines: list[str] = []

    def flush() -> None:
        if lines and current is not None:
            current.append(_parse_block(lines))
        lines.clear()

    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if line.startswith("=== ") and line.endswith(" ==="):
            flush()
            current = sections.setdefault(line[4:-4].strip(), [])
        elif not line:
            flush()
        else:
            lines.append(line)
    flush()
    return sections


def _parse_block(lines: list[str]) -> list[tuple[str, str]]:
    roles = {"System:": "system", "User:": "user", "Assistant:": "assistant"}
    if not any(lines[0].startswith(prefix) for prefix in roles):
        return [("text", " ".join(lines))]
    turns: list[tuple[str, str]] = []
    for line in lines:
        prefix = next((p for p in roles if line.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"conversation line without a role: {line!r}")
        turns.append((roles[prefix], line[len(prefix) :].strip()))
    return turns


def _marker_text(*, steps: int, seed: int, lora_steps: int) -> str:
    return f"{DEMO_VERSION}\nsteps={steps}\nseed={seed}\nlora_steps={lora_steps}\n"


def _is_complete(ckpts: DemoCheckpoints, marker: str) -> bool:
    for path in (ckpts.full, ckpts.lora):
        try:
            if (path / MARKER_FILE).read_text() != marker:
                return False
        except OSError:
            return False
    return True


def _make_readable(directory: Path) -> None:
    """transformers writes model.safetensors as 0600 (via a temp file); the
    cache is shared and mounted into serving containers, so open it up."""
    for path in directory.iterdir():
        path.chmod(0o644)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def _single_thread() -> Iterator[None]:
    """One intra-op thread: same bits on every run, and polite on a shared host."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _build(full_dir: Path, lora_dir: Path, *, steps: int, seed: int, lora_steps: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    sections = load_corpus()
    base_blocks, adapter_blocks = sections["base"], sections["adapter"]
    tokenizer = _train_tokenizer(base_blocks + adapter_blocks)

    with _single_thread():
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=64,
            max_position_embeddings=2048,
            tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            dtype="float32",
        )
        model = LlamaForCausalLM(config)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        stream = _token_stream(tokenizer, base_blocks)
        stats = _train(model, list(model.parameters()), stream, steps=steps, lr=BASE_LR, seed=seed)
        full_dir.mkdir(parents=True)
        model.save_pretrained(full_dir)
        _save_tokenizer(tokenizer, full_dir)
        _write_stats(full_dir / "training.json", stats, seed=seed, corpus="base", tokens=stream)

        # The adapter is trained on the weights just saved (still in memory).
        torch.manual_seed(seed + 1)
        lora_config = LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, lora_config)
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        adapter_stream = _token_stream(tokenizer, adapter_blocks)
        lora_stats = _train(
            peft_model, trainable, adapter_stream, steps=lora_steps, lr=LORA_LR, seed=seed + 1
        )
        lora_dir.mkdir(parents=True)
        peft_model.save_pretrained(str(lora_dir), safe_serialization=True)
        (lora_dir / "README.md").unlink(missing_ok=True)  # peft's empty model card
        _normalize_adapter_config(lora_dir / "adapter_config.json")
        _save_tokenizer(tokenizer, lora_dir)
        _write_stats(
            lora_dir / "training.json", lora_stats, seed=seed + 1, corpus="adapter", tokens=adapter_stream
        )


def _normalize_adapter_config(path: Path) -> None:
    """Point the adapter at the base by registry name, and make the file stable.

    peft keeps `target_modules` as a set, so its saved order follows Python's
    per-process string hashing; sorting it keeps rebuilds byte-identical.
    """
    config = json.loads(path.read_text())
    # The registry resolves this name to the registered base checkpoint.
    config["base_model_name_or_path"] = BASE_NAME
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _train_tokenizer(blocks: list[list[tuple[str, str]]]) -> Any:
    """Byte-level BPE on the corpus, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [text for block in blocks for _, text in block]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(SPECIAL_TOKENS),
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    bos_id = bpe.token_to_id(BOS)
    # Prepend BOS like Llama tokenizers do; the chat template adds its own BOS
    # and is tokenized without special tokens, so a prompt never gets two.
    bpe.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def _save_tokenizer(tokenizer: Any, directory: Path) -> None:
    """Save the tokenizer so both transformers 4.x and 5.x (and vLLM) load it.

    transformers 5 records its internal class name (`TokenizersBackend`) and no
    special_tokens_map.json; the portable class name and the map are written
    back so older readers are not locked out.
    """
    tokenizer.save_pretrained(str(directory))
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    special = {
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "additional_special_tokens": list(ROLE_TOKENS),
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def _token_stream(tokenizer: Any, blocks: list[list[tuple[str, str]]]) -> list[int]:
    """Concatenate the blocks into one token stream, each as BOS ... EOS.

    Conversations go through the chat template, so the model learns the exact
    format the serving endpoint will feed it, including EOS after each turn.
    """
    ids: list[int] = []
    for block in blocks:
        if block[0][0] == "text":
            ids += [*tokenizer(block[0][1]).input_ids, tokenizer.eos_token_id]
        else:
            messages = [{"role": role, "content": text} for role, text in block]
            rendered = tokenizer.apply_chat_template(messages, tokenize=False)
            ids += tokenizer(rendered, add_special_tokens=False).input_ids
    return ids


def _train(
    model: Any,
    params: list[torch.nn.Parameter],
    stream: list[int],
    *,
    steps: int,
    lr: float,
    seed: int,
) -> dict[str, Any]:
    """AdamW on random windows of the stream; loss measured on fixed windows.

    Initial and final loss are computed on the same evenly spaced windows so
    they compare like with like (a single training batch would be noisy).
    """
    import torch

    data = torch.tensor(stream, dtype=torch.long)
    if len(data) <= SEQ_LEN:
        raise ValueError(f"corpus too short: {len(data)} tokens")
    starts = torch.linspace(0, len(data) - SEQ_LEN, BATCH_SIZE).long()
    eval_batch = torch.stack([data[s : s + SEQ_LEN] for s in starts.tolist()])

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = model(input_ids=eval_batch, labels=eval_batch).loss
        model.train()
        return float(loss)

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, min(20, steps // 10))

    def schedule(step: int) -> float:  # linear warmup, cosine decay to 10 %
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    initial = eval_loss()
    curve: dict[str, float] = {}
    model.train()
    for step in range(steps):
        offsets = torch.randint(0, len(data) - SEQ_LEN + 1, (BATCH_SIZE,), generator=generator)
        batch = torch.stack([data[o : o + SEQ_LEN] for o in offsets.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        if step % 25 == 0 or step == steps - 1:
            curve[str(step)] = round(loss.item(), 4)
    model.eval()
    return {
        "steps": steps,
        "batch_size": BATCH_SIZE,
        "seq_len": SEQ_LEN,
        "lr": lr,
        "initial_loss": round(initial, 4),
        "final_loss": round(eval_loss(), 4),
        "train_loss_curve": curve,
    }


def _write_stats(path: Path, stats: dict[str, Any], *, seed: int, corpus: str, tokens: list[int]) -> None:
    record = {
        "demo_version": DEMO_VERSION,
        "seed": seed,
        "corpus_section": corpus,
        "corpus_tokens": len(tokens),
        **stats,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")


def main() -> None:
    """`python -m inference_endpoints.localstack.demo [DEST]`: build and print the paths."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("dest", nargs="?", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-steps", type=int, default=150)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ckpts = make_demo(
        args.dest or default_demo_dir(),
        steps=args.steps,
        seed=args.seed,
        lora_steps=args.lora_steps,
    )
    print(ckpts.full)
    print(ckpts.lora)


if __name__ == "__main__":
    main()
