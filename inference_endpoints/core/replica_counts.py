"""The replica counts a user may ask for, checked before anything is written."""

from __future__ import annotations

from typing import Any

from inference_endpoints.core.errors import Problem

MAX_REPLICAS = 8  # per endpoint; a pool's concurrency limit may hold fewer (they queue)


def replica_problems(min_replicas: Any, max_replicas: Any) -> list[Problem]:
    """Each bad field named, with how to fix it; none when the counts can be served."""
    problems: list[Problem] = []
    counts: dict[str, int] = {}
    for field, value in (("min_replicas", min_replicas), ("max_replicas", max_replicas)):
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(Problem("invalid_replicas", field, f"{field} must be a whole number, "
                                    f"got {str(value)[:40]!r}.", f"Use --{field.replace('_', '-')} N."))
            continue
        counts[field] = value
    low, high = counts.get("min_replicas"), counts.get("max_replicas")
    if low is not None and low < 1:
        problems.append(Problem("invalid_replicas", "min_replicas",
                                f"min_replicas must be at least 1, got {low}: scaling to zero is not "
                                "supported yet.", "Use --min-replicas 1 (or more)."))
    if high is not None and not 1 <= high <= MAX_REPLICAS:
        problems.append(Problem("invalid_replicas", "max_replicas",
                                f"max_replicas must be between 1 and {MAX_REPLICAS}, got {high}.",
                                f"Use --max-replicas between 1 and {MAX_REPLICAS}."))
    if low is not None and high is not None and low >= 1 and 1 <= high <= MAX_REPLICAS and low > high:
        problems.append(Problem("invalid_replicas", "max_replicas",
                                f"max_replicas ({high}) is below min_replicas ({low}).",
                                f"Use --max-replicas {low} or more, or a smaller --min-replicas."))
    return problems
