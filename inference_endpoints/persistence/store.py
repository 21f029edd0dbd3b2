"""Checkpoint stores: where the platform keeps the bytes it may one day reclaim.

`CheckpointStore` is the interface; `LocalCheckpointStore` keeps each checkpoint
in `<root>/<org>/<checkpoint id>/`, files read-only. Another store (S3-compatible,
NFS) implements the same four methods.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path
from typing import Protocol

from inference_endpoints.core.errors import CheckpointError, StorageFull, is_disk_full


class CheckpointStore(Protocol):
    def import_dir(self, source: Path, location: str) -> Path: ...

    def path_of(self, location: str) -> Path: ...

    def exists(self, location: str) -> bool: ...

    def reclaim(self, location: str) -> int: ...


class UnsafePath(Exception):
    """A location that would reach outside the store's root."""


class LocalCheckpointStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path_of(self, location: str) -> Path:
        """Resolve `location` inside the root, refusing `..`, absolute paths and symlinks."""
        rel = Path(location)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise UnsafePath(f"location {location!r} is not a relative path inside the store")
        root = self.root.resolve()
        candidate = root / rel
        current = root
        for part in rel.parts:
            current = current / part
            if current.is_symlink():
                raise UnsafePath(f"location {location!r} passes through a symlink ({current})")
        if not candidate.resolve().is_relative_to(root):
            raise UnsafePath(f"location {location!r} resolves outside the store root")
        return candidate

    def exists(self, location: str) -> bool:
        return self.path_of(location).is_dir()

    def import_dir(self, source: Path, location: str) -> Path:
        """Copy a checkpoint directory in and make it read-only. Refuses links that leave it."""
        source = Path(source)
        src_root = source.resolve()
        for path in source.rglob("*"):
            if path.is_symlink() and not path.resolve().is_relative_to(src_root):
                raise CheckpointError(
                    "symlink_outside_checkpoint",
                    f"{path} links outside the checkpoint directory.",
                    "Copy the real file into the checkpoint directory instead of linking it.",
                )
        dest = self.path_of(location)
        if dest.exists():
            raise CheckpointError("location_taken", f"{dest} already exists in the store.")
        made_parent = not dest.parent.exists()
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".importing")
        if tmp.exists():
            _make_writable(tmp)
            shutil.rmtree(tmp)
        try:
            shutil.copytree(source, tmp, symlinks=False)
        except (OSError, shutil.Error) as exc:  # never leave a partial copy behind
            if tmp.exists():
                _make_writable(tmp)
                shutil.rmtree(tmp, ignore_errors=True)
            if made_parent:
                with contextlib.suppress(OSError):  # only if still empty
                    dest.parent.rmdir()
            if is_disk_full(exc):
                raise StorageFull("the checkpoint store", str(exc)[:300]) from None
            raise
        _make_read_only(tmp)
        os.rename(tmp, dest)
        return dest

    def reclaim(self, location: str) -> int:
        """Delete a checkpoint's bytes; returns the bytes freed (0 if already gone)."""
        path = self.path_of(location)
        if not path.exists():
            return 0
        if not path.is_dir():
            raise UnsafePath(f"{path} is not a checkpoint directory")
        freed = sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        _make_writable(path)
        shutil.rmtree(path)
        return freed


def _make_read_only(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            path.chmod(0o555)
        else:
            path.chmod(0o444)


def _make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(0o755 if path.is_dir() else 0o644)
