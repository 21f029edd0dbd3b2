"""The REST API answers 401 before it reads a body, and refuses bodies over its limit.

Generated from the app's own route list, so a route added later is covered without
editing this file. Every `/api/v1` route needs a key: PUBLIC names the exceptions (none).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.test_console_api import World
from tests.test_console_api import world as world  # the console test world: real SQLite registry

PUBLIC: set[tuple[str, str]] = set()
GARBAGE = b"{" + b"x" * (2 * 1024 * 1024)  # over the limit, and not JSON either


def api_routes(w: World) -> list[tuple[str, str]]:
    """Every (method, path) of the API, from the app's own OpenAPI document."""
    routes = []
    for path, methods in w.client.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        if path.startswith("/api/v1/"):
            concrete = path.replace("{", "").replace("}", "")  # e.g. /api/v1/endpoints/name
            routes += [(method.upper(), concrete) for method in sorted(methods)]
    return routes


def test_every_api_route_refuses_a_caller_without_a_key_before_reading_its_body(world: World) -> None:
    routes = api_routes(world)
    assert len(routes) >= 10, routes  # the list really is the API's
    before = world.registry.counts()
    for method, path in routes:
        if (method, path) in PUBLIC:
            continue
        for headers in ({}, {"Authorization": "Bearer ie_not_a_key"}, {"Authorization": "Basic x"}):
            answer = world.client.request(method, path, content=GARBAGE,
                                          headers={**headers, "content-type": "application/json"})
            assert answer.status_code == 401, (method, path, headers, answer.status_code, answer.text[:200])
            assert answer.json()["problems"][0]["code"] == "unauthorized"
            assert answer.headers["www-authenticate"] == "Bearer"
    assert world.registry.counts() == before


def test_a_body_over_the_limit_is_refused_declared_or_streamed(world: World) -> None:
    before = world.registry.counts()
    declared = world.client.post("/api/v1/endpoints", content=GARBAGE, headers={
        **world.auth, "content-type": "application/json"})
    assert declared.status_code == 413, declared.text[:200]
    assert declared.json()["problems"][0]["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        for _ in range(40):
            yield b"x" * 65536

    streamed = world.client.post("/api/v1/endpoints", content=chunks(), headers={
        **world.auth, "content-type": "application/json"})
    assert streamed.status_code == 413, streamed.text[:200]
    assert world.registry.counts() == before
    # Under the limit, the same route still works.
    assert world.create("small")["name"] == "small"


@pytest.mark.parametrize("size", [10_000_000])
def test_a_huge_name_is_named_and_not_echoed(world: World, size: int) -> None:
    """A big body is refused by size; a name just under the body limit is quoted short."""
    name = "n" * (900 * 1024)
    answer = world.client.post("/api/v1/endpoints", headers=world.auth, json={
        "name": name, "checkpoint": "tiny", "instance": "cpu-dev", "max_context": 1024})
    assert answer.status_code == 422
    assert len(answer.content) < 10_000, len(answer.content)
    assert answer.json()["problems"][0]["field"] == "name"
    huge = world.client.post("/api/v1/endpoints", headers=world.auth, json={"name": "n" * size})
    assert huge.status_code == 413
