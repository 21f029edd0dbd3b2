"""CLI output as scripts and CI read it: piped, URLs are never cut; `--json` has the documented fields.

Real CLI processes (output piped, not a TTY) on a real registry with the demo checkpoint
registered; the endpoint is recorded as the create flow records it and made healthy by
recording serve-run facts (no Prefect or vLLM needed to read what the CLI prints).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from inference_endpoints.adapters.runtime import model_root_resolver
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.core.validation import CreateRequest
from inference_endpoints.services.operations import plan_create
from inference_endpoints.urls import endpoint_urls
from tests.cli_support import IsolatedStack
from tests.lifecycle_support import put_status

# 63 characters, the longest DNS label: its URLs are far wider than 80 columns.
LONG = "a-very-long-endpoint-name-that-no-terminal-of-80-columns-fits-x"
BACKEND = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> IsolatedStack:
    stack = IsolatedStack.make(tmp_path_factory.mktemp("output") / "data")
    org_id = stack.register_demo()
    registry = stack.registry()
    request = CreateRequest(LONG, "demo-tiny-llama", "cpu-dev", 1024, "float32", "none")
    plan = plan_create(registry, org_id, request, model_root_resolver(stack.settings.run_dir / "engines"))
    registry.record_endpoint(org_id, plan.request, plan.spec, endpoint_id=plan.endpoint_id,
                             idempotency_key=None)
    put_status(registry, plan.endpoint_id, EndpointStatus.HEALTHY, backend_url=BACKEND)
    return stack


def urls(stack: IsolatedStack) -> tuple[str, str]:
    u = endpoint_urls(LONG, "default", stack.settings)
    return f"{u.url}/v1", f"{u.path_url}/v1"


def parsed(stack: IsolatedStack, *args: str) -> Any:
    result = stack.cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # nothing but the document on stdout


def utc(value: str) -> datetime:
    ts = datetime.fromisoformat(value)
    assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0, value  # type: ignore[union-attr]
    return ts


def test_piped_list_and_show_print_whole_urls(stack: IsolatedStack) -> None:
    host_url, path_url = urls(stack)
    assert len(path_url) > 80
    listed = stack.cli("list")
    assert listed.returncode == 0 and path_url in listed.stdout and "…" not in listed.stdout
    shown = stack.cli("show", LONG)
    assert shown.returncode == 0
    for whole in (host_url, path_url, path_url.removesuffix("/v1") + "/health"):
        assert whole in shown.stdout
    assert "…" not in shown.stdout


def test_a_narrow_terminal_folds_cells_instead_of_cutting_them(stack: IsolatedStack) -> None:
    narrow = stack.env | {"COLUMNS": "80"}
    original, stack.env = stack.env, narrow
    try:
        listed = stack.cli("list")
    finally:
        stack.env = original
    assert listed.returncode == 0
    assert all(len(line) <= 80 for line in listed.stdout.splitlines())
    assert "…" not in listed.stdout
    url_column = "".join(line.split("│")[7].strip() for line in listed.stdout.splitlines()
                         if line.startswith("│"))
    assert url_column == urls(stack)[1]  # folded over several lines, the URL is all there


def test_list_json_fields(stack: IsolatedStack) -> None:
    host_url, path_url = urls(stack)
    rows = parsed(stack, "list")
    assert [r["name"] for r in rows] == [LONG]
    row = rows[0]
    ep = stack.registry().find_endpoint(stack.registry().get_org_by_name("default").id, LONG)  # type: ignore[union-attr]
    assert ep is not None
    assert (row["id"], row["status"], row["reason_code"]) == (ep.id, "healthy", None)
    assert row["model"] == ep.served_model_name
    assert row["checkpoint"] == {"id": ep.checkpoint_id, "name": "demo-tiny-llama"}
    assert row["instance"] == "cpu-dev"
    assert row["replicas"] == {"min": 1, "max": 1, "wanted": 1, "ready": 1, "autoscaled": False,
                               "scale_target": 4.0, "scale_down_after_s": 300}
    assert (row["url"], row["path_url"]) == (host_url, path_url)
    assert row["in_flight"] is None and row["requests"] is None  # no gateway: unknown, not 0
    assert utc(row["created_at"]).replace(tzinfo=None) == ep.created_at.replace(tzinfo=None)


def test_show_json_fields(stack: IsolatedStack) -> None:
    host_url, path_url = urls(stack)
    doc = parsed(stack, "show", LONG)
    assert (doc["name"], doc["status"], doc["reason"]) == (LONG, "healthy", None)
    assert (doc["url"], doc["path_url"]) == (host_url, path_url)
    assert doc["health_url"] == path_url.removesuffix("/v1") + "/health"
    assert (doc["max_context"], doc["precision"], doc["quantization"]) == (1024, "float32", "none")
    assert "--max-model-len 1024" in doc["serving_config"]["command"]
    assert doc["serving_config"]["mounts"] and all(m["read_only"] for m in doc["serving_config"]["mounts"])
    assert [r["phase"] for r in doc["replica_runs"]] == ["ready"]
    assert doc["replica_runs"][0]["address"] == BACKEND and doc["replica_runs"][0]["replica"] == 0
    assert utc(doc["phases"]["requested"]) <= utc(doc["phases"]["healthy"])
    assert [e["to_status"] for e in doc["activity"] if e["kind"] == "status"][-1] == "healthy"


def test_checkpoint_json_fields(stack: IsolatedStack) -> None:
    rows = parsed(stack, "checkpoint", "list")
    row = next(r for r in rows if r["name"] == "demo-tiny-llama")
    assert row["kind"] == "full" and row["status"] == "available"
    assert row["held_by"] == [f"{LONG} (healthy)"]
    assert row["digest"].startswith("sha256:") and row["size_bytes"] > 0
    detail = parsed(stack, "checkpoint", "show", "demo-tiny-llama")
    assert {k: detail[k] for k in ("id", "digest", "size_bytes")} == {k: row[k] for k in ("id", "digest", "size_bytes")}
    assert Path(detail["storage_location"]).is_dir()
    assert detail["facts"]["architecture"] == "LlamaForCausalLM"


def test_instances_and_keys_json_fields(stack: IsolatedStack) -> None:
    instances = {i["name"]: i for i in parsed(stack, "instances")}
    cpu = instances["cpu-dev"]
    assert (cpu["accelerator"], cpu["work_pool"], cpu["runtime"]) == ("cpu", "cpu-dev", "process")
    assert isinstance(cpu["price_per_hour"], float) and "float32" in cpu["precisions"]
    assert "auto" not in cpu["precisions"]
    made = stack.cli("key", "create", "--name", "ci", "-q")
    assert made.returncode == 0
    prefix = made.stdout.strip()[:11]
    assert stack.cli("key", "revoke", prefix).returncode == 0
    keys = {k["prefix"]: k for k in parsed(stack, "key", "list")}
    assert keys[prefix]["name"] == "ci" and utc(keys[prefix]["revoked_at"])
    assert any(k["revoked_at"] is None for k in keys.values())  # the CLI's own key


def test_status_json_when_the_stack_is_down(stack: IsolatedStack) -> None:
    result = stack.cli("status", "--json")
    assert result.returncode == 1  # the exit code does not depend on the format
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    core = {p["component"]: p["up"] for p in doc["components"] if p["core"]}
    assert "Prefect server" in core and "gateway (stable URLs)" in core
    assert any(name.startswith("worker (") for name in core)
    assert not any(core.values())
    assert doc["registry"] == stack.settings.db_url


def test_update_names_each_problem_before_anything_is_asked_and_writes_nothing(stack: IsolatedStack) -> None:
    before = stack.registry().counts()
    runs_before = len(stack.registry().runs.running())
    nothing = stack.cli("update", LONG)
    assert nothing.returncode == 2 and "nothing_to_update" in nothing.stderr
    bad = stack.cli("update", LONG, "--max-context", "0")
    assert bad.returncode == 2 and "max_context (invalid_max_context)" in bad.stderr
    unknown = stack.cli("update", LONG, "--instance", "nosuch-gpu")
    assert unknown.returncode == 2 and "instance (unknown_instance)" in unknown.stderr, unknown.stderr
    # cpu-dev serves float32 only (vLLM-CPU): a GPU-only precision is named as the bad field
    wrong = stack.cli("update", LONG, "--instance", "cpu-dev", "--precision", "float16")
    assert wrong.returncode == 2 and "precision (" in wrong.stderr, wrong.stderr
    down = stack.cli("update", LONG, "--max-context", "512")  # valid, but no stack is running
    assert down.returncode == 1 and "endpoints up" in down.stderr and "Nothing was changed" in down.stderr
    moved = stack.cli("update", LONG, "--instance", "t4-16gb")  # valid (it fits), no stack
    assert moved.returncode == 1 and "Nothing was changed" in moved.stderr, moved.stderr
    for result in (nothing, bad, unknown, wrong, down, moved):
        assert "Traceback" not in result.stdout + result.stderr
    assert stack.registry().counts() == before and len(stack.registry().runs.running()) == runs_before
    ep = stack.registry().find_endpoint(stack.registry().get_org_by_name("default").id, LONG)  # type: ignore[union-attr]
    assert ep is not None and ep.max_context == 1024 and ep.candidate_run is None
