"""The collector's Prefect witness: the state of every run that ever held a lease, read in batches."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, StateType

from inference_endpoints.core.gc import RunFact, RunState
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.services.collector import RunStatesUnavailable, chunks

FINAL = frozenset({StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED})
BATCH = 200  # the API's default page limit
DEFAULT_LEASE_GRACE_S = 1800.0


def run_fact(run: FlowRun) -> RunFact:
    if run.state is None:
        return RunFact(RunState.ACTIVE, "without a state")
    state = RunState.ENDED if run.state.type in FINAL else RunState.ACTIVE
    return RunFact(state, run.state.name or run.state.type.value)


class PrefectRunStates:
    """`RunStateSource` backed by the Prefect API: one `read_flow_runs` per 200 run ids."""

    def __call__(self, run_ids: Sequence[str]) -> dict[str, RunFact]:
        valid = [rid for rid in run_ids if _is_uuid(rid)]
        found: dict[str, RunFact] = {}
        try:
            with get_client(sync_client=True) as client:
                client.hello()  # fails fast when the API is down, even with no run to read
                for batch in chunks(valid, BATCH):
                    runs = client.read_flow_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(r) for r in batch])),
                        limit=len(batch),
                    )
                    found.update({str(run.id): run_fact(run) for run in runs})
        except (httpx.HTTPError, OSError) as exc:
            raise RunStatesUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return {rid: found.get(rid, RunFact(RunState.MISSING, "not in Prefect")) for rid in run_ids}


def _is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True


def default_lease_grace_s(registry: Registry) -> float:
    """How long a lease may wait for its serve run: the longest startup timeout of any instance.

    A create run that has not submitted its serve run within its own whole timeout is dead.
    """
    timeouts = [spec.startup_timeout_s for spec in registry.instances().values()]
    return float(max(timeouts)) if timeouts else DEFAULT_LEASE_GRACE_S
