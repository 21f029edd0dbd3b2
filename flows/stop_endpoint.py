"""stop-endpoint (and remove): stopping → cancel the serve run → confirmed gone → stopped.

"Gone" means Prefect reports the run ended *and* the backend no longer answers;
only then is the checkpoint lease released.
"""

from __future__ import annotations

from prefect import flow
from pydantic import Field

from inference_endpoints.errors import RequestInvalid
from inference_endpoints.status import EndpointStatus, ReasonCode
from tasks.context import load_context
from tasks.teardown import end_serve_run


@flow(name="stop-endpoint")
def stop_endpoint(
    endpoint: str = Field(description="Endpoint name or id"),
    org: str = Field(default="default", description="Organization name"),
    remove: bool = Field(default=False, description="Also delete the record, freeing the name"),
    timeout_s: float = Field(default=60.0, description="How long to wait for the run to end"),
) -> str:
    """Stop an endpoint (and optionally remove it). Returns the final status."""
    registry = load_context().registry
    org_row = registry.get_org_by_name(org)
    row = registry.find_endpoint(org_row.id, endpoint) if org_row else None
    if org_row is None or row is None:
        raise RequestInvalid.single("endpoint_not_found", "endpoint",
                                    f"No endpoint {endpoint!r} in this organization.",
                                    "List endpoints with `endpoints list`.")
    status = EndpointStatus(row.status)
    if not status.is_terminal:
        registry.record_activity(row.id, "stop_requested", "stop requested")
        registry.transition(row.id, EndpointStatus.STOPPING, message="stop requested")
        end_serve_run(registry, row.id, final=EndpointStatus.STOPPED,
                      reason=ReasonCode.STOPPED_BY_USER, message="stopped by user",
                      timeout_s=timeout_s)
    elif registry.open_lease_count(row.id):
        # A failed endpoint whose run was never confirmed ended: confirm it now.
        end_serve_run(registry, row.id, final=EndpointStatus.FAILED,
                      reason=ReasonCode(row.reason_code or ReasonCode.RUN_ENDED),
                      message=row.reason_message or "ended", timeout_s=timeout_s)
    final = registry.get_endpoint(row.id)
    assert final is not None
    if remove and EndpointStatus(final.status).is_terminal and not registry.open_lease_count(row.id):
        registry.remove_endpoint(row.id)
        return "removed"
    return final.status
