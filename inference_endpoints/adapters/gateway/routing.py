"""Where a request is going, from its Host header or its `/e/<org>/<endpoint>` path. Pure.

Host form: `<endpoint>.<org>.<base domain>[:port]`. Path form (for clients without
DNS): `/e/<org>/<endpoint>/<rest>` on any other host. Names are DNS labels, so they
are compared lowercased. Anything else is addressed to the gateway itself.
"""

from __future__ import annotations

from dataclasses import dataclass

PATH_PREFIX = b"/e/"


@dataclass(frozen=True, slots=True)
class Target:
    """An endpoint request: which endpoint, and the path and query to send upstream."""

    org: str
    endpoint: str
    path: bytes  # raw, still percent-encoded; always starts with "/"
    query: bytes = b""

    @property
    def upstream_path(self) -> bytes:
        return self.path + b"?" + self.query if self.query else self.path


def host_of(headers: list[tuple[bytes, bytes]]) -> bytes:
    for name, value in headers:
        if name == b"host":
            return value
    return b""


def split_host(host: bytes, base_domain: str) -> tuple[str, str] | None:
    """(org, endpoint) when `host` is an endpoint host, else None.

    A host under the base domain with the wrong number of labels still names an
    endpoint (one that cannot exist), so it maps to ("", "") and gets a 404.
    """
    name = host.decode("latin-1").lower()
    if name.startswith("["):  # IPv6 literal: never an endpoint host
        return None
    name = name.rsplit(":", 1)[0] if ":" in name else name
    name = name.rstrip(".")
    suffix = "." + base_domain
    if not name.endswith(suffix):
        return None
    labels = name[: -len(suffix)].split(".")
    if len(labels) != 2 or not all(labels):
        return ("", "")
    return labels[1], labels[0]


def split_path(raw_path: bytes) -> tuple[str, str, bytes] | None:
    """(org, endpoint, upstream path) for `/e/<org>/<endpoint>[/rest]`, else None."""
    if not raw_path.startswith(PATH_PREFIX):
        return None
    parts = raw_path[len(PATH_PREFIX):].split(b"/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return ("", "", b"/") if parts[0] else None
    rest = b"/" + parts[2] if len(parts) == 3 else b"/"
    return parts[0].decode("latin-1").lower(), parts[1].decode("latin-1").lower(), rest


def route(host: bytes, raw_path: bytes, query: bytes, base_domain: str) -> Target | None:
    """The endpoint a request addresses, or None when it is for the gateway itself."""
    by_host = split_host(host, base_domain)
    if by_host is not None:
        return Target(by_host[0], by_host[1], raw_path or b"/", query)
    by_path = split_path(raw_path)
    if by_path is not None:
        return Target(by_path[0], by_path[1], by_path[2], query)
    return None
