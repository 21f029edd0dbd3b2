"""REST API and console pages against a real SQLite registry, through FastAPI's TestClient.

Creating and stopping hand work to Prefect (`run_deployment`). Unit tests have no
Prefect server, so `FakeOrchestrator` stands in for the submission and records
what would have been submitted; the real submission (and the flows it starts) is
exercised by tests/e2e/test_console_browser.py against the real stack.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inference_endpoints.adapters.console import create_app
from inference_endpoints.adapters.console.config import ConsoleSettings
from inference_endpoints.adapters.console.orchestrator import SubmitError
from inference_endpoints.adapters.console.traffic import Traffic
from inference_endpoints.adapters.metrics import discovery
from inference_endpoints.core.catalog import InstanceSpec
from inference_endpoints.core.request_counts import RequestCounts
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.persistence.models import Organization
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import LocalCheckpointStore
from inference_endpoints.settings import Settings
from tests.archs import write_tiny_llama
from tests.lifecycle_support import put_status


@dataclass
class FakeOrchestrator:
    """Records submissions instead of calling Prefect (no Prefect server in unit tests)."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    fail: bool = False

    def model_root_for(self, instance: InstanceSpec) -> Any:
        return lambda runtime, endpoint_id, generation=0: f"/srv/run/{endpoint_id}/g{generation}/models"

    def submit_create(self, parameters: dict[str, Any], idempotency_key: str) -> str:
        if self.fail:
            raise SubmitError("Prefect did not accept the run: connection refused")
        self.calls.append(("create", parameters, idempotency_key))
        return f"run-create-{len(self.calls)}"

    def submit_stop(self, endpoint_id: str, org_name: str, remove: bool) -> str:
        if self.fail:
            raise SubmitError("Prefect did not accept the run: connection refused")
        self.calls.append(("stop", endpoint_id, org_name, remove))
        return f"run-stop-{len(self.calls)}"

    def submit_reconcile(self) -> str:
        if self.fail:
            raise SubmitError("Prefect did not accept the run: connection refused")
        self.calls.append(("reconcile",))
        return f"run-reconcile-{len(self.calls)}"


@dataclass
class FakeTraffic:
    """Gateway counters as `/_gateway/stats` would report them."""

    rows: dict[tuple[str, str], Traffic] | None = field(default_factory=dict)

    def snapshot(self) -> dict[tuple[str, str], Traffic] | None:
        return self.rows


@dataclass
class World:
    client: TestClient
    registry: Registry
    settings: Settings
    orchestrator: FakeOrchestrator
    traffic: FakeTraffic
    org: Organization
    other: Organization
    key: str
    other_key: str
    src: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def other_auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.other_key}"}

    def create(self, name: str = "ep1", **fields: Any) -> dict[str, Any]:
        body = {"name": name, "checkpoint": "tiny", "instance": "cpu-dev", "max_context": 1024,
                "precision": "float32", **fields}
        response = self.client.post("/api/v1/endpoints", json=body, headers=self.auth)
        assert response.status_code == 202, response.text
        data: dict[str, Any] = response.json()
        return data

    def set_status(self, name: str, *path: EndpointStatus) -> None:
        ep = self.registry.find_endpoint(self.org.id, name)
        assert ep is not None
        for status in path:
            put_status(self.registry, ep.id, status)


@pytest.fixture
def world(sqlite_registry: Registry, tmp_path: Path) -> Iterator[World]:
    settings = Settings(data_dir=tmp_path / "data", gateway_port=8780)
    registry = sqlite_registry
    org = registry.get_org_by_name("default")
    assert org is not None
    key = registry.create_key(org.id, "tests").secret
    other, other_new = registry.create_org("other")
    # Each organization registers its own copy, from its own drop folder (an import root).
    src = write_tiny_llama(settings.imports_dir / org.name / "tiny")
    other_src = write_tiny_llama(settings.imports_dir / other.name / "tiny")
    orchestrator, traffic = FakeOrchestrator(), FakeTraffic()
    app = create_app(settings, console=ConsoleSettings(secret="test-secret", prometheus_url="http://127.0.0.1:9"),
                     registry=registry, store=LocalCheckpointStore(settings.store_root),
                     orchestrator=orchestrator, traffic=traffic)
    with TestClient(app) as client:
        w = World(client, registry, settings, orchestrator, traffic, org, other, key, other_new.secret, src)
        for auth, path in ((w.auth, src), (w.other_auth, other_src)):
            r = client.post("/api/v1/checkpoints", json={"path": str(path), "name": "tiny"}, headers=auth)
            assert r.status_code == 201, r.text
        yield w


# ---- authentication ----------------------------------------------------------------------------

