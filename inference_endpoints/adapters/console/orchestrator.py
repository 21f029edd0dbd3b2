"""How the console hands work to Prefect: submit the create, stop and reconcile flows, never wait.

The API records an endpoint itself (so it can answer 202 with the record at once)
and submits `create-endpoint/create` with the same idempotency key; the flow finds
the record by that key and carries on. Tests inject a fake with the same shape,
because unit tests have no Prefect server.
"""

from __future__ import annotations

from typing import Any, Protocol

from inference_endpoints import deployment_names
from inference_endpoints.core.catalog import InstanceSpec
from inference_endpoints.services.replacements import ModelRoot

CREATE_DEPLOYMENT = deployment_names.CREATE
STOP_DEPLOYMENT = deployment_names.STOP
RECONCILE_DEPLOYMENT = deployment_names.RECONCILE


class SubmitError(RuntimeError):
    """Prefect could not take the run (server down, deployment missing)."""


class Orchestrator(Protocol):
    def model_root_for(self, instance: InstanceSpec) -> ModelRoot:
        """`(runtime, endpoint_id, generation) -> model root`, exactly as the flows compute it."""
        ...

    def submit_create(self, parameters: dict[str, Any], idempotency_key: str) -> str:
        """Schedule the create flow; returns its flow run id."""
        ...

    def submit_stop(self, endpoint_id: str, org_name: str, remove: bool) -> str:
        """Schedule the stop flow; returns its flow run id."""
        ...

    def submit_reconcile(self) -> str:
        """Run the reconcile pass now (it acts on recorded intents, e.g. a start); its run id."""
        ...


class PrefectOrchestrator:
    """The real one: `run_deployment(..., timeout=0, as_subflow=False)` returns at once."""

    def model_root_for(self, instance: InstanceSpec) -> ModelRoot:
        from tasks.context import engine_model_root

        try:
            return engine_model_root(instance)
        except Exception as exc:  # Prefect raises several types for "unreachable" / "no block"
            raise SubmitError(f"could not read the engine host settings from Prefect: {exc}") from exc

    def submit_create(self, parameters: dict[str, Any], idempotency_key: str) -> str:
        return self._run(CREATE_DEPLOYMENT, parameters, idempotency_key,
                         f"create/{parameters.get('org')}/{parameters.get('name')}")

    def submit_stop(self, endpoint_id: str, org_name: str, remove: bool) -> str:
        params = {"endpoint": endpoint_id, "org": org_name, "remove": remove}
        return self._run(STOP_DEPLOYMENT, params, None,
                         f"{'remove' if remove else 'stop'}/{org_name}/{endpoint_id}")

    def submit_reconcile(self) -> str:
        return self._run(RECONCILE_DEPLOYMENT, {}, None, "reconcile/console")

    @staticmethod
    def _run(deployment: str, parameters: dict[str, Any], idempotency_key: str | None,
             run_name: str) -> str:
        from prefect.deployments import run_deployment

        try:
            run = run_deployment(deployment, parameters=parameters, timeout=0, as_subflow=False,
                                 idempotency_key=idempotency_key, flow_run_name=run_name,
                                 tags=["inference-endpoints", "console"])
        except Exception as exc:  # httpx errors, ObjectNotFound, RuntimeError("Failed to reach API")
            raise SubmitError(f"Prefect did not accept the {deployment} run: {exc}") from exc
        return str(run.id)  # type: ignore[union-attr]
