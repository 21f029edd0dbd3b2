"""The gateway's replica choice: least outstanding, and prefix affinity (opt-in), as tables."""

from __future__ import annotations

import json

import pytest

from inference_endpoints.adapters.gateway.balancer import (
    AFFINITY_SLACK,
    PREFIX_CHARS,
    Balancer,
    preferred,
    prompt_prefix,
)

A, B, C = "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"


def body(**doc: object) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("raw", "same_as"), [
    (body(model="m", messages=[{"role": "system", "content": "You are terse."},
                               {"role": "user", "content": "hi"}]), "chat"),
    (body(model="m", prompt="Once upon a time"), "completion"),
])
def test_the_prefix_is_the_model_and_the_prompts_start(raw: bytes, same_as: str) -> None:
    key = prompt_prefix(raw)
    assert key is not None and key.startswith(b"m\n")
    assert prompt_prefix(raw) == key  # stable


def test_prompts_that_share_their_start_share_a_key() -> None:
    system = "S" * PREFIX_CHARS
    one = body(model="m", messages=[{"role": "system", "content": system}, {"role": "user", "content": "a"}])
    two = body(model="m", messages=[{"role": "system", "content": system}, {"role": "user", "content": "b"}])
    assert prompt_prefix(one) == prompt_prefix(two)
    assert prompt_prefix(body(model="other", prompt="x")) != prompt_prefix(body(model="m", prompt="x"))


@pytest.mark.parametrize("raw", [None, b"", b"not json", b"[1, 2]", body(model="m"), body(prompt=""),
                                 b"{broken"])
def test_no_prompt_no_key(raw: bytes | None) -> None:
    assert prompt_prefix(raw) is None


def test_least_outstanding_without_affinity() -> None:
    b = Balancer()
    b.started(A)
    b.started(A)
    b.started(B)
    assert b.pick([A, B, C]) == C
    b.started(C)
    b.started(C)
    assert b.pick([A, B, C]) == B


def test_a_prefix_keeps_its_replica_while_it_is_not_overloaded() -> None:
    b = Balancer()
    key = prompt_prefix(body(model="m", prompt="shared system prompt"))
    assert key is not None
    own = preferred([A, B, C], key)
    assert all(b.pick([A, B, C], affinity=key) == own for _ in range(10))
    for _ in range(AFFINITY_SLACK):
        b.started(own)
    assert b.pick([A, B, C], affinity=key) == own  # up to the slack: still its own
    b.started(own)
    assert b.pick([A, B, C], affinity=key) != own  # past it: the least busy instead


def test_a_failed_or_avoided_replica_is_not_chosen_for_its_prefix() -> None:
    b = Balancer()
    key = prompt_prefix(body(model="m", prompt="p"))
    assert key is not None
    own = preferred([A, B], key)
    other = B if own == A else A
    assert b.pick([A, B], avoid=own, affinity=key) == other
    b.failed(own)
    assert b.pick([A, B], affinity=key) == other


def test_a_replica_leaving_moves_only_its_own_prefixes() -> None:
    keys = [f"m\nprompt {i}".encode() for i in range(200)]
    before = {k: preferred([A, B, C], k) for k in keys}
    after = {k: preferred([A, B], k) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == C for k in moved)
    assert {before[k] for k in keys} == {A, B, C}  # spread over all three
