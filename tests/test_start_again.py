"""`endpoints start` / `POST /api/v1/endpoints/{name}/start`: a stopped endpoint serves again.

Same name, URL, model name, backend key and serving configuration; a new live serve run
(the reconciler submits it) and its checkpoint leased again in the same transaction.
Every refusal (still serving, checkpoint deleted, being removed) names the field and
writes nothing. Real registry (SQLite and PostgreSQL); the console's Prefect is the
named fake orchestrator of tests/test_console_api.py (unit tests have no Prefect server).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from inference_endpoints.core.cost import EngineSpan
from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.core.lifecycle import Purpose, Role
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.core.validation import CreateRequest
from inference_endpoints.persistence.checkpoint_lifecycle import delete_checkpoint
from inference_endpoints.persistence.models import ServeRun
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import LocalCheckpointStore
from inference_endpoints.services.import_roots import SourcePolicy
from inference_endpoints.services.operations import plan_create, register_checkpoint, start_again
from inference_endpoints.settings import Settings
from tests.archs import write_tiny_llama
from tests.lifecycle_support import put_status
from tests.test_console_api import World, world  # noqa: F401  (the fixture)

S = EndpointStatus


def stopped_endpoint(registry: Registry, tmp_path: Path, name: str = "chat") -> tuple[str, str]:
    """An endpoint that served and was stopped, its lease released; returns (org id, endpoint id)."""
    settings = Settings(data_dir=tmp_path / "data")
    org = registry.get_org_by_name("default")
    assert org is not None
    src = write_tiny_llama(settings.imports_dir / "default" / "tiny")
    if registry.find_checkpoint(org.id, "tiny") is None:
        register_checkpoint(registry, LocalCheckpointStore(settings.store_root), org.id, src, "tiny",
                            sources=SourcePolicy.from_settings(settings))
    plan = plan_create(registry, org.id, CreateRequest(name, "tiny", "cpu-dev", 1024, "float32", "none"),
                       lambda runtime, endpoint_id: f"/srv/{endpoint_id}")
    registry.record_endpoint(org.id, plan.request, plan.spec, endpoint_id=plan.endpoint_id,
                             idempotency_key=None)
    put_status(registry, plan.endpoint_id, S.HEALTHY, backend_url="http://127.0.0.1:9")
    put_status(registry, plan.endpoint_id, S.STOPPING)
    put_status(registry, plan.endpoint_id, S.STOPPED)
    registry.release_leases(plan.endpoint_id)
    ep = registry.get_endpoint(plan.endpoint_id)
    assert ep is not None and ep.status == S.STOPPED, ep.status if ep else None
    return org.id, plan.endpoint_id


def snapshot(registry: Registry, endpoint_id: str) -> dict[str, Any]:
    ep = registry.get_endpoint(endpoint_id)
    assert ep is not None
    return {"status": ep.status, "live_run": ep.live_run, "runs": len(registry.runs.of(endpoint_id)),
            "leases": registry.open_lease_count(endpoint_id), "desired": ep.desired}


def test_a_stopped_endpoint_starts_with_the_same_name_url_and_configuration(registry: Registry,
                                                                             tmp_path: Path) -> None:
    org_id, ep_id = stopped_endpoint(registry, tmp_path)
    before = registry.get_endpoint(ep_id)
    assert before is not None
    old_runs = registry.runs.of(ep_id)
    started = start_again(registry, org_id, "chat")
    assert started.id == ep_id and started.status == S.PENDING
    assert (started.name, started.served_model_name, started.backend_api_key, started.serving_config_json,
            started.checkpoint_id) == (before.name, before.served_model_name, before.backend_api_key,
                                       before.serving_config_json, before.checkpoint_id)
    assert started.desired == "serving" and started.stop_reason is None and started.healthy_at is None
    runs = registry.runs.of(ep_id)
    assert len(runs) == len(old_runs) + 1  # the earlier runs stay, as history
    live = next(r for r in runs if r.id == started.live_run)
    assert (live.role, live.purpose, live.flow_run_id) == (Role.LIVE.value, Purpose.START.value, None)
    assert live.generation == max(r.generation for r in old_runs) + 1
    assert registry.open_lease_count(ep_id) == 1  # its checkpoint is held again
    assert "started" in [ev.kind for ev in registry.activity(ep_id)]
    # What follows is the reconciler's ordinary first start: the same facts make it healthy.
    put_status(registry, ep_id, S.HEALTHY, backend_url="http://127.0.0.1:9")
    again = registry.get_endpoint(ep_id)
    assert again is not None and again.status == S.HEALTHY and again.healthy_at is not None


@pytest.mark.parametrize("status", [S.HEALTHY, S.STOPPING])
def test_a_serving_or_stopping_endpoint_is_refused_and_nothing_changes(registry: Registry, tmp_path: Path,
                                                                      status: EndpointStatus) -> None:
    org_id, ep_id = stopped_endpoint(registry, tmp_path)
    start_again(registry, org_id, "chat")
    put_status(registry, ep_id, S.HEALTHY, backend_url="http://127.0.0.1:9")
    if status == S.STOPPING:
        put_status(registry, ep_id, S.STOPPING)
    before = snapshot(registry, ep_id)
    with pytest.raises(RequestInvalid) as caught:
        start_again(registry, org_id, "chat")
    assert caught.value.codes == ["endpoint_not_stopped"] and caught.value.problems[0].field == "name"
    assert status.value in caught.value.problems[0].message
    assert snapshot(registry, ep_id) == before


def test_a_deleted_checkpoint_is_named_and_nothing_is_leased(registry: Registry, tmp_path: Path) -> None:
    org_id, ep_id = stopped_endpoint(registry, tmp_path)
    delete_checkpoint(registry, org_id, "tiny")
    before = snapshot(registry, ep_id)
    with pytest.raises(RequestInvalid) as caught:
        start_again(registry, org_id, "chat")
    problem = caught.value.problems[0]
    assert problem.field == "checkpoint" and "deleted" in problem.message.lower() + problem.code
    assert snapshot(registry, ep_id) == before and before["leases"] == 0


def test_an_unknown_endpoint_is_named(registry: Registry) -> None:
    org = registry.get_org_by_name("default")
    assert org is not None
    with pytest.raises(RequestInvalid) as caught:
        start_again(registry, org.id, "nope")
    assert caught.value.codes == ["endpoint_not_found"]


def test_a_removal_in_progress_is_not_undone(registry: Registry, tmp_path: Path) -> None:
    org_id, ep_id = stopped_endpoint(registry, tmp_path)
    registry.runs.request_stop(ep_id, remove=True)
    before = snapshot(registry, ep_id)
    with pytest.raises(RequestInvalid):
        start_again(registry, org_id, "chat")
    assert snapshot(registry, ep_id) == before


def stopped_in_console(world: World, name: str = "ep1") -> Any:  # noqa: F811
    """An endpoint created through the API that served, was stopped and released its lease."""
    world.create(name)
    world.set_status(name, S.HEALTHY, S.STOPPING, S.STOPPED)
    ep = world.registry.find_endpoint(world.org.id, name)
    assert ep is not None
    world.registry.release_leases(ep.id)
    return ep


def test_the_api_starts_a_stopped_endpoint_and_kicks_the_reconciler(world: World) -> None:  # noqa: F811
    ep = stopped_in_console(world)
    r = world.client.post("/api/v1/endpoints/ep1/start", headers=world.auth)
    assert r.status_code == 202, r.text
    assert r.json()["outcome"] == "starting" and r.json()["endpoint"]["status"] == "pending"
    assert r.json()["run_id"] == f"run-reconcile-{len(world.orchestrator.calls)}"
    assert world.orchestrator.calls[-1] == ("reconcile",)
    assert world.registry.open_lease_count(ep.id) == 1
    # again, while it starts: refused with the field, nothing submitted
    calls = len(world.orchestrator.calls)
    r = world.client.post("/api/v1/endpoints/ep1/start", headers=world.auth)
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "name"
    assert len(world.orchestrator.calls) == calls
    # another organization's key finds no such endpoint
    assert world.client.post("/api/v1/endpoints/ep1/start", headers=world.other_auth).status_code == 404


def test_the_detail_page_offers_start_for_a_stopped_endpoint(world: World) -> None:  # noqa: F811
    from tests.test_console_api import csrf_of, sign_in

    stopped_in_console(world)
    sign_in(world)
    page = world.client.get("/endpoints/ep1")
    assert 'data-action="start"' in page.text and 'data-action="stop"' not in page.text
    r = world.client.post("/endpoints/ep1/start", data={"csrf_token": csrf_of(page.text)},
                          follow_redirects=False)
    assert r.status_code in (302, 303) and r.headers["location"] == "/endpoints/ep1"
    fresh = world.registry.find_endpoint(world.org.id, "ep1")
    assert fresh is not None and fresh.status == S.PENDING
    page = world.client.get("/endpoints/ep1")
    assert 'data-action="stop"' in page.text


def test_spend_counts_engine_time_only_and_never_drops_when_an_endpoint_is_removed(world: World) -> None:  # noqa: F811
    """The organization's spend is every engine it ran (a stopped gap costs nothing) and keeps a
    removed endpoint's share; the list's total and an endpoint's own cost agree with the rows."""
    from inference_endpoints.core.cost import spend
    from inference_endpoints.persistence.models import utcnow

    ep = stopped_in_console(world)
    first = world.registry.runs.of(ep.id)[0]
    assert first.engine_started_at is not None and first.ended_at is not None and first.instance == "cpu-dev"
    # backdate the first engine's span to exactly two hours, then start it again
    hours_ago = utcnow() - timedelta(hours=10)
    with world.registry.session() as s:
        row = s.get(ServeRun, first.id)
        assert row is not None
        row.engine_started_at, row.ended_at = hours_ago, hours_ago + timedelta(hours=2)
        s.add(row)
    r = world.client.post("/api/v1/endpoints/ep1/start", headers=world.auth)
    assert r.status_code == 202
    world.set_status("ep1", S.HEALTHY)
    price = world.registry.instances()["cpu-dev"].price_per_hour
    detail = world.client.get("/api/v1/endpoints/ep1", headers=world.auth).json()
    assert 2.0 <= detail["cost"]["hours"] < 2.01  # the eight stopped hours cost nothing
    assert detail["cost"]["so_far"] == pytest.approx(detail["cost"]["hours"] * price, abs=1e-6)
    before = world.client.get("/api/v1/endpoints", headers=world.auth).json()["cost_total"]
    assert before >= round(2.0 * price, 6) - 1e-6
    world.set_status("ep1", S.STOPPING, S.STOPPED)
    world.registry.release_leases(ep.id)
    assert world.client.delete("/api/v1/endpoints/ep1", headers=world.auth).json()["outcome"] == "removed"
    after = world.client.get("/api/v1/endpoints", headers=world.auth).json()["cost_total"]
    assert after >= before and after > 0  # spend history never disappears
    runs = world.registry.runs.of(ep.id)  # the serve runs outlive the endpoint
    assert len(runs) == 2
    assert after == pytest.approx(spend([EngineSpan(r.engine_started_at, r.ended_at, price) for r in runs],
                                        utcnow()), abs=1e-5)


