"""Ending an endpoint's serve run, shared by stop, remove and every failure path.

Leases are released only when the run is confirmed ended in Prefect *and* the
backend no longer answers: "ended" in Prefect alone does not prove the engine
is gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from inference_endpoints.health import answers
from inference_endpoints.models import Endpoint
from inference_endpoints.registry import Registry
from inference_endpoints.status import EndpointStatus, ReasonCode
from tasks.kubernetes import forget_serve_job
from tasks.runs import cancel_run, is_final, run_state

POLL_S = 0.25
ORPHAN_GRACE_S = 5.0


def wait_ended(endpoint: Endpoint, timeout_s: float,
               on_orphaned: Callable[[], object] | None = None) -> bool:
    """Until the serve run is final and nothing answers at the backend address.

    A run that is over while its engine still answers `ORPHAN_GRACE_S` later was killed
    without stopping it (its process or container was orphaned): `on_orphaned` is called
    once, at that moment rather than after the whole timeout.
    """
    deadline = time.monotonic() + timeout_s
    over_since: float | None = None
    while time.monotonic() < deadline:
        run_over = endpoint.serve_run_id is None or is_final(run_state(endpoint.serve_run_id))
        if run_over:
            if not answers(endpoint.backend_url, timeout_s=0.5):
                return True
            now = time.monotonic()
            over_since = over_since or now
            if on_orphaned is not None and now - over_since >= ORPHAN_GRACE_S:
                on_orphaned()
                on_orphaned = None
        time.sleep(POLL_S)
    return False


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

    def stop_orphans_now() -> None:
        from tasks.engines import stop_orphans

        if stop_orphans(registry, endpoint):
            logger.warning("serve run %s ended but its engine still answered: stopped it",
                           endpoint.serve_run_id)

    if not wait_ended(endpoint, timeout_s, on_orphaned=stop_orphans_now):
        logger.error("serve run %s did not end within %.0f s; keeping its leases",
                     endpoint.serve_run_id, timeout_s)
        registry.transition(
            endpoint_id, EndpointStatus.FAILED, reason=ReasonCode.WORKER_LOST,
            message=f"{message}; the serve run did not confirm it ended within {timeout_s:.0f} s",
        )
        return False
    registry.release_leases(endpoint_id)
    registry.transition(endpoint_id, final, reason=reason, message=message)
    try:
        forget_serve_job(registry, endpoint)
    except Exception as exc:  # the endpoint has ended either way; say what is left
        logger.warning("the engine key Secret of %s was not deleted (%s); delete it with kubectl",
                       endpoint.name, exc)
    return True