def test_requests_without_a_valid_key_are_refused(world: World) -> None:
    c = world.client
    assert c.get("/api/v1/endpoints").status_code == 401
    bad = c.get("/api/v1/endpoints", headers={"Authorization": "Bearer ie_nope"})
    assert bad.status_code == 401
    assert bad.json()["problems"][0]["code"] == "unauthorized"
    assert bad.headers["www-authenticate"] == "Bearer"
    prefix = world.registry.list_keys(world.org.id)[-1].prefix
    world.registry.revoke_key(world.org.id, prefix)
    assert c.get("/api/v1/endpoints", headers=world.auth).status_code == 401


def test_who_am_i_and_instances(world: World) -> None:
    assert world.client.get("/api/v1/org", headers=world.auth).json() == {"id": world.org.id, "name": "default"}
    instances = world.client.get("/api/v1/instances", headers=world.auth).json()
    cpu = next(i for i in instances if i["name"] == "cpu-dev")
    assert cpu["price_per_hour"] == 0.05 and cpu["total_memory_gib"] == 8.0


def test_openapi_lists_every_route(world: World) -> None:
    paths = world.client.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/endpoints", "/api/v1/endpoints/{name}", "/api/v1/endpoints/{name}/stop",
                 "/api/v1/endpoints/{name}/activity", "/api/v1/endpoints/{name}/metrics",
                 "/api/v1/checkpoints", "/api/v1/checkpoints/{ref}", "/api/v1/instances",
                 "/api/v1/activity", "/api/v1/keys", "/api/v1/keys/{ref}", "/api/v1/org",
                 "/api/v1/endpoints/{name}/update"):
        assert path in paths, path
    assert not any(p.startswith("/endpoints") for p in paths), "pages stay out of the API schema"


# ---- endpoints ---------------------------------------------------------------------------------

def test_create_records_then_submits_the_create_flow_with_the_same_key(world: World) -> None:
    data = world.create("ep1", idle_stop_minutes=30)
    assert data["status"] == "pending" and data["name"] == "ep1"
    assert data["urls"]["path_url"] == "http://127.0.0.1:8780/e/default/ep1"
    assert data["idle"]["auto_stop_minutes"] == 30
    (kind, params, key), = world.orchestrator.calls
    ep = world.registry.find_endpoint(world.org.id, "ep1")
    assert ep is not None and kind == "create"
    assert ep.idempotency_key == key == params["idempotency_key"]
    assert params == {"name": "ep1", "checkpoint": ep.checkpoint_id, "instance": "cpu-dev",
                      "max_context": 1024, "precision": "float32", "quantization": "none",
                      "org": "default", "idempotency_key": key}
    assert ep.create_run_id == "run-create-1"
    assert world.registry.open_lease_count(ep.id) == 1, "the lease is taken with the record"
    assert "/srv/run/" in ep.serving_config_json, "the orchestrator's model root is what runs"


