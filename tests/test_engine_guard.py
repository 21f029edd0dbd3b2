"""The engine guard vLLM loads as middleware: every route needs the engine's key but /health and /metrics.

Loaded the way vLLM's `--middleware ie_engine_guard.EngineGuard` loads it (import by name
from the guard's directory on sys.path), around a real FastAPI app with routes named like
vLLM's own (the real engine is checked in tests/e2e/test_serve.py and test_docker_e2e.py).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from inference_endpoints.adapters.runtime.engine_guard import GUARD_DIR, GUARD_MIDDLEWARE

KEY = "be_engine_key"
ROUTES = ["/invocations", "/tokenize", "/detokenize", "/scale_elastic_ep", "/v1/completions",
          "/pooling", "/docs", "/openapi.json", "/version", "/load"]


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FastAPI, list[str]]]:
    monkeypatch.syspath_prepend(str(GUARD_DIR))
    sys.modules.pop("ie_engine_guard", None)
    module_name, _, class_name = GUARD_MIDDLEWARE[1].rpartition(".")
    guard = getattr(importlib.import_module(module_name), class_name)
    app = FastAPI()
    bodies_read: list[str] = []

    async def generate(request: Request) -> dict[str, Any]:
        bodies_read.append((await request.body()).decode())
        return {"text": "a generation"}

    for path in ROUTES:
        app.add_api_route(path + "x" if path in ("/docs", "/openapi.json") else path, generate,
                          methods=["GET", "POST"])
    app.add_api_route("/health", lambda: {"ok": True}, methods=["GET"])
    app.add_api_route("/metrics", lambda: "vllm:num_requests_running 0", methods=["GET"])
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    app.add_middleware(guard)
    yield app, bodies_read
    sys.modules.pop("ie_engine_guard", None)


async def _call(app: FastAPI, method: str, path: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://engine") as c:
        return await c.request(method, path, headers=headers, content=b'{"prompt": "hi"}')


@pytest.mark.anyio
@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("key", [None, "wrong", f"{KEY}x", ""])
async def test_every_route_refuses_a_caller_without_the_key(guarded: tuple[FastAPI, list[str]],
                                                            path: str, key: str | None) -> None:
    app, bodies_read = guarded
    for method in ("GET", "POST"):
        answer = await _call(app, method, path, key)
        assert answer.status_code == 401, (method, path, answer.status_code, answer.text)
        assert "generation" not in answer.text
    assert bodies_read == [], "the body was read before the refusal"


@pytest.mark.anyio
async def test_the_key_opens_every_route_and_probes_stay_open(guarded: tuple[FastAPI, list[str]]) -> None:
    app, bodies_read = guarded
    answer = await _call(app, "POST", "/invocations", KEY)
    assert answer.status_code == 200 and answer.json() == {"text": "a generation"}
    assert bodies_read == ['{"prompt": "hi"}']
    for path in ("/health", "/metrics"):
        assert (await _call(app, "GET", path, None)).status_code == 200, path
    assert (await _call(app, "POST", "/health", None)).status_code == 401  # only GET is a probe


@pytest.mark.anyio
async def test_without_a_key_configured_it_fails_closed(monkeypatch: pytest.MonkeyPatch,
                                                        guarded: tuple[FastAPI, list[str]]) -> None:
    app, _ = guarded
    monkeypatch.setenv("VLLM_API_KEY", "")
    app.middleware_stack = None  # rebuilt on the next call: the guard reads the key at start
    assert (await _call(app, "POST", "/invocations", "")).status_code == 401
    assert (await _call(app, "POST", "/invocations", "anything")).status_code == 401
    assert (await _call(app, "GET", "/health", None)).status_code == 200
