"""The console's use cases, shared by the REST API and the pages; every one scoped to one org.

Each call takes the caller's organization and looks rows up only inside it, so
another organization's endpoint or checkpoint is indistinguishable from a missing
one (`NotFound`). Long work (creating, stopping) is handed to Prefect and never
waited on here.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx

from inference_endpoints.adapters.console import queries
from inference_endpoints.adapters.console.config import ConsoleSettings
from inference_endpoints.adapters.console.orchestrator import Orchestrator, SubmitError
from inference_endpoints.adapters.console.traffic import Traffic
from inference_endpoints.adapters.console.views import EndpointView, build_view
from inference_endpoints.core.bounds import path_problems
from inference_endpoints.core.errors import CheckpointError, Problem, RequestInvalid, shown
from inference_endpoints.core.fit import FitEstimate
from inference_endpoints.core.replica_counts import replica_problems, scaling_problems
from inference_endpoints.core.serving_config import ServingSpec
from inference_endpoints.core.status import CheckpointStatus, EndpointStatus, ReasonCode
from inference_endpoints.core.validation import CreateRequest
from inference_endpoints.persistence.checkpoint_lifecycle import (
    DeleteAnswer,
    LeaseHolder,
    delete_checkpoint,
    open_holders,
)
from inference_endpoints.persistence.models import (
    ActivityEvent,
    ApiKey,
    Checkpoint,
    Endpoint,
    Organization,
    utcnow,
)
from inference_endpoints.persistence.registry import NewKey, Registry
from inference_endpoints.persistence.store import CheckpointStore
from inference_endpoints.services import uploads
from inference_endpoints.services.import_roots import Root, SourcePolicy, roots_of
from inference_endpoints.services.operations import Plan, plan_create, register_checkpoint
from inference_endpoints.settings import Settings

MAX_IDLE_STOP_MINUTES = 7 * 24 * 60


class NotFound(Exception):
    """Nothing by that name in the caller's organization (or it belongs to another one)."""

    def __init__(self, code: str, field_name: str, message: str, hint: str = ""):
        super().__init__(message)
        self.problem = Problem(code, field_name, message, hint)


