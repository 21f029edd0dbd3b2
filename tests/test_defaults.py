"""One default for max context and instance everywhere a create can start, and the Prefect run
forms offer the catalog's instances as a choice (not free text)."""

from __future__ import annotations

import inspect

from prefect.utilities.callables import parameter_schema

from flows.create_endpoint import create_endpoint
from flows.on_finetune_completed import on_finetune_completed
from inference_endpoints.adapters.console.schemas import CreateEndpointIn
from inference_endpoints.cli.create import create_cmd
from inference_endpoints.core.catalog import by_name
from inference_endpoints.core.validation import DEFAULT_INSTANCE, DEFAULT_MAX_CONTEXT


def test_every_create_path_has_the_same_defaults() -> None:
    cli = inspect.signature(create_cmd).parameters
    assert cli["max_context"].default == str(DEFAULT_MAX_CONTEXT) and cli["instance"].default == DEFAULT_INSTANCE
    api = CreateEndpointIn.model_fields
    assert api["max_context"].default == DEFAULT_MAX_CONTEXT and api["instance"].default == DEFAULT_INSTANCE
    for flow in (create_endpoint, on_finetune_completed):
        props = parameter_schema(flow.fn).model_dump()["properties"]
        assert props["max_context"]["default"] == DEFAULT_MAX_CONTEXT, flow.name
        assert props["instance"]["default"] == DEFAULT_INSTANCE, flow.name
        assert props["instance"]["enum"] == sorted(by_name()), flow.name  # a choice in the run form
    assert DEFAULT_INSTANCE in by_name()
