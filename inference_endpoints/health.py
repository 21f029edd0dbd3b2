"""Probing a backend: is it serving, still loading, or gone?"""

from __future__ import annotations

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
