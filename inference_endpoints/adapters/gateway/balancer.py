"""Which replica gets a request: the one with the fewest requests outstanding from this gateway.

Least outstanding follows real load on LLM engines (a long generation keeps its replica
busy) where round robin does not. A replica that refused a connection is skipped for
`OUT_FOR_S` (the registry takes it out of the routes a moment later anyway), so one dead
engine costs at most one retried request per caller, not one per round.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

OUT_FOR_S = 10.0


class Balancer:
    def __init__(self) -> None:
        self.outstanding: dict[str, int] = {}
        self.out_until: dict[str, float] = {}
        self.turn = 0

    def pick(self, addresses: Sequence[str], avoid: str | None = None) -> str | None:
        """The least busy usable address; a skipped one only if nothing else is left."""
        if not addresses:
            return None
        now = time.monotonic()
        usable = [a for a in addresses if a != avoid and self.out_until.get(a, 0.0) <= now]
        pool = usable or [a for a in addresses if a != avoid]
        if not pool:
            return None
        fewest = min(self.outstanding.get(a, 0) for a in pool)
        tied = [a for a in pool if self.outstanding.get(a, 0) == fewest]
        self.turn += 1  # ties (an idle endpoint, one request at a time) take turns
        return tied[self.turn % len(tied)]

    def started(self, address: str) -> None:
        self.outstanding[address] = self.outstanding.get(address, 0) + 1

    def finished(self, address: str) -> None:
        left = self.outstanding.get(address, 0) - 1
        if left > 0:
            self.outstanding[address] = left
        else:
            self.outstanding.pop(address, None)

    def failed(self, address: str) -> None:
        """It refused or dropped a connection before answering: skip it for a while."""
        self.out_until[address] = time.monotonic() + OUT_FOR_S
