"""Checkpoint sources: each organization registers only from inside its own import roots.

On SQLite and PostgreSQL, through `register_checkpoint` (what the CLI, the API, the
console and the fine-tune flow call) with real directories and symlinks. Every refused
path gets one and the same problem, writes nothing and copies nothing; the allowed
ones register.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from inference_endpoints.core.errors import Problem, RequestInvalid
from inference_endpoints.persistence.models import Organization
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import LocalCheckpointStore
from inference_endpoints.services.import_roots import (
    OUTSIDE_ROOTS,
    SourcePolicy,
    add_root,
    remove_root,
    roots_of,
)
from inference_endpoints.services.operations import register_checkpoint
from inference_endpoints.settings import Settings
from tests.archs import write_tiny_llama


@dataclass
class World:
    registry: Registry
    store: LocalCheckpointStore
    sources: SourcePolicy
    org: Organization  # `default`
    acme: Organization
    tmp: Path

    def drop(self, org: Organization) -> Path:
        folder = self.sources.drop_folder(org.name)
        assert folder is not None
        return folder

    def register(self, path: Path | str, name: str = "new", org: Organization | None = None) -> None:
        register_checkpoint(self.registry, self.store, (org or self.org).id, path, name, sources=self.sources)

    def refusal(self, path: Path | str) -> Problem:
        """The problem registering `path` gets; asserts nothing was written or copied."""
        before, files = self.registry.counts(), _files(self.store.root)
        with pytest.raises(RequestInvalid) as exc:
            self.register(path)
        assert self.registry.counts() == before
        assert _files(self.store.root) == files
        [problem] = exc.value.problems
        return problem


def _files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def world(registry: Registry, tmp_path: Path) -> World:
    settings = Settings(data_dir=tmp_path / "data")
    sources = replace(SourcePolicy.from_settings(settings), demo_dir=tmp_path / "demo")
    org = registry.get_org_by_name("default")
    assert org is not None
    acme, _ = registry.create_org("acme")
    w = World(registry, LocalCheckpointStore(settings.store_root), sources, org, acme, tmp_path)
    roots_of(registry, sources, org)  # drop folders are made on demand
    roots_of(registry, sources, acme)
    return w


def _outside(w: World) -> Path:
    return write_tiny_llama(w.tmp / "outside" / "ckpt")


def _dotdot(w: World) -> str:
    _outside(w)
    return f"{w.drop(w.org)}/../../../outside/ckpt"  # starts in the drop folder, ends outside


def _symlink_in_root(w: World) -> Path:
    link = w.drop(w.org) / "link"
    link.symlink_to(_outside(w), target_is_directory=True)
    return link


def _symlinked_added_root(w: World) -> Path:
    """An added root that was later replaced by a symlink to somewhere else."""
    root = w.tmp / "roots" / "added"
    root.mkdir(parents=True)
    add_root(w.registry, w.sources, w.org, str(root))
    root.rmdir()
    root.symlink_to(_outside(w).parent, target_is_directory=True)
    return root / "ckpt"


def _symlinked_drop_folder(w: World) -> Path:
    """acme's drop folder replaced by a symlink: acme registers nothing through it."""
    drop = w.drop(w.acme)
    drop.rmdir()
    drop.symlink_to(_outside(w).parent, target_is_directory=True)
    return drop / "ckpt"


def _missing(w: World) -> Path:
    return w.tmp / "outside" / "no-such-dir"


def _other_orgs_drop(w: World) -> Path:
    return write_tiny_llama(w.drop(w.acme) / "theirs")


def _other_orgs_added_root(w: World) -> Path:
    root = w.tmp / "acme-jobs"
    src = write_tiny_llama(root / "theirs")
    add_root(w.registry, w.sources, w.acme, str(root))
    return src


def _store_under_an_added_root(w: World) -> Path:
    """An operator's broad root (the whole tmp dir) still never reaches the platform's data."""
    add_root(w.registry, w.sources, w.acme, str(w.tmp))
    return w.tmp / "data" / "checkpoints"


