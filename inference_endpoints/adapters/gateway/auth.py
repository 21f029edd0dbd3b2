"""Who may call which endpoint. Pure: decided against the in-memory route table.

Order matters for privacy: a missing or unknown key is 401 before anything is
looked up, and "exists in another org" is indistinguishable from "does not exist"
(both 404 with the same body).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from inference_endpoints.adapters.gateway.resolver import Route, RouteTable
from inference_endpoints.adapters.gateway.routing import Target
from inference_endpoints.persistence.registry import hash_key


class Verdict(Enum):
    MISSING_KEY = "missing_key"  # 401
    INVALID_KEY = "invalid_key"  # 401: unknown or revoked
    NOT_FOUND = "not_found"  # 404: no such endpoint, or another org's
    NOT_READY = "not_ready"  # 503 (+ Retry-After unless terminal)
    ALLOW = "allow"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    route: Route | None = None  # set whenever the endpoint exists (for accounting)


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() != b"bearer":
                return None
            token = token.strip()
            return token.decode("latin-1") if token else None
    return None


def authorize(table: RouteTable, target: Target, token: str | None) -> Decision:
    route = table.routes.get((target.org, target.endpoint))
    if token is None:
        return Decision(Verdict.MISSING_KEY, route)
    org_id = table.key_orgs.get(hash_key(token))
    if org_id is None:
        return Decision(Verdict.INVALID_KEY, route)
    if route is None or route.org_id != org_id:
        return Decision(Verdict.NOT_FOUND, route)
    if not route.routable:
        return Decision(Verdict.NOT_READY, route)
    return Decision(Verdict.ALLOW, route)