class Unavailable(Exception):
    """A dependency (Prefect) did not take the work; nothing is left half-done."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.problem = Problem("orchestrator_unavailable", "", message, hint)


class TrafficReader(Protocol):
    def snapshot(self) -> dict[tuple[str, str], Traffic] | None: ...


@dataclass
class ConsoleDeps:
    """Everything the console talks to; tests swap the orchestrator and traffic for fakes."""

    settings: Settings
    console: ConsoleSettings
    registry: Registry
    store: CheckpointStore
    orchestrator: Orchestrator
    traffic: TrafficReader
    clock: Callable[[], datetime] = field(default=utcnow)


@dataclass(frozen=True)
class CreateInput:
    request: CreateRequest
    idle_stop_minutes: Any = None
    min_replicas: Any = 1
    max_replicas: Any = None  # None: min_replicas
    scale_target: Any = None
    scale_down_after_s: Any = None

    @property
    def replicas(self) -> tuple[Any, Any]:
        return self.min_replicas, self.max_replicas if self.max_replicas is not None else self.min_replicas

    def scaling_problems(self) -> list[Problem]:
        return replica_problems(*self.replicas) + scaling_problems(self.scale_target, self.scale_down_after_s)


@dataclass(frozen=True)
class Validation:
    """The outcome of checking a create request without writing anything."""

    problems: list[Problem]
    fit: FitEstimate | None
    fit_rows: list[tuple[str, str]]
    plan: Plan | None

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class StopResult:
    view: EndpointView | None  # None once removed
    run_id: str | None
    outcome: str  # "stopping", "already stopped", "removed", "removing"


class ConsoleService:
    def __init__(self, deps: ConsoleDeps):
        self.deps = deps
        self.registry = deps.registry

    # ---- endpoints: reading ---------------------------------------------------------------

    @property
    def idle_threshold(self) -> timedelta:
        return timedelta(minutes=self.deps.console.idle_threshold_minutes)

    def views(self, org: Organization, endpoints: list[Endpoint]) -> list[EndpointView]:
        ids = [ep.id for ep in endpoints]
        ckpts = queries.checkpoints_by_id(self.registry, org.id, [ep.checkpoint_id for ep in endpoints])
        spans = queries.engine_spans(self.registry, org.id, ids)
        instances = self.registry.instances()
        traffic = self.deps.traffic.snapshot() if endpoints else {}
        now = self.deps.clock()
        return [build_view(ep, org_name=org.name, checkpoint=ckpts.get(ep.checkpoint_id),
                           instance=instances.get(ep.instance), spans=spans.get(ep.id, []),
                           traffic=traffic, now=now, idle_threshold=self.idle_threshold,
                           settings=self.deps.settings)
                for ep in endpoints]

    def org_spend(self, org: Organization) -> float:
        """Every engine the organization ever ran, removed endpoints' included: never decreases."""
        from inference_endpoints.core.cost import spend

        every = [span for spans in queries.engine_spans(self.registry, org.id).values() for span in spans]
        return spend(every, self.deps.clock())

    def list_endpoints(self, org: Organization, statuses: list[str] | None = None, *,
                       limit: int = 50, offset: int = 0) -> tuple[list[EndpointView], int]:
        bad = [s for s in statuses or [] if s not in {x.value for x in EndpointStatus}]
        if bad:
            raise RequestInvalid.single(
                "invalid_status", "status", f"Unknown status {bad[0]!r}.",
                "Use one of: " + ", ".join(s.value for s in EndpointStatus) + ".")
        rows, total = queries.page_endpoints(self.registry, org.id, statuses or [],
                                             limit=limit, offset=offset)
        return self.views(org, rows), total

    def all_views(self, org: Organization) -> list[EndpointView]:
        return self.views(org, self.registry.list_endpoints(org.id))

    def endpoint(self, org: Organization, ref: str) -> Endpoint:
        row = self.registry.find_endpoint(org.id, ref)
        if row is None or row.org_id != org.id:
            raise NotFound("endpoint_not_found", "endpoint", f"No endpoint {ref!r} in this organization.",
                           "List endpoints with GET /api/v1/endpoints or `endpoints list`.")
        return row

    def view(self, org: Organization, ref: str) -> EndpointView:
        return self.views(org, [self.endpoint(org, ref)])[0]

    def serving_config(self, ep: Endpoint) -> dict[str, Any]:
        spec = ServingSpec.from_json(ep.serving_config_json)
        return {**spec.public_dict(), "command_line": spec.command_line()}

    def effective_values(self, ep: Endpoint, timeout_s: float = 1.5) -> dict[str, Any]:
        """What the running engine reports about itself (`GET /v1/models` on the backend).

        Asked server-side with the backend's own key, which never leaves the control plane.
        """
        if ep.status not in ("healthy", "unhealthy"):
            return {"available": False, "reason": f"Shown once the engine is serving (now {ep.status})."}
        if not ep.backend_url:
            return {"available": False, "reason": "No backend address is recorded for this endpoint."}
        headers = {"Authorization": f"Bearer {ep.backend_api_key}"} if ep.backend_api_key else {}
        try:
            response = httpx.get(f"{ep.backend_url}/v1/models", headers=headers, timeout=timeout_s)
            response.raise_for_status()
            data = response.json().get("data", [])
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            return {"available": False, "reason": f"the engine did not answer: {exc}"}
        models = [{"id": m.get("id"), "max_model_len": m.get("max_model_len"),
                   "root": m.get("root"), "parent": m.get("parent")}
                  for m in data if isinstance(m, dict)]
        return {"available": True, "models": models}

    def activity(self, org: Organization, ref: str | None = None, limit: int = 100) -> list[ActivityEvent]:
        endpoint_id = self.endpoint(org, ref).id if ref else None
        return queries.org_activity(self.registry, org.id, endpoint_id=endpoint_id, limit=limit)

    # ---- endpoints: creating ------------------------------------------------------------------

    def validate(self, org: Organization, data: CreateInput) -> Validation:
        """Everything `create` checks, with the fit estimate; writes nothing, calls nothing."""
        return self._plan(org, data, lambda runtime, endpoint_id: f"/models-preview/{endpoint_id}")

    def _plan(self, org: Organization, data: CreateInput,
              model_root_for: Callable[[str, str], str]) -> Validation:
        problems = idle_stop_problems(data.idle_stop_minutes) + data.scaling_problems()
        try:
            plan = plan_create(self.registry, org.id, data.request, model_root_for)
        except RequestInvalid as exc:
            fit = exc.details.get("fit") or {}
            return Validation([*exc.problems, *problems], None, list(fit.items()), None)
        rows = plan.request.fit.as_rows()
        if problems:
            return Validation(problems, plan.request.fit, rows, None)
        return Validation([], plan.request.fit, rows, plan)

    def create(self, org: Organization, data: CreateInput, idempotency_key: str | None = None
               ) -> EndpointView:
        """Validate, record (with its lease) and hand the rest to the create flow; returns at once."""
        if idempotency_key:
            existing = self.registry.find_by_idempotency_key(org.id, idempotency_key)
            if existing is not None:
                return self.views(org, [existing])[0]
        instances = self.registry.instances()

        def model_root(runtime: str, endpoint_id: str) -> str:
            instance = instances[str(data.request.instance)]
            return self.deps.orchestrator.model_root_for(instance)(runtime, endpoint_id)

        try:
            checked = self._plan(org, data, model_root)
        except SubmitError as exc:
            raise Unavailable(str(exc), "Is the stack up? (`endpoints up`)") from None
        if checked.plan is None:
            details = {"fit": dict(checked.fit_rows)} if checked.fit_rows else {}
            raise RequestInvalid(checked.problems, details)
        plan = checked.plan
        key = idempotency_key or f"console-{secrets.token_hex(12)}"
        ep = self.registry.record_endpoint(org.id, plan.request, plan.spec, endpoint_id=plan.endpoint_id,
                                           idempotency_key=key)
        minutes = parse_idle_minutes(data.idle_stop_minutes)
        if minutes is not None:
            self.registry.update_endpoint(ep.id, idle_stop_minutes=minutes)
        scaling: dict[str, Any] = {}  # empty: the flow's defaults (one replica)
        if data.replicas != (1, 1) or (data.scale_target, data.scale_down_after_s) != (None, None):
            self.registry.runs.scale(ep.id, *data.replicas, data.scale_target, data.scale_down_after_s)
            scaling = {"min_replicas": data.replicas[0], "max_replicas": data.replicas[1],
                       "scale_target": data.scale_target, "scale_down_after_s": data.scale_down_after_s}
        params = {"name": plan.request.name, "checkpoint": plan.request.checkpoint.id,
                  "instance": plan.request.instance.name, "max_context": plan.request.max_context,
                  "precision": plan.request.precision, "quantization": plan.request.quantization,
                  "org": org.name, "idempotency_key": key, **scaling}
        try:
            run_id = self.deps.orchestrator.submit_create(params, key)
        except SubmitError as exc:
            # Nothing runs for it: fail the record and free its checkpoint now.
            message = f"the create flow could not be submitted: {exc}"
            self.registry.runs.give_up(ep.id, ReasonCode.DEPLOY_FAILED, message, ep.live_run)
            if ep.live_run:  # never submitted: nothing will report its end
                self.registry.runs.ended(ep.live_run, ReasonCode.DEPLOY_FAILED, message)
            self.registry.release_leases(ep.id)
            self.registry.runs.settle(ep.id)  # failed now that it holds nothing
            raise Unavailable(str(exc), "Is the stack up? (`endpoints up`); then create it again "
                              "under another name or remove the failed one.") from None
        self.registry.update_endpoint(ep.id, create_run_id=run_id)
        return self.view(org, ep.id)

    def set_idle_stop(self, org: Organization, ref: str, minutes: Any) -> EndpointView:
        problems = idle_stop_problems(minutes)
        if problems:
            raise RequestInvalid(problems)
        ep = self.endpoint(org, ref)
        self.registry.update_endpoint(ep.id, idle_stop_minutes=parse_idle_minutes(minutes))
        return self.view(org, ep.id)

    # ---- endpoints: stopping and removing ---------------------------------------------------

    def stop(self, org: Organization, ref: str) -> StopResult:
        ep = self.endpoint(org, ref)
        if EndpointStatus(ep.status).is_terminal and not self.registry.open_lease_count(ep.id):
            return StopResult(self.view(org, ep.id), None, f"already {ep.status}")
        run_id = self._submit_stop(org, ep, remove=False)
        return StopResult(self.view(org, ep.id), run_id, "stopping")

    def scale(self, org: Organization, ref: str, min_replicas: Any, max_replicas: Any,
              target: Any = None, down_after_s: Any = None) -> EndpointView:
        """Record new replica bounds (each bad field named, nothing written) and kick the reconciler."""
        ep = self.endpoint(org, ref)
        high = max_replicas if max_replicas is not None else min_replicas
        problems = replica_problems(min_replicas, high) + scaling_problems(target, down_after_s)
        if problems:
            raise RequestInvalid(problems)
        if not self.registry.runs.scale(ep.id, min_replicas, high, target, down_after_s):
            raise RequestInvalid.single("endpoint_not_serving", "name",
                                        f"{ep.name} is {ep.status}: only a serving endpoint can be scaled.",
                                        "Start it first (`POST .../start`).")
        with contextlib.suppress(SubmitError):  # Prefect away: the scheduled pass applies it
            self.deps.orchestrator.submit_reconcile()
        return self.view(org, ep.id)

    def start(self, org: Organization, ref: str) -> StopResult:
        """A stopped endpoint serves again (same URL and configuration): the intent is recorded
        and a reconcile pass submitted; if Prefect is away the scheduled pass acts on it."""
        from inference_endpoints.services.operations import start_again

        ep = self.endpoint(org, ref)
        start_again(self.registry, org.id, ep.id)
        try:
            run_id: str | None = self.deps.orchestrator.submit_reconcile()
        except SubmitError:
            run_id = None
        return StopResult(self.view(org, ep.id), run_id, "starting")

    def remove(self, org: Organization, ref: str) -> StopResult:
        """Delete a stopped endpoint's record now; a running one is stopped first by the flow."""
        ep = self.endpoint(org, ref)
        if EndpointStatus(ep.status).is_terminal and not self.registry.open_lease_count(ep.id):
            self.registry.remove_endpoint(ep.id)
            return StopResult(None, None, "removed")
        run_id = self._submit_stop(org, ep, remove=True)
        return StopResult(self.view(org, ep.id), run_id, "removing")

    def _submit_stop(self, org: Organization, ep: Endpoint, *, remove: bool) -> str:
        try:
            run_id = self.deps.orchestrator.submit_stop(ep.id, org.name, remove)
        except SubmitError as exc:
            raise Unavailable(str(exc), "Is the stack up? (`endpoints up`)") from None
        # The intent is recorded at once (the status shows `stopping`); the flow carries it out.
        self.registry.runs.request_stop(ep.id, message=f"{'remove' if remove else 'stop'} requested "
                                                       f"(run {run_id})", remove=remove)
        return run_id

    # ---- checkpoints ------------------------------------------------------------------------

    def checkpoints(self, org: Organization, include_deleted: bool = False
                    ) -> list[tuple[Checkpoint, list[LeaseHolder]]]:
        rows = self.registry.list_checkpoints(org.id, include_deleted=include_deleted)
        holders = open_holders(self.registry, org_id=org.id)
        return [(row, _holding(row, holders.get(row.id, []))) for row in rows]

    def checkpoint(self, org: Organization, ref: str) -> tuple[Checkpoint, list[LeaseHolder]]:
        row = self.registry.find_checkpoint(org.id, ref)
        if row is None or row.org_id != org.id:
            raise NotFound("checkpoint_not_found", "checkpoint",
                           f"No checkpoint {ref!r} in this organization.",
                           "List checkpoints with GET /api/v1/checkpoints?all=true.")
        holders = open_holders(self.registry, [row.id]).get(row.id, [])
        return row, _holding(row, holders)

    @property
    def sources(self) -> SourcePolicy:
        return SourcePolicy.from_settings(self.deps.settings)

    def import_roots(self, org: Organization) -> list[Root]:
        """The org's import roots, shown (read-only) where it registers; only the CLI changes them."""
        return roots_of(self.registry, self.sources, org)

    def register(self, org: Organization, path: Any, name: Any, base: Any = None) -> Checkpoint:
        """Import a directory on the control plane, from inside one of the org's import roots."""
        problems = path_problems(path)
        if not problems and not Path(path).is_absolute():
            problems.append(Problem("invalid_path", "path", f"{shown(path)} is not an absolute path.",
                                    "Paths are resolved on the control-plane host; give an absolute one."))
        if not isinstance(name, str):
            problems.append(Problem("invalid_name", "name", "Give the checkpoint a name.", ""))
        if base is not None and not isinstance(base, str):
            problems.append(Problem("invalid_base", "base", "base must be a checkpoint name or id.", ""))
        if problems:
            raise RequestInvalid(problems)
        assert isinstance(path, str) and isinstance(name, str)
        try:
            return register_checkpoint(self.registry, self.deps.store, org.id, path, name, base or None,
                                       sources=self.sources)
        except CheckpointError as exc:
            raise RequestInvalid([exc.problem]) from None

    def upload_space(self, org: Organization, name: str, base: str | None) -> AbstractContextManager[Path]:
        """Check the name first (no bytes needed), then a temporary directory in the org's drop folder."""
        uploads.check_upload_request(self.registry, org, name, base)
        return uploads.upload_space(self.sources, org)

    def register_upload(self, org: Organization, space: Path, name: str, base: str | None) -> Checkpoint:
        return uploads.register_archive(self.registry, self.deps.store, self.sources, org, space, name,
                                        base or None, self.deps.console.max_upload_bytes)

    def delete_checkpoint(self, org: Organization, ref: str) -> DeleteAnswer:
        self.checkpoint(org, ref)  # NotFound for another org's
        return delete_checkpoint(self.registry, org.id, ref)

    # ---- keys and instances -------------------------------------------------------------------

    def keys(self, org: Organization) -> list[ApiKey]:
        return self.registry.list_keys(org.id)

    def create_key(self, org: Organization, name: Any) -> NewKey:
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise RequestInvalid.single("invalid_key_name", "name", "Give the key a name (1-100 characters).",
                                        "Say what it is for, e.g. `ci` or `notebook`.")
        return self.registry.create_key(org.id, name.strip())

    def revoke_key(self, org: Organization, ref: str) -> ApiKey:
        try:
            return self.registry.revoke_key(org.id, ref)
        except RequestInvalid as exc:
            p = exc.problems[0]
            raise NotFound(p.code, p.field, p.message, p.hint) from None


def parse_idle_minutes(value: Any) -> int | None:
    if value is None or value == "" or value == 0 or value == "0":
        return None
    if isinstance(value, bool):
        raise ValueError("not a number")
    return int(str(value).strip())


def idle_stop_problems(value: Any) -> list[Problem]:
    try:
        minutes = parse_idle_minutes(value)
    except (TypeError, ValueError):
        minutes = -1
    if minutes is None or 1 <= minutes <= MAX_IDLE_STOP_MINUTES:
        return []
    return [Problem("invalid_idle_stop", "idle_stop_minutes",
                    f"idle_stop_minutes must be a whole number of minutes from 1 to "
                    f"{MAX_IDLE_STOP_MINUTES}, got {value!r}.",
                    "Leave it empty (or 0) to never stop the endpoint for being idle.")]


def _holding(row: Checkpoint, holders: list[LeaseHolder]) -> list[LeaseHolder]:
    """Bytes being or already reclaimed are held by nobody (a crashed run's lease holds nothing)."""
    if row.status in (CheckpointStatus.RECLAIMING, CheckpointStatus.RECLAIMED):
        return []
    return holders