def test_idempotency_key_header_returns_the_same_endpoint(world: World) -> None:
    body = {"name": "ep1", "checkpoint": "tiny", "max_context": 1024, "precision": "float32"}
    headers = {**world.auth, "Idempotency-Key": "abc-123"}
    first = world.client.post("/api/v1/endpoints", json=body, headers=headers).json()
    again = world.client.post("/api/v1/endpoints", json=body, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == first["id"]
    assert len(world.orchestrator.calls) == 1


def test_bad_create_lists_every_problem_and_writes_nothing(world: World) -> None:
    before = world.registry.counts()
    body = {"name": "Bad_Name!", "checkpoint": "missing", "instance": "nope", "max_context": "lots",
            "precision": "float8", "quantization": "zip", "idle_stop_minutes": -5}
    r = world.client.post("/api/v1/endpoints", json=body, headers=world.auth)
    assert r.status_code == 422
    problems = r.json()["problems"]
    assert {p["field"] for p in problems} >= {"name", "checkpoint", "instance", "max_context",
                                              "precision", "quantization", "idle_stop_minutes"}
    assert all(set(p) == {"code", "field", "message", "hint"} for p in problems)
    assert world.registry.counts() == before and world.orchestrator.calls == []


def test_create_reports_fit_problems_with_the_estimate(world: World) -> None:
    r = world.client.post("/api/v1/endpoints", json={"name": "big", "checkpoint": "tiny",
                                                       "max_context": 100000}, headers=world.auth)
    assert r.status_code == 422
    assert r.json()["problems"][0]["code"] == "max_context_too_large"
    v = world.client.post("/api/v1/endpoints/validate", json={"name": "ok", "checkpoint": "tiny",
                                                               "max_context": 512}, headers=world.auth).json()
    assert v["ok"] is True and v["fit"]["available"] == "8.00 GiB"


def test_bad_json_types_keep_the_problem_shape(world: World) -> None:
    r = world.client.post("/api/v1/endpoints", content=b"not json",
                          headers={**world.auth, "Content-Type": "application/json"})
    assert r.status_code == 422 and "problems" in r.json()
    r = world.client.get("/api/v1/endpoints?limit=0", headers=world.auth)
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "limit"


def test_submit_failure_fails_the_endpoint_and_frees_its_checkpoint(world: World) -> None:
    world.orchestrator.fail = True
    r = world.client.post("/api/v1/endpoints", json={"name": "ep1", "checkpoint": "tiny",
                                                       "max_context": 1024}, headers=world.auth)
    assert r.status_code == 503
    assert r.json()["problems"][0]["code"] == "orchestrator_unavailable"
    ep = world.registry.find_endpoint(world.org.id, "ep1")
    assert ep is not None and ep.status == "failed" and ep.reason_code == "deploy_failed"
    assert world.registry.open_lease_count(ep.id) == 0


def test_list_filters_paginates_and_totals_cost(world: World) -> None:
    for name in ("a1", "a2", "a3"):
        world.create(name)
    world.set_status("a1", EndpointStatus.DEPLOYING, EndpointStatus.LOADING, EndpointStatus.HEALTHY)
    world.traffic.rows = {("default", "a1"): Traffic(RequestCounts({"2xx": 6, "4xx": 3, "5xx": 1}, 2), 0, None)}
    page = world.client.get("/api/v1/endpoints?limit=2", headers=world.auth).json()
    assert page["total"] == 3 and len(page["items"]) == 2 and page["items"][0]["name"] == "a3"
    rest = world.client.get("/api/v1/endpoints?limit=2&offset=2", headers=world.auth).json()
    assert [e["name"] for e in rest["items"]] == ["a1"]
    traffic = rest["items"][0]["traffic"]
    # one definition (core.request_counts): 4xx are rejections, errors are 5xx + broken streams
    assert traffic["requests"] == 10 and traffic["errors"] == 3, traffic
    assert traffic["by_class"] == {"2xx": 6, "4xx": 3, "5xx": 1, "broken_streams": 2, "ok": 4,
                                   "rejected": 3, "errors": 3}, traffic
    sign_in(world)
    detail = world.client.get("/endpoints/a1")
    assert detail.status_code == 200, detail.text
    assert "10 requests: 4 ok, 3 rejected (4xx), 3 errors (5xx or broken off)" in detail.text
    assert 'data-4xx="3"' in detail.text and 'data-errors="3"' in detail.text
    assert rest["items"][0]["model"]["base_model"] == "LlamaForCausalLM"  # kept for scripts
    assert rest["items"][0]["model"]["architecture"] == "LlamaForCausalLM"
    healthy = world.client.get("/api/v1/endpoints?status=healthy", headers=world.auth).json()
    assert [e["name"] for e in healthy["items"]] == ["a1"]
    both = world.client.get("/api/v1/endpoints?status=healthy&status=pending", headers=world.auth).json()
    assert both["total"] == 3
    bad = world.client.get("/api/v1/endpoints?status=asleep", headers=world.auth)
    assert bad.status_code == 422 and bad.json()["problems"][0]["code"] == "invalid_status"
    assert page["cost_total"] >= 0


def test_gateway_down_shows_no_traffic(world: World) -> None:
    world.create("ep1")
    world.traffic.rows = None
    item = world.client.get("/api/v1/endpoints", headers=world.auth).json()["items"][0]
    assert item["traffic"] is None


def test_get_shows_config_but_never_a_secret(world: World) -> None:
    world.create("ep1")
    r = world.client.get("/api/v1/endpoints/ep1", headers=world.auth)
    assert r.status_code == 200
    data = r.json()
    ep = world.registry.find_endpoint(world.org.id, "ep1")
    assert ep is not None and ep.backend_api_key
    assert ep.backend_api_key not in r.text and world.key not in r.text
    assert "api_key" not in data["serving_config"]
    assert "--max-model-len 1024" in data["serving_config"]["command_line"]
    assert data["effective"]["available"] is False
    assert data["authentication"].startswith("Authorization: Bearer <")
    assert world.client.get(f"/api/v1/endpoints/{ep.id}", headers=world.auth).json()["name"] == "ep1"
    assert world.client.get("/api/v1/endpoints/nope", headers=world.auth).status_code == 404


def test_idle_stop_can_be_set_and_cleared(world: World) -> None:
    world.create("ep1")
    r = world.client.patch("/api/v1/endpoints/ep1", json={"idle_stop_minutes": 45}, headers=world.auth)
    assert r.status_code == 200 and r.json()["idle"]["auto_stop_minutes"] == 45
    r = world.client.patch("/api/v1/endpoints/ep1", json={"idle_stop_minutes": "soon"}, headers=world.auth)
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "idle_stop_minutes"
    r = world.client.patch("/api/v1/endpoints/ep1", json={"idle_stop_minutes": None}, headers=world.auth)
    assert r.json()["idle"]["auto_stop_minutes"] is None


def test_stop_submits_the_stop_flow_and_shows_stopping(world: World) -> None:
    world.create("ep1")
    world.set_status("ep1", EndpointStatus.DEPLOYING)
    r = world.client.post("/api/v1/endpoints/ep1/stop", headers=world.auth)
    assert r.status_code == 202
    assert r.json()["outcome"] == "stopping" and r.json()["endpoint"]["status"] == "stopping"
    ep = world.registry.find_endpoint(world.org.id, "ep1")
    assert ep is not None
    assert world.orchestrator.calls[-1] == ("stop", ep.id, "default", False)


def test_stop_of_a_stopped_endpoint_does_nothing(world: World) -> None:
    world.create("ep1")
    world.set_status("ep1", EndpointStatus.STOPPING, EndpointStatus.STOPPED)
    ep = world.registry.find_endpoint(world.org.id, "ep1")
    assert ep is not None
    world.registry.release_leases(ep.id)
    calls = len(world.orchestrator.calls)
    r = world.client.post("/api/v1/endpoints/ep1/stop", headers=world.auth)
    assert r.json()["outcome"] == "already stopped" and len(world.orchestrator.calls) == calls


def test_remove_running_goes_through_the_flow_and_stopped_is_immediate(world: World) -> None:
    world.create("run1")
    r = world.client.delete("/api/v1/endpoints/run1", headers=world.auth)
    assert r.status_code == 202 and r.json()["outcome"] == "removing"
    assert world.orchestrator.calls[-1][3] is True
    world.create("done1")
    world.set_status("done1", EndpointStatus.FAILED)
    ep = world.registry.find_endpoint(world.org.id, "done1")
    assert ep is not None
    world.registry.release_leases(ep.id)
    r = world.client.delete("/api/v1/endpoints/done1", headers=world.auth)
    assert r.status_code == 200 and r.json()["outcome"] == "removed"
    assert world.registry.find_endpoint(world.org.id, "done1") is None


def test_activity_per_endpoint_and_per_org(world: World) -> None:
    world.create("ep1")
    world.set_status("ep1", EndpointStatus.DEPLOYING)
    events = world.client.get("/api/v1/endpoints/ep1/activity", headers=world.auth).json()
    assert [e["to_status"] for e in events] == ["deploying", "pending"]
    org_events = world.client.get("/api/v1/activity", headers=world.auth).json()
    assert {e["endpoint"] for e in org_events} == {"ep1"}


def test_metrics_route_says_plainly_when_prometheus_is_down(world: World) -> None:
    world.create("ep1")
    r = world.client.get("/api/v1/endpoints/ep1/metrics?window=15m", headers=world.auth)
    assert r.status_code == 503
    assert r.json()["problems"][0]["code"] == "metrics_unavailable"
    assert world.client.get("/api/v1/endpoints/ep1/metrics?window=2d", headers=world.auth).status_code == 422


# ---- checkpoints -------------------------------------------------------------------------------

def test_register_validates_the_path(world: World) -> None:
    c = world.client
    for body, code in (({"path": "relative/dir", "name": "x"}, "invalid_path"),
                       ({"path": "/does/not/exist", "name": "x"}, "path_outside_import_roots"),
                       ({"path": str(world.settings.store_root), "name": "x"}, "path_outside_import_roots"),
                       ({"path": str(world.src.parent / "nothing"), "name": "x"}, "not_a_directory"),
                       ({"path": str(world.src), "name": "tiny"}, "name_taken")):
        r = c.post("/api/v1/checkpoints", json=body, headers=world.auth)
        assert r.status_code == 422, body
        if code:
            assert code in [p["code"] for p in r.json()["problems"]]


def test_checkpoint_list_get_and_delete_held_then_free(world: World) -> None:
    c = world.client
    listed = c.get("/api/v1/checkpoints", headers=world.auth).json()
    assert [x["name"] for x in listed] == ["tiny"]
    ckpt_id = listed[0]["id"]
    assert c.get(f"/api/v1/checkpoints/{ckpt_id}", headers=world.auth).json()["facts"]["num_layers"] == 2
    world.create("ep1")
    used = c.get("/api/v1/checkpoints/tiny", headers=world.auth).json()["used_by"]
    assert [u["endpoint"] for u in used] == ["ep1"]
    answer = c.delete("/api/v1/checkpoints/tiny", headers=world.auth).json()
    assert answer["bytes"] == "held" and answer["held_by"][0]["endpoint"] == "ep1"
    assert answer["status"] == "deleted" and answer["newly_deleted"] is True
    assert c.get("/api/v1/checkpoints", headers=world.auth).json() == []
    assert [x["status"] for x in c.get("/api/v1/checkpoints?all=true", headers=world.auth).json()] == ["deleted"]
    ep = world.registry.find_endpoint(world.org.id, "ep1")
    assert ep is not None
    world.registry.release_leases(ep.id)
    again = c.delete(f"/api/v1/checkpoints/{ckpt_id}", headers=world.auth).json()
    assert again["newly_deleted"] is False and again["bytes"] != "held" and again["held_by"] == []
    r = c.post("/api/v1/endpoints", json={"name": "ep2", "checkpoint": ckpt_id, "max_context": 512},
               headers=world.auth)
    assert r.status_code == 422 and r.json()["problems"][0]["code"] == "checkpoint_deleted"


# ---- keys --------------------------------------------------------------------------------------

def test_keys_list_prefixes_create_once_and_revoke(world: World) -> None:
    c = world.client
    listed = c.get("/api/v1/keys", headers=world.auth).json()
    assert {k["name"] for k in listed} == {"default", "tests"}
    assert all(set(k) == {"id", "name", "prefix", "created_at", "revoked_at"} for k in listed)
    new = c.post("/api/v1/keys", json={"name": "ci"}, headers=world.auth)
    assert new.status_code == 201 and new.json()["key"].startswith(new.json()["prefix"])
    secret = new.json()["key"]
    assert secret not in c.get("/api/v1/keys", headers=world.auth).text
    assert c.get("/api/v1/org", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert c.post("/api/v1/keys", json={"name": ""}, headers=world.auth).status_code == 422
    revoked = c.delete(f"/api/v1/keys/{new.json()['prefix']}", headers=world.auth)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert c.get("/api/v1/org", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


# ---- organization isolation --------------------------------------------------------------------

def test_every_route_hides_another_orgs_data(world: World) -> None:
    """Org `other` holds a key, its own `tiny`, and sees none of `default`'s rows on any route."""
    world.create("secret-ep")
    ep = world.registry.find_endpoint(world.org.id, "secret-ep")
    assert ep is not None
    ckpt = world.registry.find_checkpoint(world.org.id, "tiny")
    assert ckpt is not None
    default_key = world.registry.list_keys(world.org.id)[0]
    c, h = world.client, world.other_auth
    forbidden = [ep.id, "secret-ep", ckpt.id, default_key.prefix, default_key.id]

    def hidden(response: Any, *statuses: int) -> None:
        """The expected status, and none of our identifiers in the body (beyond echoing the caller's input)."""
        assert response.status_code in statuses, (response.request.url, response.status_code, response.text)
        sent = str(response.request.url) + response.request.content.decode()
        for value in forbidden:
            if value not in sent:
                assert value not in response.text, (response.request.url, value)

    for ref in ("secret-ep", ep.id):
        hidden(c.get(f"/api/v1/endpoints/{ref}", headers=h), 404)
        hidden(c.patch(f"/api/v1/endpoints/{ref}", json={"idle_stop_minutes": 5}, headers=h), 404)
        hidden(c.post(f"/api/v1/endpoints/{ref}/stop", headers=h), 404)
        hidden(c.delete(f"/api/v1/endpoints/{ref}", headers=h), 404)
        hidden(c.get(f"/api/v1/endpoints/{ref}/activity", headers=h), 404)
        hidden(c.get(f"/api/v1/endpoints/{ref}/metrics", headers=h), 404)
    hidden(c.get("/api/v1/activity?endpoint=secret-ep", headers=h), 404)
    listed = c.get("/api/v1/endpoints", headers=h)
    hidden(listed, 200)
    assert listed.json()["items"] == [] and listed.json()["total"] == 0
    hidden(c.get("/api/v1/activity", headers=h), 200)
    assert c.get("/api/v1/activity", headers=h).json() == []
    # Checkpoints: by id another org's is missing (their own `tiny` answers by name).
    hidden(c.get(f"/api/v1/checkpoints/{ckpt.id}", headers=h), 404)
    hidden(c.delete(f"/api/v1/checkpoints/{ckpt.id}", headers=h), 404)
    for query in ("", "?all=true"):
        hidden(c.get(f"/api/v1/checkpoints{query}", headers=h), 200)
    own = c.get("/api/v1/checkpoints/tiny", headers=h).json()
    assert own["id"] != ckpt.id and own["used_by"] == []
    # Creating from another org's checkpoint id: it does not exist for them.
    r = c.post("/api/v1/endpoints", json={"name": "steal", "checkpoint": ckpt.id, "max_context": 512},
               headers=h)
    hidden(r, 422)
    assert r.json()["problems"][0]["code"] == "checkpoint_not_found"
    r = c.post("/api/v1/endpoints/validate", json={"name": "steal", "checkpoint": ckpt.id}, headers=h)
    hidden(r, 200)
    # The same endpoint name is free in their org (names are per organization).
    assert c.post("/api/v1/endpoints/validate", json={"name": "secret-ep", "checkpoint": "tiny",
                                                       "max_context": 512}, headers=h).json()["ok"]
    # Keys: their list is theirs; revoking ours answers 404 and changes nothing.
    hidden(c.get("/api/v1/keys", headers=h), 200)
    hidden(c.delete(f"/api/v1/keys/{default_key.prefix}", headers=h), 404)
    hidden(c.delete(f"/api/v1/keys/{default_key.id}", headers=h), 404)
    assert all(k.revoked_at is None for k in world.registry.list_keys(world.org.id))
    # Nothing of ours changed.
    after = world.registry.find_endpoint(world.org.id, "secret-ep")
    assert after is not None and after.status == "pending" and after.idle_stop_minutes is None
    assert world.orchestrator.calls[-1][0] == "create"


# ---- pages -------------------------------------------------------------------------------------

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "page has no CSRF field"
    return found.group(1)


def sign_in(world: World, key: str | None = None) -> str:
    page = world.client.get("/signin")
    token = csrf_of(page.text)
    r = world.client.post("/signin", data={"api_key": key or world.key, "csrf_token": token,
                                           "next": "/endpoints"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return csrf_of(world.client.get("/endpoints").text)


def test_pages_need_sign_in_and_the_cookie_is_safe(world: World) -> None:
    c = world.client
    r = c.get("/endpoints", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/signin")
    assert c.get("/endpoints/_table", headers={"HX-Request": "true"}).headers["hx-redirect"].startswith("/signin")
    token = csrf_of(c.get("/signin").text)
    bad = c.post("/signin", data={"api_key": "ie_wrong", "csrf_token": token})
    assert bad.status_code == 401 and "not a valid organization API key" in bad.text
    no_csrf = c.post("/signin", data={"api_key": world.key})
    assert no_csrf.status_code == 403 and "Traceback" not in no_csrf.text
    r = c.post("/signin", data={"api_key": world.key, "csrf_token": token, "next": "//evil.example"},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/endpoints"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert world.key not in r.headers["set-cookie"]
    assert c.get("/endpoints").status_code == 200


def test_sign_out_and_revoked_key_end_the_session(world: World) -> None:
    token = sign_in(world)
    assert world.client.post("/signout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    assert world.client.get("/endpoints", follow_redirects=False).status_code == 303
    sign_in(world)
    prefix = next(k.prefix for k in world.registry.list_keys(world.org.id) if k.name == "tests")
    world.registry.revoke_key(world.org.id, prefix)
    assert world.client.get("/endpoints", follow_redirects=False).status_code == 303


def test_list_page_shows_status_model_url_requests_cost_and_actions(world: World) -> None:
    world.create("ep1")
    world.create("ep2")
    world.set_status("ep1", EndpointStatus.DEPLOYING, EndpointStatus.LOADING, EndpointStatus.HEALTHY)
    world.traffic.rows = {("default", "ep1"): Traffic(RequestCounts({"2xx": 42}), 0, None)}
    sign_in(world)
    html = world.client.get("/endpoints").text
    assert 'badge badge-healthy' in html and 'badge badge-pending' in html
    assert '<code class="model-name">ep1</code>' in html and ">tiny</a>" in html and "· LlamaForCausalLM" in html
    assert "http://127.0.0.1:8780/e/default/ep1/v1" in html and 'class="copy"' in html
    assert ">42<" in html and "cpu-dev" in html and "$" in html
    assert 'hx-trigger="every 2s"' in html, "something is changing (ep2 pending): refresh fast"
    assert 'hx-confirm="Stop ep1?' in html


def test_stop_and_remove_from_the_list(world: World) -> None:
    world.create("ep1")
    token = sign_in(world)
    no_csrf = world.client.post("/endpoints/ep1/stop", headers={"HX-Request": "true"})
    assert no_csrf.status_code == 403
    r = world.client.post("/endpoints/ep1/stop", headers={"HX-Request": "true", "X-CSRF-Token": token})
    assert r.status_code == 200 and 'id="endpoints-table"' in r.text and "Stopping ep1" in r.text
    assert world.orchestrator.calls[-1][0] == "stop"
    world.set_status("ep1", EndpointStatus.STOPPED)
    ep = world.registry.find_endpoint(world.org.id, "ep1")
    assert ep is not None
    world.registry.release_leases(ep.id)
    r = world.client.post("/endpoints/ep1/remove", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303 and world.registry.find_endpoint(world.org.id, "ep1") is None


def test_detail_page_has_connection_config_activity_examples_cost_and_metrics_tab(world: World) -> None:
    world.create("ep1")
    sign_in(world)
    html = world.client.get("/endpoints/ep1").text
    ep = world.registry.find_endpoint(world.org.id, "ep1")
    assert ep is not None and ep.backend_api_key not in html and world.key not in html
    for needle in ("http://ep1.default.endpoints.localhost:8780/v1", "http://127.0.0.1:8780/e/default/ep1/v1",
                   "http://127.0.0.1:8780/e/default/ep1/health", "Authorization: Bearer &lt;your",
                   "--max-model-len 1024", 'id="example-curl"', 'id="example-python"', 'id="example-http"',
                   "curl -sS http://127.0.0.1:8780/e/default/ep1/v1/completions", "$IE_API_KEY",
                   "&#34;model&#34;: &#34;ep1&#34;", "Cost so far", "$0.05", 'id="metrics-tab"',
                   'hx-get="/endpoints/ep1/_status?seen=pending"', "Requested on cpu-dev"):
        assert needle in html, needle
    metrics = world.client.get("/endpoints/ep1?tab=metrics").text
    assert 'id="metrics"' in metrics and "/vendor/chart.umd.min.js" in metrics
    fragment = world.client.get("/endpoints/ep1/_metrics?window=15m").text
    assert "metrics-unavailable" in fragment and "keeps working" in fragment
    assert world.client.get("/endpoints/nope").status_code == 404


def test_status_fragment_reloads_the_page_once_the_endpoint_settles(world: World) -> None:
    world.create("ep1")
    sign_in(world)
    r = world.client.get("/endpoints/ep1/_status?seen=pending")
    assert 'id="endpoint-status"' in r.text and "every 2s" in r.text
    world.set_status("ep1", EndpointStatus.DEPLOYING, EndpointStatus.LOADING, EndpointStatus.HEALTHY)
    assert world.client.get("/endpoints/ep1/_status?seen=loading").headers.get("hx-refresh") == "true"


BAD_FORMS = [
    ({"name": "Bad_Name!"}, "name", "invalid_name"),
    ({"name": "ep1"}, "name", "name_taken"),
    ({"checkpoint": ""}, "checkpoint", "checkpoint_not_found"),
    ({"max_context": "lots"}, "max_context", "invalid_max_context"),
    ({"max_context": "0"}, "max_context", "invalid_max_context"),
    ({"max_context": "999999"}, "max_context", "max_context_too_large"),
    ({"precision": "float16"}, "precision", "precision_unsupported"),
    ({"quantization": "fp8"}, "quantization", "quantization_unsupported"),
    ({"quantization": "awq"}, "quantization", "quantization_mismatch"),
    ({"instance": "t4-16gb", "precision": "bfloat16"}, "precision", "precision_unsupported"),
    ({"idle_stop_minutes": "-3"}, "idle_stop_minutes", "invalid_idle_stop"),
]


@pytest.mark.parametrize(("change", "field_name", "code"), BAD_FORMS)
def test_create_form_shows_each_problem_inline(world: World, change: dict[str, str], field_name: str,
                                               code: str) -> None:
    world.create("ep1")
    token = sign_in(world)
    ckpt = world.registry.find_checkpoint(world.org.id, "tiny")
    assert ckpt is not None
    form = {"name": "fresh", "checkpoint": ckpt.id, "instance": "cpu-dev", "max_context": "1024",
            "precision": "float32", "quantization": "none", "idle_stop_minutes": "", "csrf_token": token,
            **change}
    fragment = world.client.post("/endpoints/new/validate", data=form)
    assert fragment.status_code == 200
    block = re.search(rf'<div class="field-error" id="error-{field_name}"[^>]*>(.*?)</div>', fragment.text, re.S)
    assert block and f'data-code="{code}"' in block.group(1), fragment.text
    page = world.client.post("/endpoints/new", data=form, follow_redirects=False)
    assert page.status_code == 422 and "Traceback" not in page.text
    block = re.search(rf'<div class="field-error" id="error-{field_name}"[^>]*>(.*?)</div>', page.text, re.S)
    assert block and f'data-code="{code}"' in block.group(1)
    assert world.registry.find_endpoint(world.org.id, "fresh") is None


def test_create_form_success_shows_fit_and_redirects_to_the_detail_page(world: World) -> None:
    token = sign_in(world)
    new_page = world.client.get("/endpoints/new").text
    assert "cpu-dev · cpu · 8.0 GiB · $0.05/h" in new_page and "tiny (full, LlamaForCausalLM" in new_page
    ckpt = world.registry.find_checkpoint(world.org.id, "tiny")
    assert ckpt is not None
    form = {"name": "fresh", "checkpoint": ckpt.id, "instance": "cpu-dev", "max_context": "1024",
            "precision": "float32", "quantization": "none", "idle_stop_minutes": "20", "csrf_token": token}
    check = world.client.post("/endpoints/new/validate", data=form).text
    assert 'data-ok="true"' in check and "largest max context that fits" in check
    r = world.client.post("/endpoints/new", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/endpoints/fresh"
    ep = world.registry.find_endpoint(world.org.id, "fresh")
    assert ep is not None and ep.idle_stop_minutes == 20
    assert "Creating fresh" in world.client.get("/endpoints/fresh").text


def test_create_form_when_prefect_is_down_says_so(world: World) -> None:
    token = sign_in(world)
    world.orchestrator.fail = True
    ckpt = world.registry.find_checkpoint(world.org.id, "tiny")
    assert ckpt is not None
    r = world.client.post("/endpoints/new", data={"name": "fresh", "checkpoint": ckpt.id, "instance": "cpu-dev",
                                                  "max_context": "512", "csrf_token": token})
    assert r.status_code == 503 and "Prefect did not accept" in r.text and "Traceback" not in r.text


def test_checkpoints_page_delete_says_held_by_whom(world: World) -> None:
    world.create("ep1")
    token = sign_in(world)
    html = world.client.get("/checkpoints").text
    assert 'data-checkpoint="tiny"' in html and '<a href="/endpoints/ep1">ep1</a>' in html
    ckpt = world.registry.find_checkpoint(world.org.id, "tiny")
    assert ckpt is not None
    r = world.client.post(f"/checkpoints/{ckpt.id}/delete", headers={"HX-Request": "true", "X-CSRF-Token": token})
    assert 'data-bytes="held"' in r.text and "held by ep1 (pending)" in r.text
    other = world.registry.find_checkpoint(world.other.id, "tiny")
    assert other is not None
    r = world.client.post(f"/checkpoints/{other.id}/delete", headers={"HX-Request": "true", "X-CSRF-Token": token})
    assert "No checkpoint" in r.text
    assert world.registry.find_checkpoint(world.other.id, "tiny", available_only=True) is not None


def test_register_form_reports_problems_inline(world: World) -> None:
    token = sign_in(world)
    r = world.client.post("/checkpoints/register", data={"path": "/nope/nothing", "name": "x", "csrf_token": token})
    assert r.status_code == 422 and 'class="field-error"' in r.text
    r = world.client.post("/checkpoints/register", data={"path": str(world.src), "name": "tiny-2",
                                                         "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    assert world.registry.find_checkpoint(world.org.id, "tiny-2") is not None


def test_keys_page_shows_a_new_key_once(world: World) -> None:
    token = sign_in(world)
    r = world.client.post("/keys", data={"name": "laptop", "csrf_token": token})
    secret = re.search(r'id="new-key-secret">([^<]+)<', r.text)
    assert secret and secret.group(1).startswith("ie_")
    assert secret.group(1) not in world.client.get("/keys").text
    assert secret.group(1) not in (r.headers.get("set-cookie") or "")


def test_another_orgs_pages_are_not_found(world: World) -> None:
    world.create("secret-ep")
    sign_in(world, world.other_key)
    html = world.client.get("/endpoints").text
    assert "secret-ep" not in html
    assert world.client.get("/endpoints/secret-ep").status_code == 404
    token = csrf_of(world.client.get("/endpoints/new").text)
    r = world.client.post("/endpoints/secret-ep/stop", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303 and world.orchestrator.calls[-1][0] == "create"


def test_frontend_libraries_come_from_node_modules(world: World) -> None:
    r = world.client.get("/vendor/htmx.min.js")
    assert r.status_code == 200, "htmx is not served: run scripts/setup-frontend.sh (setup.sh does)"
    assert "htmx" in r.text[:2000]
    assert world.client.get("/vendor/../../etc/passwd").status_code == 404
    assert world.client.get("/vendor/anything.js").status_code == 404


def test_service_discovery_is_mounted(world: World) -> None:
    assert world.client.app.dependency_overrides[discovery.get_registry]() is world.registry  # type: ignore[attr-defined]
    world.create("ep1")
    world.set_status("ep1", EndpointStatus.DEPLOYING)
    world.registry.update_endpoint(world.registry.find_endpoint(world.org.id, "ep1").id,  # type: ignore[union-attr]
                                   backend_url="http://127.0.0.1:5999")
    remote = world.client.get("/sd/targets")  # TestClient's peer is "testclient", not loopback
    assert remote.status_code == 403 and "5999" not in remote.text
    with TestClient(world.client.app, client=("127.0.0.1", 40000)) as local:
        r = local.get("/sd/targets")
    assert r.status_code == 200 and any("127.0.0.1:5999" in g["targets"] for g in r.json())
