"""Import roots in unit tests: a source policy under the test's directory, and roots added the CLI's way.

A test that registers from its own temporary directory first makes that directory an
import root of the organization through `add_root` (what `endpoints checkpoint roots
add` calls), so the check it goes through is the real one.
"""

from __future__ import annotations

from pathlib import Path

from inference_endpoints.persistence.registry import Registry
from inference_endpoints.services import import_roots
from inference_endpoints.services.import_roots import SourcePolicy


def policy_for(tmp: Path, store_root: Path, demo_dir: Path | None = None) -> SourcePolicy:
    """Drop folders under `tmp/imports`; the store (the platform's data) is never a source."""
    return SourcePolicy(imports_dir=tmp / "imports", demo_dir=demo_dir, protected=(store_root,))


def allow(registry: Registry, policy: SourcePolicy, org_id: str, root: Path) -> SourcePolicy:
    """Make `root` (created if missing) an import root of the organization; returns `policy`."""
    org = registry.get_org(org_id)
    assert org is not None
    root.mkdir(parents=True, exist_ok=True)
    import_roots.add_root(registry, policy, org, str(root))
    return policy


def tar_of(directory: Path, *, gz: bool = True, top: str | None = "ckpt") -> bytes:
    """`directory` as an upload body: a tar(.gz) of it under `top` (None: its files at the top level)."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        if top is None:
            for child in sorted(directory.iterdir()):
                tar.add(child, arcname=child.name)
        else:
            tar.add(directory, arcname=top)
    return buffer.getvalue()
