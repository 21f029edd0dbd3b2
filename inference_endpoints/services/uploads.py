"""Checkpoints uploaded as a tar archive: unpacked safely inside the org's drop folder, then registered.

The archive is written to a private temporary directory in the organization's drop
folder (so it is registered through the same import-root check as any path), then
unpacked with only regular files and directories allowed: no absolute names, no `..`,
no symlinks, hard links or devices. Whatever happens, the temporary directory goes
afterwards, and a failed registration leaves no checkpoint row.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path, PurePosixPath

from inference_endpoints.core.bounds import path_problems
from inference_endpoints.core.errors import Problem, RequestInvalid, StorageFull, invalid, is_disk_full, shown
from inference_endpoints.persistence.models import Checkpoint, Organization
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import CheckpointStore
from inference_endpoints.services.import_roots import SourcePolicy
from inference_endpoints.services.operations import name_problems, register_checkpoint

ARCHIVE_NAME = "upload.tar"
MAX_MEMBERS = 100_000  # files and directories in one archive: far more than any checkpoint has
_HINT = ("Upload a tar (optionally gzip-compressed) of the checkpoint directory holding only regular "
         "files and directories, e.g. `tar -czf ckpt.tar.gz -C DIR .`.")


def check_upload_request(registry: Registry, org: Organization, name: str, base: str | None) -> None:
    """The checks that need no bytes (name, base), so a doomed upload is refused before it is sent."""
    problems = name_problems(registry, org.id, name, base)
    if problems:
        raise RequestInvalid(problems)


@contextmanager
def upload_space(sources: SourcePolicy, org: Organization) -> Iterator[Path]:
    """A fresh private directory in the org's drop folder, removed afterwards whatever happens."""
    drop = sources.drop_folder(org.name)
    if drop is None:
        raise invalid("upload_unavailable", "org", f"Organization {shown(org.name)} has no drop folder.",
                      "Register from an import root instead.")
    drop.mkdir(parents=True, exist_ok=True)
    space = Path(tempfile.mkdtemp(prefix=".upload-", dir=drop))
    try:
        yield space
    finally:
        shutil.rmtree(space, ignore_errors=True)


def register_archive(registry: Registry, store: CheckpointStore, sources: SourcePolicy, org: Organization,
                     space: Path, name: str, base: str | None, max_bytes: int) -> Checkpoint:
    """Unpack `space/upload.tar` into `space` and register the checkpoint it holds.

    Problems name files as they are in the archive, never where it was unpacked.
    """
    root = unpack(space / ARCHIVE_NAME, space / "checkpoint", max_bytes)
    try:
        return register_checkpoint(registry, store, org.id, root, name, base, sources=sources)
    except RequestInvalid as exc:
        raise RequestInvalid([_in_archive(p, root) for p in exc.problems], exc.details) from None


def _in_archive(problem: Problem, root: Path) -> Problem:
    def local(text: str) -> str:
        return text.replace(f"{root}/", "").replace(str(root), "the archive")

    return replace(problem, message=local(problem.message), hint=local(problem.hint))


def unpack(archive: Path, dest: Path, max_bytes: int) -> Path:
    """Extract a checked archive into `dest`; returns the checkpoint directory inside it.

    An archive of one top-level directory is that directory's checkpoint; otherwise
    its top level is the checkpoint.
    """
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = _checked_members(tar, max_bytes)
            dest.mkdir()
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise _bad("invalid_archive", f"The body is not a readable tar archive ({exc}).") from None
    except OSError as exc:
        if is_disk_full(exc):
            raise StorageFull("the drop folder", str(exc)) from None
        raise
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return dest


def _checked_members(tar: tarfile.TarFile, max_bytes: int) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in tar:
        if len(members) >= MAX_MEMBERS:
            raise _bad("archive_too_large", f"The archive holds more than {MAX_MEMBERS:,} entries.")
        name = member.name
        parts = PurePosixPath(name).parts
        if name.startswith("/") or ".." in parts:
            raise _bad("unsafe_archive_member", f"The archive entry {shown(name)} would land outside "
                       "the checkpoint (an absolute path or `..`).")
        if not (member.isfile() or member.isdir()):
            kind = ("a symlink" if member.issym() else "a hard link" if member.islnk()
                    else "not a regular file")
            raise _bad("unsafe_archive_member", f"The archive entry {shown(name)} is {kind}; only regular "
                       "files and directories are accepted.")
        if path_problems(name, "body"):
            raise _bad("path_too_long", f"The archive entry {shown(name)} has a path that is too long.")
        total += member.size
        if total > max_bytes:
            raise _bad("archive_too_large", f"The archive unpacks to more than {max_bytes:,} bytes.")
        members.append(member)
    return members


def _bad(code: str, message: str) -> RequestInvalid:
    return invalid(code, "body", message, _HINT)
