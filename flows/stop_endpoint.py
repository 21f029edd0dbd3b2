"""stop-endpoint (and remove): record the stop intent, let the reconciler stop every serve run.

The endpoint is `stopped` once every serve run has ended (its own report, or Prefect
saying so while its serve run has gone quiet and its engine no longer answers); only
then are the checkpoint leases released and, if asked, the record removed.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from pydantic import Field

from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.core.status import EndpointStatus
from tasks.context import load_context
from tasks.orchestration import reconcile_now

POLL_S = 0.25


@flow(name="stop-endpoint")
def stop_endpoint(
    endpoint: str = Field(description="Endpoint name or id"),
    org: str = Field(default="default", description="Organization name"),
    remove: bool = Field(default=False, description="Also delete the record, freeing the name"),
    timeout_s: float = Field(default=60.0, description="How long to wait for the run to end"),
) -> str:
    """Stop an endpoint (and optionally remove it). Returns the final status, or `removed`."""
    logger = get_run_logger()
    registry = load_context().registry
    org_row = registry.get_org_by_name(org)
    row = registry.find_endpoint(org_row.id, endpoint) if org_row else None
    if org_row is None or row is None:
        raise RequestInvalid.single("endpoint_not_found", "endpoint",
                                    f"No endpoint {endpoint!r} in this organization.",
                                    "List endpoints with `endpoints list`.")
    registry.runs.request_stop(row.id, remove=remove)
    deadline = time.monotonic() + timeout_s
    while True:
        reconcile_now(registry, [row.id], log=logger.info)
        current = registry.get_endpoint(row.id)
        if current is None:
            return "removed"
        done = EndpointStatus(current.status).is_terminal and not registry.open_lease_count(row.id)
        if done and not remove:
            return current.status
        if time.monotonic() >= deadline:
            logger.warning("%s: not every serve run confirmed it ended within %.0f s; the reconciler "
                           "keeps at it", current.name, timeout_s)
            return current.status
        time.sleep(POLL_S)
