"""Organizations and their API keys: the registry's tenancy aggregate.

Only a key's hash is stored; the key itself is shown once, when it is made.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlmodel import Session, col, select

from inference_endpoints.core.errors import invalid
from inference_endpoints.persistence.models import ApiKey, Organization, utcnow

KEY_PREFIX = "ie"


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so a fast hash is enough (no dictionary to attack).
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    secret: str  # shown once, never stored


class OrgsAndKeys:
    """Mixed into `Registry`; `session` is its short-transaction factory."""

    session: Callable[[], AbstractContextManager[Session]]

    def create_org(self, name: str) -> tuple[Organization, NewKey]:
        with self.session() as s:
            if s.exec(select(Organization).where(Organization.name == name)).first():
                raise invalid(
                    "org_exists", "name", f"Organization {name!r} already exists.",
                    "Pick another name.",
                )
            org = Organization(name=name)
            s.add(org)
            s.flush()
            new = self._new_key(s, org.id, "default")
        return org, new

    def get_org_by_name(self, name: str) -> Organization | None:
        with self.session() as s:
            return s.exec(select(Organization).where(Organization.name == name)).first()

    def get_org(self, org_id: str) -> Organization | None:
        with self.session() as s:
            return s.get(Organization, org_id)

    def _new_key(self, s: Session, org_id: str, name: str) -> NewKey:
        prefix = secrets.token_hex(4)
        secret = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
        row = ApiKey(org_id=org_id, name=name, prefix=f"{KEY_PREFIX}_{prefix}",
                     key_hash=hash_key(secret))
        s.add(row)
        s.flush()
        return NewKey(row, secret)

    def create_key(self, org_id: str, name: str) -> NewKey:
        with self.session() as s:
            return self._new_key(s, org_id, name)

    def list_keys(self, org_id: str) -> list[ApiKey]:
        with self.session() as s:
            q = select(ApiKey).where(ApiKey.org_id == org_id).order_by(col(ApiKey.created_at))
            return list(s.exec(q))

    def revoke_key(self, org_id: str, key_ref: str) -> ApiKey:
        with self.session() as s:
            q = select(ApiKey).where(
                ApiKey.org_id == org_id, (ApiKey.id == key_ref) | (ApiKey.prefix == key_ref)
            )
            row = s.exec(q).first()
            if row is None:
                raise invalid("key_not_found", "key", f"No API key {key_ref!r}.",
                              "List keys with `endpoints key list`.")
            row.revoked_at = row.revoked_at or utcnow()
            s.add(row)
            return row

    def org_for_key(self, secret: str) -> Organization | None:
        """The organization a presented key belongs to, or None if unknown or revoked."""
        with self.session() as s:
            row = s.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(secret))).first()
            if row is None or row.revoked_at is not None:
                return None
            return s.get(Organization, row.org_id)