def test_the_api_and_the_detail_page_scale_and_show_replicas(world: World) -> None:  # noqa: F811
    from tests.test_console_api import csrf_of, sign_in

    world.create("ep1")
    world.set_status("ep1", S.HEALTHY)
    detail = world.client.get("/api/v1/endpoints/ep1", headers=world.auth).json()
    assert detail["replicas"] == {"min": 1, "max": 1, "wanted": 1, "ready": 1, "autoscaled": False,
                                  "scale_target": 4.0, "scale_down_after_s": 300}
    assert [(r["replica"], r["phase"]) for r in detail["replica_runs"]] == [(0, "ready")]
    bad = world.client.post("/api/v1/endpoints/ep1/scale", headers=world.auth,
                            json={"min_replicas": 3, "max_replicas": 2, "scale_target": 0})
    assert bad.status_code == 422
    assert {p["field"] for p in bad.json()["problems"]} == {"max_replicas", "scale_target"}
    ep = world.registry.find_endpoint(world.org.id, "ep1")
    assert ep is not None and (ep.min_replicas, ep.max_replicas) == (1, 1)  # nothing written
    ok = world.client.post("/api/v1/endpoints/ep1/scale", headers=world.auth,
                           json={"min_replicas": 1, "max_replicas": 3, "scale_target": 2})
    assert ok.status_code == 200, ok.text
    assert ok.json()["replicas"] | {} == {"min": 1, "max": 3, "wanted": 1, "ready": 1, "autoscaled": True,
                                          "scale_target": 2.0, "scale_down_after_s": 300}
    assert world.orchestrator.calls[-1] == ("reconcile",)
    assert "scaled" in [a.kind for a in world.registry.activity(ep.id)]
    sign_in(world)
    page = world.client.get("/endpoints/ep1")
    text = " ".join(page.text.split())
    assert 'id="replicas"' in text and "autoscaled 1 to 3 at 2 requests in flight per replica" in text
    assert 'data-replica="0"' in page.text
    r = world.client.post("/endpoints/ep1/scale", data={"csrf_token": csrf_of(page.text), "min_replicas": "2",
                                                        "max_replicas": "2", "scale_target": ""},
                          follow_redirects=False)
    assert r.status_code in (302, 303)
    ep = world.registry.find_endpoint(world.org.id, "ep1")
    assert ep is not None and (ep.min_replicas, ep.max_replicas, ep.scale_target) == (2, 2, 2.0)
    r = world.client.post("/endpoints/ep1/scale", data={"csrf_token": csrf_of(page.text), "min_replicas": "x"},
                          follow_redirects=True)
    assert "min_replicas must be a whole number" in r.text


