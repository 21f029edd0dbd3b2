"""Where each organization may register checkpoints from, checked before the path is looked at.

Every organization has a drop folder (`<data dir>/imports/<org>`); the default
organization also has the demo checkpoint cache; an operator adds more with
`endpoints checkpoint roots add`. A requested path is resolved (symlinks and `..`)
without being required to exist, and must then lie inside one of the org's roots.
Anything else gets one refusal that says nothing about the path: not whether it
exists, nor where a symlink leads. The platform's own data directory is never a
source, except each organization's own drop folder inside it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_endpoints.core.bounds import path_problems
from inference_endpoints.core.errors import Problem, RequestInvalid, invalid, shown
from inference_endpoints.core.validation import DNS_LABEL
from inference_endpoints.persistence.models import Organization
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.settings import DEFAULT_ORG, Settings, default_demo_dir

OUTSIDE_ROOTS = "path_outside_import_roots"
UPLOAD_ROUTE = "POST /api/v1/checkpoints/upload"


@dataclass(frozen=True)
class SourcePolicy:
    """The roots every organization has without an operator adding any, and what is off limits."""

    imports_dir: Path  # parent of the drop folders
    demo_dir: Path | None = None  # the default organization's extra root
    protected: tuple[Path, ...] = ()  # the platform's own data (registry, store, secrets)
    default_org: str = DEFAULT_ORG

    @classmethod
    def from_settings(cls, settings: Settings, store_root: Path | None = None) -> SourcePolicy:
        protected = (settings.data_dir, store_root or settings.store_root)
        return cls(settings.imports_dir, default_demo_dir(), protected)

    def drop_folder(self, org_name: str) -> Path | None:
        """`<imports_dir>/<org>`; none for a name that is not a DNS label (it must stay one folder)."""
        if not DNS_LABEL.match(org_name):
            return None
        return _real(self.imports_dir) / org_name


@dataclass(frozen=True)
class Root:
    """One import root as configured; `usable` is False when it is missing or is a symlink.

    A root is its own real path: one that is (or has come to pass through) a symlink is
    skipped rather than followed, so replacing a root by a link leads nowhere.
    """

    path: Path
    kind: str  # "drop folder", "demo cache" or "added"
    usable: bool

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "usable": self.usable}


def roots_of(registry: Registry, policy: SourcePolicy, org: Organization) -> list[Root]:
    """The organization's roots, its drop folder first (created here when missing)."""
    roots: list[Root] = []
    drop = policy.drop_folder(org.name)
    if drop is not None:
        _make_folder(drop)
        roots.append(_root(drop, "drop folder"))
    if org.name == policy.default_org and policy.demo_dir is not None:
        roots.append(_root(_real(policy.demo_dir), "demo cache"))
    roots += [_root(Path(row.path), "added") for row in registry.import_roots(org.id)]
    return roots


def check_source(registry: Registry, policy: SourcePolicy, org: Organization, requested: str) -> Path:
    """The real path of `requested` when it lies inside one of the org's usable roots.

    Raises the one `path_outside_import_roots` refusal otherwise, before anything has
    looked at whether the path exists. The caller must go on with the returned path.
    """
    usable = [root.path for root in roots_of(registry, policy, org) if root.usable]
    real = _real(Path(requested))
    inside = any(real.is_relative_to(root) for root in usable)
    drop = policy.drop_folder(org.name)
    if inside and not (drop is not None and real.is_relative_to(drop)):
        inside = not any(real.is_relative_to(_real(p)) for p in policy.protected)
    if not inside:
        raise RequestInvalid([outside_roots(org.name, usable)])
    return real


def outside_roots(org_name: str, roots: list[Path]) -> Problem:
    """The refusal: the same words for every path outside, naming only the org's own roots."""
    where = ", ".join(str(root) for root in roots) or "none yet"
    return Problem(
        OUTSIDE_ROOTS, "path",
        f"Organization {org_name!r} registers checkpoints only from inside its import roots ({where}).",
        f"Copy the checkpoint into one of them, or upload it ({UPLOAD_ROUTE}); an operator adds a "
        f"root with `endpoints checkpoint roots add PATH --org {org_name}`.")


def add_root(registry: Registry, policy: SourcePolicy, org: Organization, path: str) -> tuple[Path, bool]:
    """Record an existing directory (by its real path) as a root of `org`; returns it and
    whether it is new. The platform's data directory cannot be one."""
    problems = path_problems(path)
    if problems:
        raise RequestInvalid(problems)
    real = _real(Path(path))
    if not real.is_dir():
        raise invalid("root_not_a_directory", "path", f"{shown(str(real))} is not a directory.",
                      "Create the directory first, then add it.")
    for protected in policy.protected:
        if real.is_relative_to(_real(protected)):
            drop = policy.drop_folder(org.name)
            raise invalid("root_not_allowed", "path",
                          f"{shown(str(real))} is inside the platform's own data directory.",
                          f"The organization's drop folder ({drop}) is already a root; put checkpoints "
                          "there, or add a directory outside the data directory.")
    _row, created = registry.add_import_root(org.id, str(real))
    return real, created


def remove_root(registry: Registry, org: Organization, path: str) -> int:
    """Forget an added root of `org` (given as added, or by a path resolving to it)."""
    problems = path_problems(path)
    if problems:
        raise RequestInvalid(problems)
    removed = registry.remove_import_root(org.id, sorted({path, str(_real(Path(path)))}))
    if not removed:
        raise invalid("root_not_found", "path", f"{shown(path)} is not an added import root of {org.name!r}.",
                      f"List them with `endpoints checkpoint roots list --org {org.name}`; the drop "
                      "folder and the demo cache are always roots and cannot be removed.")
    return removed


def _root(path: Path, kind: str) -> Root:
    return Root(path, kind, _real(path) == path and path.is_dir())


def _real(path: Path) -> Path:
    """Absolute, with symlinks and `..` resolved as far as the path exists (it need not)."""
    return Path(os.path.realpath(path))


def _make_folder(path: Path) -> None:
    # A file or a dangling link in its place: the root is simply not usable.
    with contextlib.suppress(OSError):
        path.mkdir(parents=True, exist_ok=True)