def _demo_cache_for_another_org(w: World) -> Path:
    return write_tiny_llama(w.tmp / "demo" / "demo-tiny-llama")


# (case, how to make the path, which org asks)
REFUSED: list[tuple[str, Callable[[World], Path | str], str]] = [
    ("outside-every-root", _outside, "default"),
    ("dotdot-escaping-the-drop-folder", _dotdot, "default"),
    ("symlink-inside-a-root-pointing-outside", _symlink_in_root, "default"),
    ("added-root-now-a-symlink", _symlinked_added_root, "default"),
    ("drop-folder-is-a-symlink", _symlinked_drop_folder, "acme"),
    ("missing-path-outside", _missing, "default"),
    ("another-orgs-drop-folder", _other_orgs_drop, "default"),
    ("another-orgs-added-root", _other_orgs_added_root, "default"),
    ("store-under-a-broad-root", _store_under_an_added_root, "acme"),
    ("demo-cache-is-only-the-default-orgs", _demo_cache_for_another_org, "acme"),
]


@pytest.mark.parametrize(("make", "asker"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_registration_outside_the_orgs_roots_is_refused_and_writes_nothing(
        world: World, make: Callable[[World], Path | str], asker: str) -> None:
    path = make(world)
    org = world.org if asker == "default" else world.acme
    before, files = world.registry.counts(), _files(world.store.root)
    with pytest.raises(RequestInvalid) as exc:
        world.register(path, org=org)
    [problem] = exc.value.problems
    assert (problem.code, problem.field) == (OUTSIDE_ROOTS, "path")
    assert f"endpoints checkpoint roots add PATH --org {org.name}" in problem.hint
    assert str(world.tmp / "outside") not in problem.message + problem.hint  # nothing about the path
    assert world.registry.counts() == before and _files(world.store.root) == files
    assert world.registry.list_checkpoints(org.id) == []


def test_every_refusal_reads_the_same_whatever_the_path_is(world: World) -> None:
    """Existing, missing, a symlink, `..`, another org's: one message, so none tells anything."""
    answers = {case: world.refusal(make(world)) for case, make, asker in REFUSED
               if asker == "default" and case != "added-root-now-a-symlink"}
    assert len(answers) == 6
    assert len(set(answers.values())) == 1, answers
    problem = next(iter(answers.values()))
    assert str(world.drop(world.org)) in problem.message  # it names the org's own roots…
    assert "acme" not in problem.message + problem.hint  # …and no other org's


def test_the_refusal_comes_before_anything_looks_at_the_path(world: World) -> None:
    """A directory outside the roots that cannot even be listed gets the same answer."""
    locked = world.tmp / "outside" / "locked"
    locked.mkdir(parents=True)
    locked.chmod(0)
    try:
        assert world.refusal(locked / "inner") == world.refusal(world.tmp / "nowhere")
    finally:
        locked.chmod(0o755)


def test_the_drop_folder_the_demo_cache_and_an_added_root_register(world: World) -> None:
    world.register(write_tiny_llama(world.drop(world.org) / "dropped"), "dropped")
    world.register(write_tiny_llama(world.tmp / "demo" / "demo-tiny-llama"), "demo")
    jobs = world.tmp / "jobs"
    assert world.refusal(write_tiny_llama(jobs / "j1")).code == OUTSIDE_ROOTS  # until an operator adds it
    real, created = add_root(world.registry, world.sources, world.org, str(jobs))
    assert created and real == jobs.resolve()
    world.register(jobs / "j1", "added")
    world.register(write_tiny_llama(world.drop(world.acme) / "mine"), "acme-own", org=world.acme)
    assert sorted(c.name for c in world.registry.list_checkpoints(world.org.id)) == ["added", "demo", "dropped"]
    assert [c.name for c in world.registry.list_checkpoints(world.acme.id)] == ["acme-own"]


def test_links_and_dotdot_that_stay_inside_a_root_are_fine(world: World) -> None:
    drop = world.drop(world.org)
    real = write_tiny_llama(drop / "runs" / "final")
    (drop / "latest").symlink_to(real, target_is_directory=True)
    world.register(drop / "latest", "via-link")
    world.register(f"{drop}/runs/../runs/final", "via-dotdot")
    row = world.registry.find_checkpoint(world.org.id, "via-link")
    assert row is not None and (world.store.path_of(row.location) / "config.json").is_file()


def test_a_file_linked_out_of_a_checkpoint_inside_a_root_is_still_refused(world: World) -> None:
    ckpt = write_tiny_llama(world.drop(world.org) / "leaky")
    secret = world.tmp / "outside" / "elsewhere.safetensors"
    secret.parent.mkdir(parents=True)
    (ckpt / "model.safetensors").rename(secret)
    (ckpt / "model.safetensors").symlink_to(secret)
    problem = world.refusal(ckpt)
    assert problem.code == "symlink_outside" and str(secret) not in problem.message


def test_roots_are_listed_added_once_and_removed(world: World) -> None:
    jobs = world.tmp / "jobs"
    jobs.mkdir()
    link = world.tmp / "jobs-link"
    link.symlink_to(jobs, target_is_directory=True)
    assert add_root(world.registry, world.sources, world.org, str(link)) == (jobs.resolve(), True)
    assert add_root(world.registry, world.sources, world.org, str(jobs)) == (jobs.resolve(), False)
    kinds = [(r.kind, r.path, r.usable) for r in roots_of(world.registry, world.sources, world.org)]
    assert kinds == [("drop folder", world.drop(world.org), True),
                     ("demo cache", world.tmp / "demo", False),  # not built yet
                     ("added", jobs.resolve(), True)]
    assert [r.kind for r in roots_of(world.registry, world.sources, world.acme)] == ["drop folder"]
    assert remove_root(world.registry, world.org, str(link)) == 1  # by a path resolving to it
    with pytest.raises(RequestInvalid) as gone:
        remove_root(world.registry, world.org, str(jobs))
    assert gone.value.codes == ["root_not_found"]


@pytest.mark.parametrize(("path", "code"), [
    ("{tmp}/no-such-dir", "root_not_a_directory"),
    ("{tmp}/data", "root_not_allowed"),
    ("{tmp}/data/imports/acme", "root_not_allowed"),  # another org's drop folder
    ("{tmp}/" + "x" * 256, "path_too_long"),
])
def test_a_root_must_be_a_directory_outside_the_platforms_data(world: World, path: str, code: str) -> None:
    before = world.registry.counts()
    with pytest.raises(RequestInvalid) as exc:
        add_root(world.registry, world.sources, world.org, path.format(tmp=world.tmp))
    assert exc.value.codes == [code]
    assert world.registry.counts() == before


@pytest.mark.parametrize(("path", "name", "field", "code"), [
    ("{drop}/" + "/".join(["d" * 200] * 21), "ok", "path", "path_too_long"),
    ("{drop}/" + "c" * 256, "ok", "path", "path_too_long"),
    ("{drop}/" + "é" * 128, "ok", "path", "path_too_long"),  # 128 characters, 256 bytes
    ("{drop}/a\x00b", "ok", "path", "invalid_path"),
    ("{drop}/ckpt", "n" * 10_000, "name", "name_too_long"),
])
def test_over_long_paths_and_names_are_named_not_raised(
        world: World, path: str, name: str, field: str, code: str) -> None:
    write_tiny_llama(world.drop(world.org) / "ckpt")
    before = world.registry.counts()
    with pytest.raises(RequestInvalid) as exc:
        world.register(path.format(drop=world.drop(world.org)), name)
    assert (code, field) in [(p.code, p.field) for p in exc.value.problems]
    assert all(len(p.message) + len(p.hint) < 1_000 for p in exc.value.problems)
    assert world.registry.counts() == before
    assert os.path.isdir(world.drop(world.org) / "ckpt")
