"""The serve run's Prefect artifacts: stable URL, serving configuration, summary (best effort)."""

from __future__ import annotations

import logging

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from inference_endpoints.core.serving_config import ServingSpec
from inference_endpoints.persistence.models import Endpoint
from inference_endpoints.urls import endpoint_urls

log = logging.getLogger(__name__)


def publish_artifacts(endpoint: Endpoint, org: str, spec: ServingSpec, generation: int) -> None:
    """Shown in the Prefect UI; skipped (not fatal) when Prefect cannot take them."""
    url = endpoint_urls(endpoint.name, org).url
    key = f"endpoint-{org}-{endpoint.name}".lower().replace("_", "-")
    env = "\n".join(f"- `{k}={v}`" for k, v in sorted(spec.env.items()))
    mounts = "\n".join(f"- `{m.source}` → `{m.target}` (read-only)" for m in spec.mounts)
    try:
        create_link_artifact(key=f"{key}-url", link=url, link_text=url,
                             description=f"Stable URL of endpoint {endpoint.name}")
        create_markdown_artifact(
            key=f"{key}-config",
            markdown=(f"# Serving configuration of `{endpoint.name}`\n\n"
                      f"```\n{spec.command_line()}\n```\n\n## Environment\n{env}\n\n"
                      f"## Mounts\n{mounts}\n"),
            description="Rendered vLLM configuration",
        )
        create_table_artifact(
            key=f"{key}-summary",
            table=[{"field": k, "value": str(v)} for k, v in (
                ("endpoint", endpoint.name), ("organization", org), ("url", url),
                ("model name", spec.served_model_name), ("instance", endpoint.instance),
                ("max context", endpoint.max_context), ("precision", endpoint.precision),
                ("quantization", endpoint.quantization), ("generation", generation))],
            description=f"Endpoint {endpoint.name}",
        )
    except Exception as exc:  # Prefect unreachable: the engine matters, the artifacts can wait
        log.warning("serve-run artifacts not published: %s", exc)
