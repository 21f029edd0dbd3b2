"""Import roots as rows: the extra directories an operator lets an organization register from.

Only storage lives here; what counts as a root, and the check against it, are in
`services/import_roots.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlmodel import Session, col, select

from inference_endpoints.persistence.models import ImportRoot


class ImportRoots:
    """Mixed into `Registry`; `session` is its short-transaction factory."""

    session: Callable[[], AbstractContextManager[Session]]

    def import_roots(self, org_id: str) -> list[ImportRoot]:
        with self.session() as s:
            q = select(ImportRoot).where(ImportRoot.org_id == org_id).order_by(col(ImportRoot.path))
            return list(s.exec(q))

    def add_import_root(self, org_id: str, path: str) -> tuple[ImportRoot, bool]:
        """The org's row for `path`, and whether this call added it (adding twice is a no-op)."""
        with self.session() as s:
            q = select(ImportRoot).where(ImportRoot.org_id == org_id, ImportRoot.path == path)
            existing = s.exec(q).first()
            if existing is not None:
                return existing, False
            row = ImportRoot(org_id=org_id, path=path)
            s.add(row)
            return row, True

    def remove_import_root(self, org_id: str, paths: list[str]) -> int:
        """Delete the org's rows for any of `paths`; returns how many went."""
        with self.session() as s:
            q = select(ImportRoot).where(ImportRoot.org_id == org_id, col(ImportRoot.path).in_(paths))
            rows = list(s.exec(q))
            for row in rows:
                s.delete(row)
            return len(rows)