def test_a_promoted_update_shows_its_new_settings_on_the_endpoint(registry: Registry, tmp_path: Path) -> None:
    """An update's candidate carries its own max context and precision; once it is live the
    endpoint shows them (as it shows the live run's configuration)."""
    from inference_endpoints.persistence.models import utcnow

    org_id, ep_id = stopped_endpoint(registry, tmp_path)
    start_again(registry, org_id, "chat")
    put_status(registry, ep_id, S.HEALTHY, backend_url="http://127.0.0.1:9")
    ep = registry.get_endpoint(ep_id)
    assert ep is not None and (ep.max_context, ep.precision) == (1024, "float32")
    cand = registry.runs.add_run(ep_id, Role.CANDIDATE, Purpose.REPLACE, expected_live=ep.live_run,
                                 config_json=ep.serving_config_json, max_context=512, precision="auto")
    assert cand is not None and (cand.max_context, cand.precision) == (512, "auto")
    assert registry.runs.get(ep.live_run or "") is not None
    registry.runs.record_submitted(cand.id, "fr-cand")
    now = utcnow()
    assert registry.runs.report(cand.id, engine_started_at=now, backend_url="http://127.0.0.1:10",
                                ready_at=now, last_seen_at=now)
    still = registry.get_endpoint(ep_id)
    assert still is not None and still.max_context == 1024  # not live yet
    assert registry.runs.promote(ep_id, cand.id)
    moved = registry.get_endpoint(ep_id)
    assert moved is not None and (moved.max_context, moved.precision, moved.live_run) == (512, "auto", cand.id)


def test_leasing_the_same_run_twice_holds_one_lease(registry: Registry, tmp_path: Path) -> None:
    """Two passes submitting one run at once (a flow's kick and the scheduled pass) lease it once,
    so the count drops to the live run's alone when the old run's lease is released."""
    org_id, ep_id = stopped_endpoint(registry, tmp_path)
    start_again(registry, org_id, "chat")
    ep = registry.get_endpoint(ep_id)
    assert ep is not None
    view = registry.checkpoint_view(org_id, ep.checkpoint_id)
    assert view is not None
    before = registry.open_lease_count(ep_id)
    registry.lease_for_candidate(ep_id, "chat", [view], "fr-candidate")
    registry.lease_for_candidate(ep_id, "chat", [view], "fr-candidate")
    assert registry.open_lease_count(ep_id) == before + 1
    assert registry.release_run_leases("fr-candidate") == 1
    registry.lease_for_candidate(ep_id, "chat", [view], "fr-other")  # another run: its own lease
    assert registry.open_lease_count(ep_id) == before + 1
