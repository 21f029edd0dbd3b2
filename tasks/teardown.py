"""Ending an endpoint's serve run, shared by stop, remove and every failure path.

Leases are released only when the run is confirmed ended in Prefect *and* the
backend no longer answers: "ended" in Prefect alone does not prove the engine
is gone.
"""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from inference_endpoints.health import answers
from inference_endpoints.models import Endpoint
from inference_endpoints.registry import Registry
from inference_endpoints.status import EndpointStatus, ReasonCode
from tasks.runs import cancel_run, is_final, run_state

POLL_S = 0.25


def wait_ended(endpoint: Endpoint, timeout_s: float) -> bool:
    """Until the serve run is final and nothing answers at the backend address."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run_over = endpoint.serve_run_id is None or is_final(run_state(endpoint.serve_run_id))
        if run_over and not answers(endpoint.backend_url, timeout_s=0.5):
            return True
        time.sleep(POLL_S)
    return False


def _stop_leftovers_if_run_over(registry: Registry, endpoint: Endpoint) -> bool:
    """A run that is over but whose engine still answers (its process or container was
    orphaned, e.g. the serve flow was SIGKILLed): stop what its labels find on this host."""
    if endpoint.serve_run_id is None or not is_final(run_state(endpoint.serve_run_id)):
        return False
    from tasks.engines import stop_orphans

    return stop_orphans(registry, endpoint) > 0


@task(cache_policy=NO_CACHE)
def end_serve_run(
    registry: Registry,
    endpoint_id: str,
    *,
    final: EndpointStatus,
    reason: ReasonCode,
    message: str,
    timeout_s: float = 60.0,
) -> bool:
    """Cancel the run, wait for it to be gone, release the leases, then set `final`."""
    logger = get_run_logger()
    endpoint = registry.get_endpoint(endpoint_id)
    if endpoint is None:
        return True
    if endpoint.serve_run_id:
        cancel_run(endpoint.serve_run_id, message)
    if not wait_ended(endpoint, timeout_s) and _stop_leftovers_if_run_over(registry, endpoint):
        logger.warning("serve run %s ended but its engine still answered: stopped it",
                       endpoint.serve_run_id)
    if not wait_ended(endpoint, 10.0):
        logger.error("serve run %s did not end within %.0f s; keeping its leases",
                     endpoint.serve_run_id, timeout_s)
        registry.transition(
            endpoint_id, EndpointStatus.FAILED, reason=ReasonCode.WORKER_LOST,
            message=f"{message}; the serve run did not confirm it ended within {timeout_s:.0f} s",
        )
        return False
    registry.release_leases(endpoint_id)
    registry.transition(endpoint_id, final, reason=reason, message=message)
    return True
