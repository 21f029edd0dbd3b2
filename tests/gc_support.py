"""Test doubles and helpers for the checkpoint lifecycle and garbage-collection tests.

`FakePrefect` and `FakeBackends` stand in for the collector's two witnesses (Prefect's
run states and the engines' HTTP answers). The planner is pure and the collector
takes its witnesses as arguments, so the tests drive them directly: that is what
makes thousands of interleavings deterministic and fast.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from inference_endpoints.adapters.runtime import model_root_resolver
from inference_endpoints.core.gc import RunFact, RunState
from inference_endpoints.core.validation import CreateRequest
from inference_endpoints.persistence.models import Checkpoint, Endpoint, new_id
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import LocalCheckpointStore, _make_read_only
from inference_endpoints.services.collector import RunStatesUnavailable
from inference_endpoints.services.import_roots import SourcePolicy
from inference_endpoints.services.operations import plan_create, register_checkpoint
from tests.archs import write_lora, write_tiny_llama
from tests.sources import allow, policy_for

ENDED = {"Completed", "Failed", "Crashed", "Cancelled"}


class FakePrefect:
    """Run id -> Prefect state name. `down` makes every read fail as an unreachable API would."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.down = False
        self.reads = 0
        self._lock = threading.Lock()

    def set(self, run_id: str, state: str) -> None:
        with self._lock:
            self.states[run_id] = state

    def __call__(self, run_ids: Sequence[str]) -> dict[str, RunFact]:
        self.reads += 1
        if self.down:
            raise RunStatesUnavailable("ConnectError: [Errno 111] Connection refused")
        with self._lock:
            found = dict(self.states)
        out = {}
        for rid in run_ids:
            name = found.get(rid)
            if name is None:
                out[rid] = RunFact(RunState.MISSING, "not in Prefect")
            else:
                out[rid] = RunFact(RunState.ENDED if name in ENDED else RunState.ACTIVE, name)
        return out


class FakeBackends:
    """The set of backend URLs that still answer."""

    def __init__(self) -> None:
        self.answering: set[str] = set()
        self._lock = threading.Lock()

    def add(self, url: str) -> None:
        with self._lock:
            self.answering.add(url)

    def discard(self, url: str) -> None:
        with self._lock:
            self.answering.discard(url)

    def __call__(self, urls: Sequence[str]) -> dict[str, bool]:
        with self._lock:
            live = set(self.answering)
        return {url: url in live for url in urls}


class CountingStore(LocalCheckpointStore):
    """A real local store that also remembers what every `reclaim` call freed."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.freed: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def reclaim(self, location: str) -> int:
        freed = super().reclaim(location)
        with self._lock:
            self.freed.setdefault(location, []).append(freed)
        return freed


@dataclass
class GcWorld:
    registry: Registry
    store: CountingStore
    org_id: str
    tmp: Path
    sources: SourcePolicy
    prefect: FakePrefect = field(default_factory=FakePrefect)
    backends: FakeBackends = field(default_factory=FakeBackends)

    @classmethod
    def make(cls, registry: Registry, tmp: Path) -> GcWorld:
        org = registry.get_org_by_name("default")
        assert org is not None
        store = CountingStore(tmp / "store")
        # `tmp/src` is an import root of the organization, added the CLI's way.
        sources = allow(registry, policy_for(tmp, store.root), org.id, tmp / "src")
        return cls(registry, store, org.id, tmp, sources)

    def register_full(self, name: str) -> Checkpoint:
        src = write_tiny_llama(self.tmp / "src" / name)
        return register_checkpoint(self.registry, self.store, self.org_id, src, name, sources=self.sources)

    def register_lora(self, name: str, base: str) -> Checkpoint:
        src = write_lora(self.tmp / "src" / name, base=base)
        return register_checkpoint(self.registry, self.store, self.org_id, src, name, sources=self.sources)

    def clone(self, template: Checkpoint, name: str, base_id: str | None = None) -> Checkpoint:
        """A new checkpoint with `template`'s facts and a tiny read-only directory (fast)."""
        return self.registry.add_checkpoint(self.clone_row(template, name, base_id))

    def clone_row(self, template: Checkpoint, name: str, base_id: str | None = None) -> Checkpoint:
        """`clone` without the insert, for callers that insert several rows in one transaction."""
        cid = new_id("ckpt")
        location = f"{self.org_id}/{cid}"
        path = self.store.path_of(location)
        path.mkdir(parents=True)
        (path / "weights.bin").write_bytes(os.urandom(512))
        (path / "config.json").write_text("{}")
        _make_read_only(path)
        row = Checkpoint(id=cid, org_id=self.org_id, name=name, kind=template.kind,
                         base_model=template.base_model, base_checkpoint_id=base_id,
                         location=location, size_bytes=514, digest="sha256:test",
                         architecture=template.architecture, facts_json=template.facts_json)
        return row

    def create(self, name: str, checkpoint: str) -> Endpoint:
        """Validate, render and record an endpoint with its lease(s), as create-endpoint does."""
        plan = plan_create(self.registry, self.org_id,
                           CreateRequest(name, checkpoint, "cpu-dev", 512, "float32"),
                           model_root_resolver(self.tmp / "run"))
        return self.registry.record_endpoint(self.org_id, plan.request, plan.spec,
                                             endpoint_id=plan.endpoint_id, idempotency_key=None)

    def start(self, endpoint_id: str, run_id: str, url: str | None) -> None:
        """The serve run is submitted and its engine listens at `url` (as the serve flow records)."""
        self.prefect.set(run_id, "Running")
        self.registry.update_endpoint(endpoint_id, serve_run_id=run_id, backend_url=url)
        self.registry.set_lease_run(endpoint_id, run_id)
        if url:
            self.backends.add(url)

    def stop(self, endpoint_id: str, run_id: str | None, url: str | None) -> None:
        """What a confirmed stop does: the engine is gone, the run ended, the leases released."""
        if url:
            self.backends.discard(url)
        if run_id:
            self.prefect.set(run_id, "Cancelled")
        self.registry.release_leases(endpoint_id)

    def bytes_exist(self, ckpt: Checkpoint) -> bool:
        return self.store.path_of(ckpt.location).is_dir()

    def status(self, checkpoint_id: str) -> str:
        row = self.registry.find_checkpoint(self.org_id, checkpoint_id)
        assert row is not None
        return row.status
