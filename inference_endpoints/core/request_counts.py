"""What a request, a rejection and an error are: one definition for the list, overview, charts and CLI.

Every answer the gateway gives is counted under its status class. An *error* is our failure to
serve: a 5xx answer (backend down, not ready, backend 5xx) or a 2xx stream the backend broke
off. A 4xx is a *rejection* of the caller's request (bad key, unknown model, bad body): shown
apart, never counted as an error, so "0 errors" and the error-rate chart always agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

STATUS_CLASSES = ("2xx", "4xx", "5xx")


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def is_error(status: int, broken_off: bool = False) -> bool:
    """A 5xx, or a response the backend broke off mid-stream (its status was already sent)."""
    return broken_off or status >= 500


@dataclass(frozen=True)
class RequestCounts:
    """Counts since the gateway started, by status class, plus the 2xx streams broken off."""

    by_class: Mapping[str, int] = field(default_factory=dict)
    broken_streams: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_class.values())

    @property
    def rejected(self) -> int:
        return self.by_class.get("4xx", 0)

    @property
    def errors(self) -> int:
        return self.by_class.get("5xx", 0) + self.broken_streams

    @property
    def ok(self) -> int:
        return self.total - self.rejected - self.errors

    def summary(self) -> str:
        """e.g. '76 requests: 51 ok, 25 rejected (4xx), 0 errors (5xx or broken off)'."""
        return (f"{self.total} request{'s' if self.total != 1 else ''}: {self.ok} ok, "
                f"{self.rejected} rejected (4xx), {self.errors} error{'s' if self.errors != 1 else ''} "
                "(5xx or broken off)")

    def as_dict(self) -> dict[str, int]:
        """The stable JSON shape (API, CLI --json): each class, and the derived counts."""
        return {**{k: self.by_class.get(k, 0) for k in STATUS_CLASSES},
                "broken_streams": self.broken_streams, "ok": self.ok, "rejected": self.rejected,
                "errors": self.errors}


class Counted:
    """`requests` and `errors` of anything that carries `counts` (the gateway's stats rows, the
    console's traffic), so each reads them through this one definition."""

    counts: RequestCounts

    @property
    def requests(self) -> int:
        return self.counts.total

    @property
    def errors(self) -> int:
        """5xx answers and broken-off streams; 4xx are `counts.rejected`."""
        return self.counts.errors
