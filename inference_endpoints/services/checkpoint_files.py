"""Walking a checkpoint directory without following its links: sizes, a content digest, containment.

Shared by inspection (`checkpoints.py`) and the store; symlinks are reported, never
followed, and what a checkpoint reads must live inside it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from inference_endpoints.core.errors import CheckpointError

DIGEST_CHUNK_BYTES = 1024 * 1024


def iter_entries(root: Path) -> Iterator[tuple[str, str, Path]]:
    """(kind, relative posix path, path) for every file and symlink under root.

    Symlinks are reported as links and never followed, so a link cannot pull
    content from outside the directory or loop; sockets, FIFOs and devices are
    skipped because reading them could block.
    """
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise unreadable(directory, exc) from exc
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            path = Path(entry.path)
            if entry.is_symlink():
                yield "link", rel, path
            elif entry.is_dir(follow_symlinks=False):
                stack.append((path, rel + "/"))
            elif entry.is_file(follow_symlinks=False):
                yield "file", rel, path


def total_bytes(root: Path) -> int:
    """Bytes of every regular file under root (apparent size; symlinks count nothing)."""
    total = 0
    for kind, _rel, path in iter_entries(root):
        if kind == "file":
            try:
                total += path.lstat().st_size
            except OSError as exc:
                raise unreadable(path, exc) from exc
    return total


def checkpoint_digest(path: Path) -> str:
    """A content digest of the directory: "sha256:<hex>", stable across copies.

    Each file contributes its relative path and the SHA-256 of its contents
    (streamed in 1 MiB chunks); each symlink contributes its path and target
    string, never the target's content. Entries are sorted by path bytes, so the
    digest does not depend on directory order, location or timestamps.
    """
    root = require_directory(Path(path))
    entries = sorted(iter_entries(root), key=lambda e: os.fsencode(e[1]))
    outer = hashlib.sha256(b"inference-endpoints/checkpoint-digest/v1\0")
    for kind, rel, entry_path in entries:
        if kind == "link":
            try:
                payload = os.fsencode(os.readlink(entry_path))
            except OSError as exc:
                raise unreadable(entry_path, exc) from exc
        else:
            payload = file_sha256(entry_path).encode()
        outer.update(kind.encode() + b"\0" + os.fsencode(rel) + b"\0" + payload + b"\0")
    return f"sha256:{outer.hexdigest()}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(DIGEST_CHUNK_BYTES):
                digest.update(chunk)
    except OSError as exc:
        raise unreadable(path, exc) from exc
    return digest.hexdigest()


def require_directory(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(
            "not_a_directory",
            f"{path} does not exist",
            "Pass the directory that holds config.json (or adapter_config.json) and the safetensors files.",
        )
    if not path.is_dir():
        raise CheckpointError(
            "not_a_directory",
            f"{path} is not a directory",
            "Pass the checkpoint directory, not a single file inside it.",
        )
    return path.resolve()


def require_inside(root: Path, path: Path) -> None:
    """Refuse files that are symlinks out of the checkpoint.

    The digest covers link targets, not the content behind them, and a checkpoint
    must stay servable after its source is gone, so what is read must live inside.
    """
    if not path.is_symlink():
        return
    target = path.resolve()
    if not target.is_relative_to(root):
        raise CheckpointError(
            "symlink_outside",
            f"{path} is a symlink that leads outside the checkpoint directory",
            "Copy the real files into the directory (e.g. `cp -rL SRC DST`) before registering it.",
        )



def unreadable(path: Path, exc: OSError) -> CheckpointError:
    return CheckpointError(
        "unreadable",
        f"{path} cannot be read: {exc.strerror or exc}",
        "Check the file's permissions and that the storage holding it is mounted.",
    )
