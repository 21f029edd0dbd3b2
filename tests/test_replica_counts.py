"""Replica counts as a table: each bad value names its field and how to fix it."""

from __future__ import annotations

import pytest

from inference_endpoints.core.replica_counts import MAX_REPLICAS, replica_problems


@pytest.mark.parametrize(("low", "high", "expected"), [
    (1, 1, []),
    (2, 4, []),
    (MAX_REPLICAS, MAX_REPLICAS, []),
    (0, 1, [("min_replicas", "scaling to zero is not supported yet")]),
    (1, 0, [("max_replicas", "between 1 and 8")]),
    (1, MAX_REPLICAS + 1, [("max_replicas", "between 1 and 8")]),
    (3, 2, [("max_replicas", "below min_replicas (3)")]),
    ("two", 2, [("min_replicas", "whole number")]),
    (True, 2, [("min_replicas", "whole number")]),
    (-1, 99, [("min_replicas", "at least 1"), ("max_replicas", "between 1 and 8")]),
])
def test_replica_counts(low: object, high: object, expected: list[tuple[str, str]]) -> None:
    problems = replica_problems(low, high)
    assert [(p.field, p.code) for p in problems] == [(f, "invalid_replicas") for f, _ in expected]
    for problem, (_, text) in zip(problems, expected, strict=True):
        assert text in problem.message and problem.hint.startswith("Use --")
