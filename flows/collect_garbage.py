"""collect-checkpoint-garbage: reclaim deleted checkpoints' bytes once no endpoint run can read them.

Scheduled every 10 minutes (deployments/prefect.yaml), runnable by hand
(`endpoints gc`, `prefect deployment run 'collect-checkpoint-garbage/reclaim-bytes'`)
and with `dry_run`. Each run publishes a table artifact: reclaimed (bytes freed),
held (by which endpoint runs) and skipped (why).
"""

from __future__ import annotations

from typing import Any

import httpx
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import Field

from inference_endpoints.adapters.health import probe_backends
from inference_endpoints.services.collector import DEFAULT_MAX_CANDIDATES, Report, Result, collect
from tasks.context import load_context
from tasks.gc_tasks import PrefectRunStates, default_lease_grace_s

ARTIFACT_KEY = "checkpoint-garbage-collection"


@flow(name="collect-checkpoint-garbage")
def collect_checkpoint_garbage(
    dry_run: bool = Field(default=False, description="Plan and report only; delete nothing"),
    lease_grace_s: float | None = Field(
        default=None,
        description="How long a lease may wait for its serve run (default: longest startup timeout)"),
    max_checkpoints: int = Field(
        default=DEFAULT_MAX_CANDIDATES,
        description="Deleted checkpoints looked at per run; the rest wait for the next run"),
) -> dict[str, Any]:
    """Plan and carry out one collection; returns the report (also published as an artifact)."""
    logger = get_run_logger()
    ctx = load_context()
    grace = lease_grace_s if lease_grace_s is not None else default_lease_grace_s(ctx.registry)
    report = collect(ctx.registry, ctx.store, PrefectRunStates(), probe_backends,
                     dry_run=dry_run, lease_grace_s=grace, max_candidates=max_checkpoints)
    if report.prefect_error:
        logger.warning("Prefect unreachable, nothing reclaimed: %s", report.prefect_error)
    for outcome in report.outcomes:
        row = outcome.row()
        logger.info("%s %s (%s): %s", row["result"], row["checkpoint"], row["id"], row["detail"])
    logger.info("collection done: %s, %s bytes freed, timings %s", report.counts(),
                report.bytes_freed, {k: round(v, 3) for k, v in report.timings_s.items()})
    _publish(report)
    return report.to_dict()


def _publish(report: Report) -> None:
    """The table artifact; a failure to publish must not hide the work already done."""
    rows = [o.row() for o in report.outcomes] or [
        {"checkpoint": "-", "id": "-", "org": "-", "result": "-", "bytes freed": "0",
         "detail": report.prefect_error or "no deleted checkpoint to collect"}]
    counts = report.counts()
    summary = (f"{'Dry run: ' if report.dry_run else ''}{counts[Result.RECLAIMED]} reclaimed "
               f"({report.bytes_freed:,} bytes freed), {counts[Result.WOULD_RECLAIM]} would be, "
               f"{counts[Result.HELD]} held, {counts[Result.SKIPPED]} skipped.")
    if report.deferred:
        summary += f" {report.deferred} more wait for the next collection."
    if report.prefect_error:
        summary += f" Prefect unreachable: {report.prefect_error}"
    try:
        create_table_artifact(table=rows, key=ARTIFACT_KEY, description=summary)
    except httpx.HTTPError as exc:
        get_run_logger().error("could not publish the artifact: %s", exc)
