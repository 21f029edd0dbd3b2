"""Replica bounds at create time, from the REST API and the console's create form: recorded with
the endpoint (the reconciler fills the slots), every bad count named and nothing written."""

from __future__ import annotations

from typing import Any

import pytest

from tests import test_console_api
from tests.test_console_api import World, csrf_of, sign_in

world = test_console_api.world  # the same fixture: a console on a real SQLite registry


def _body(**fields: Any) -> dict[str, Any]:
    return {"name": "twin", "checkpoint": "tiny", "instance": "cpu-dev", "max_context": 1024,
            "precision": "float32", **fields}


def test_api_create_records_the_bounds_and_passes_them_to_the_flow(world: World) -> None:
    r = world.client.post("/api/v1/endpoints", json=_body(min_replicas=2, max_replicas=3, scale_target=2),
                          headers=world.auth)
    assert r.status_code == 202, r.text
    assert r.json()["replicas"]["min"] == 2 and r.json()["replicas"]["max"] == 3
    ep = world.registry.find_endpoint(world.org.id, "twin")
    assert ep is not None and (ep.min_replicas, ep.max_replicas, ep.scale_target) == (2, 3, 2)
    (kind, params, _), = world.orchestrator.calls
    assert kind == "create" and (params["min_replicas"], params["max_replicas"]) == (2, 3)
    assert params["scale_target"] == 2 and params["scale_down_after_s"] is None


def test_api_create_defaults_to_one_replica(world: World) -> None:
    world.create("single")
    ep = world.registry.find_endpoint(world.org.id, "single")
    assert ep is not None and (ep.min_replicas, ep.max_replicas) == (1, 1)
    assert "min_replicas" not in world.orchestrator.calls[0][1]


@pytest.mark.parametrize(("fields", "field_name"), [
    ({"min_replicas": 0}, "min_replicas"),
    ({"min_replicas": "two"}, "min_replicas"),
    ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"),
    ({"max_replicas": 9}, "max_replicas"),
    ({"scale_target": 0}, "scale_target"),
    ({"scale_down_after_s": -1}, "scale_down_after_s"),
])
def test_bad_counts_are_named_and_nothing_is_written(world: World, fields: dict[str, Any],
                                                     field_name: str) -> None:
    before = world.registry.counts()
    r = world.client.post("/api/v1/endpoints", json=_body(**fields), headers=world.auth)
    assert r.status_code == 422, r.text
    assert field_name in {p["field"] for p in r.json()["problems"]}
    assert world.registry.counts() == before and world.orchestrator.calls == []


def test_the_create_form_takes_replica_bounds(world: World) -> None:
    token = sign_in(world)
    page = world.client.get("/endpoints/new").text
    assert 'name="min_replicas"' in page and 'name="max_replicas"' in page
    ckpt = world.registry.find_checkpoint(world.org.id, "tiny")
    assert ckpt is not None
    form = {"csrf_token": token, "name": "pair", "checkpoint": ckpt.id, "instance": "cpu-dev",
            "max_context": "1024", "precision": "float32", "quantization": "none", "idle_stop_minutes": ""}
    bad = world.client.post("/endpoints/new", data={**form, "min_replicas": "3", "max_replicas": "2"},
                            follow_redirects=False)
    assert bad.status_code == 422 and 'id="error-max_replicas"' in bad.text
    assert "below min_replicas" in bad.text and "Use max replicas 3 or more" in bad.text
    assert world.registry.find_endpoint(world.org.id, "pair") is None
    check = world.client.post("/endpoints/new/validate", data={**form, "min_replicas": "0"})
    assert "invalid_replicas" in check.text
    good = world.client.post("/endpoints/new", data={**form, "min_replicas": "2", "max_replicas": "2"},
                             follow_redirects=False)
    assert good.status_code == 303, good.text
    ep = world.registry.find_endpoint(world.org.id, "pair")
    assert ep is not None and (ep.min_replicas, ep.max_replicas) == (2, 2)
    assert csrf_of(world.client.get("/endpoints/pair").text)


def test_the_form_and_the_detail_page_state_the_cost_per_hour_and_month(world: World) -> None:
    token = sign_in(world)
    ckpt = world.registry.find_checkpoint(world.org.id, "tiny")
    assert ckpt is not None
    form = {"csrf_token": token, "name": "pair", "checkpoint": ckpt.id, "instance": "cpu-dev",
            "max_context": "1024", "precision": "float32", "quantization": "none", "idle_stop_minutes": ""}
    one = world.client.post("/endpoints/new/validate", data={**form, "min_replicas": "1"}).text
    assert "$0.0500/h" in one and "$36.50/month" in one  # cpu-dev: $0.05/h x 730 h
    autoscaled = world.client.post("/endpoints/new/validate",
                                   data={**form, "min_replicas": "2", "max_replicas": "4"}).text
    assert "$0.1000/h" in autoscaled and "$73.00/month" in autoscaled
    assert "up to $0.2000/h ($146.00/month) at 4 replicas" in autoscaled
    world.create("priced", min_replicas=2)
    detail = world.client.get("/endpoints/priced").text
    assert "$0.1000/h," in detail and "$73.00/month" in detail and "2 replicas" in detail


@pytest.mark.parametrize(("precision", "max_context", "instance", "expected"), [
    ("float32", "1024", "cpu-dev", "cpu-dev is the cheapest instance that fits."),
    ("float32", "1024", "a100-80gb", "Use the cheapest instance that fits: cpu-dev ($0.0500/h)"),
    ("float16", "1024", "cpu-dev", "Use the cheapest instance that fits: t4-16gb ($0.5300/h)"),
    ("bfloat16", "1024", "cpu-dev", "Use the cheapest instance that fits: l4-24gb ($0.8000/h)"),  # no bf16 on a T4
    ("float32", "999999", "cpu-dev", "No instance in the catalog fits"),  # past the model's positions
])
def test_the_fit_panel_offers_the_cheapest_instance_that_fits(world: World, precision: str,
                                                              max_context: str, instance: str,
                                                              expected: str) -> None:
    token = sign_in(world)
    ckpt = world.registry.find_checkpoint(world.org.id, "tiny")
    assert ckpt is not None
    html = world.client.post("/endpoints/new/validate", data={
        "csrf_token": token, "name": "pick", "checkpoint": ckpt.id, "instance": instance,
        "max_context": max_context, "precision": precision, "quantization": "none"}).text
    assert 'id="cheapest-fit"' in html and expected in html, html


def test_no_cheapest_offer_before_the_request_can_be_checked(world: World) -> None:
    token = sign_in(world)
    html = world.client.post("/endpoints/new/validate", data={
        "csrf_token": token, "name": "pick", "checkpoint": "", "instance": "cpu-dev",
        "max_context": "1024", "precision": "float32", "quantization": "none"}).text
    assert 'id="cheapest-fit"' not in html
