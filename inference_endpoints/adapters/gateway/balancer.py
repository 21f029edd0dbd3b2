"""Which replica gets a request: the one with the fewest requests outstanding from this gateway.

Least outstanding follows real load on LLM engines (a long generation keeps its replica
busy) where round robin does not. A replica that refused a connection is skipped for
`OUT_FOR_S` (the registry takes it out of the routes a moment later anyway), so one dead
engine costs at most one retried request per caller, not one per round.

With prefix affinity (opt-in, `IE_GATEWAY_PREFIX_AFFINITY=1`) a request whose prompt starts
like an earlier one goes to the same replica, so vLLM's prefix cache serves the shared start,
while that replica has at most `AFFINITY_SLACK` more requests outstanding than the least busy
one. The replica is chosen by rendezvous hashing: a replica joining or leaving moves only the
prefixes that were, or become, its own.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence

OUT_FOR_S = 10.0
AFFINITY_SLACK = 2
PREFIX_CHARS = 512  # the start of a prompt that picks its replica (system prompt, first turns)


def prompt_prefix(body: bytes | None) -> bytes | None:
    """What a request's replica is chosen by: its model and the start of its messages or prompt.
    None for anything else (no body, not JSON, no prompt): those go to the least busy."""
    if not body or body[:1] != b"{":
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    source = doc.get("messages", doc.get("prompt"))
    if not source:
        return None
    text = json.dumps(source, ensure_ascii=False, separators=(",", ":"))[:PREFIX_CHARS]
    return f"{doc.get('model', '')}\n{text}".encode()


def _weight(key: bytes, address: str) -> bytes:
    return hashlib.blake2b(key + b"\0" + address.encode(), digest_size=8).digest()


def preferred(addresses: Sequence[str], key: bytes) -> str:
    """The rendezvous choice for `key` among `addresses` (non-empty)."""
    return max(addresses, key=lambda a: _weight(key, a))


class Balancer:
    def __init__(self) -> None:
        self.outstanding: dict[str, int] = {}
        self.out_until: dict[str, float] = {}
        self.turn = 0

    def pick(self, addresses: Sequence[str], avoid: str | None = None,
             affinity: bytes | None = None) -> str | None:
        """The least busy usable address (or the prefix's own, see the module); a skipped one
        only if nothing else is left."""
        if not addresses:
            return None
        now = time.monotonic()
        usable = [a for a in addresses if a != avoid and self.out_until.get(a, 0.0) <= now]
        pool = usable or [a for a in addresses if a != avoid]
        if not pool:
            return None
        fewest = min(self.outstanding.get(a, 0) for a in pool)
        if affinity is not None and len(pool) > 1:
            own = preferred(pool, affinity)
            if self.outstanding.get(own, 0) <= fewest + AFFINITY_SLACK:
                return own
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
