"""The replica counts and autoscaling settings a user may ask for, checked before anything is written."""

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


MAX_SCALE_TARGET = 1024.0
MAX_SCALE_DOWN_AFTER_S = 86_400


def scaling_problems(target: Any, down_after_s: Any) -> list[Problem]:
    """The autoscaler's settings: a positive load target per replica, a cooldown up to a day."""
    problems: list[Problem] = []
    if target is not None and (isinstance(target, bool) or not isinstance(target, int | float)
                               or not 0 < target <= MAX_SCALE_TARGET):
        problems.append(Problem("invalid_scale_target", "scale_target",
                                f"scale_target must be a number of requests in flight per replica "
                                f"above 0 and at most {MAX_SCALE_TARGET:g}, got {str(target)[:40]!r}.",
                                "Use --scale-target 4 (the default), or the concurrency one replica "
                                "serves well."))
    if down_after_s is not None and (isinstance(down_after_s, bool) or not isinstance(down_after_s, int)
                                     or not 0 <= down_after_s <= MAX_SCALE_DOWN_AFTER_S):
        problems.append(Problem("invalid_scale_down_after", "scale_down_after_s",
                                f"scale_down_after_s must be whole seconds from 0 to "
                                f"{MAX_SCALE_DOWN_AFTER_S}, got {str(down_after_s)[:40]!r}.",
                                "Use --scale-down-after-s 300 (the default)."))
    return problems
