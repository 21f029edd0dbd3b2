"""`POST /api/v1/checkpoints/upload`: a tar(.gz) body streamed to the org's drop folder, unpacked
safely and registered; refused archives, over-limit bodies and bad names leave nothing behind.

Real SQLite registry and store, through FastAPI's TestClient; the 401 and name checks are
also driven at the ASGI level to prove no byte of the body is read first.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from inference_endpoints.adapters.console import create_app
from inference_endpoints.adapters.console.config import ConsoleSettings
from inference_endpoints.persistence.models import Organization
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import LocalCheckpointStore
from inference_endpoints.services.checkpoints import checkpoint_digest
from inference_endpoints.settings import Settings
from tests.archs import write_tiny_llama
from tests.sources import tar_of
from tests.test_console_api import FakeOrchestrator, FakeTraffic

LIMIT = 4 * 1024 * 1024  # this app's upload limit (the tiny checkpoint is about 3 MB)
URL = "/api/v1/checkpoints/upload"


@dataclass
class Up:
    app: FastAPI
    client: TestClient
    registry: Registry
    settings: Settings
    org: Organization
    key: str
    tmp: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def drop(self) -> Path:
        return self.settings.imports_dir / self.org.name

    def state(self) -> tuple[Any, ...]:
        """What a refused upload must leave as it was: rows, store files, the drop folder."""
        store = self.settings.store_root
        files = sorted(str(p) for p in store.rglob("*")) if store.exists() else []
        drop = sorted(p.name for p in self.drop.iterdir()) if self.drop.exists() else []
        return self.registry.counts(), files, drop

    def upload(self, body: bytes | Iterator[bytes], name: str = "up", **params: str) -> Any:
        return self.client.post(URL, params={"name": name, **params}, content=body, headers=self.auth)


@pytest.fixture
def up(sqlite_registry: Registry, tmp_path: Path) -> Iterator[Up]:
    settings = Settings(data_dir=tmp_path / "data")
    org = sqlite_registry.get_org_by_name("default")
    assert org is not None
    key = sqlite_registry.create_key(org.id, "tests").secret
    app = create_app(settings, console=ConsoleSettings(secret="s", prometheus_url="http://127.0.0.1:9",
                                                       max_upload_bytes=LIMIT),
                     registry=sqlite_registry, store=LocalCheckpointStore(settings.store_root),
                     orchestrator=FakeOrchestrator(), traffic=FakeTraffic())
    with TestClient(app) as client:
        yield Up(app, client, sqlite_registry, settings, org, key, tmp_path)


def _tar(*members: tuple[tarfile.TarInfo, bytes | None], base: Path | None = None) -> bytes:
    """A tar of a good checkpoint (when `base` is given) plus hand-made members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        if base is not None:
            for child in sorted(base.iterdir()):
                tar.add(child, arcname=child.name)
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", link: str = "") -> tuple[
        tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def test_an_uploaded_tar_gz_registers_like_the_same_directory(up: Up) -> None:
    src = write_tiny_llama(up.tmp / "job" / "final")
    r = up.upload(tar_of(src), "uploaded")
    assert r.status_code == 201, r.text
    row = up.registry.find_checkpoint(up.org.id, "uploaded")
    assert row is not None and r.json()["facts"]["num_layers"] == 2
    assert row.digest == checkpoint_digest(src)  # the same bytes as registering the directory
    assert [p.name for p in up.drop.iterdir()] == []  # the temporary directory is gone


def test_a_plain_tar_of_the_files_registers_too(up: Up) -> None:
    src = write_tiny_llama(up.tmp / "flat")
    r = up.upload(tar_of(src, gz=False, top=None), "flat")
    assert r.status_code == 201, r.text
    assert [p.name for p in up.drop.iterdir()] == []


@pytest.mark.parametrize(("member", "code"), [
    (_member("../escape.txt"), "unsafe_archive_member"),
    (_member("sub/../../escape.txt"), "unsafe_archive_member"),
    (_member("/etc/owned"), "unsafe_archive_member"),
    (_member("link", tarfile.SYMTYPE, link="/etc/passwd"), "unsafe_archive_member"),
    (_member("inner-link", tarfile.SYMTYPE, link="config.json"), "unsafe_archive_member"),
    (_member("hard", tarfile.LNKTYPE, link="config.json"), "unsafe_archive_member"),
    (_member("dev", tarfile.CHRTYPE), "unsafe_archive_member"),
    (_member("fifo", tarfile.FIFOTYPE), "unsafe_archive_member"),
    (_member("c" * 300), "path_too_long"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-in", "hardlink", "device", "fifo",
        "long-name"])
def test_an_unsafe_archive_is_refused_and_leaves_nothing(
        up: Up, member: tuple[tarfile.TarInfo, bytes | None], code: str) -> None:
    body = _tar(member, base=write_tiny_llama(up.tmp / "good"))
    before = up.state()
    r = up.upload(body)
    assert r.status_code == 422, r.text
    assert [(p["field"], p["code"]) for p in r.json()["problems"]] == [("body", code)]
    assert up.state() == before
    assert not (up.tmp / "escape.txt").exists() and not (up.settings.data_dir / "escape.txt").exists()


@pytest.mark.parametrize(("body", "code"), [
    (b"", "invalid_archive"),
    (b"this is not a tar archive at all" * 40, "invalid_archive"),
])
def test_a_body_that_is_no_archive_is_refused(up: Up, body: bytes, code: str) -> None:
    before = up.state()
    r = up.upload(body)
    assert r.status_code == 422 and r.json()["problems"][0]["code"] == code, r.text
    assert up.state() == before


def test_a_broken_checkpoint_is_refused_and_leaves_no_row(up: Up) -> None:
    src = write_tiny_llama(up.tmp / "broken")
    (src / "config.json").unlink()
    before = up.state()
    r = up.upload(tar_of(src))
    assert r.status_code == 422 and r.json()["problems"][0]["code"] == "missing_config", r.text
    assert r.json()["problems"][0]["message"].startswith("config.json does not exist")  # as in the archive
    assert str(up.settings.data_dir) not in r.text  # where it was unpacked is not told
    assert up.state() == before


def test_over_the_limit_is_refused_declared_streamed_or_unpacked(up: Up) -> None:
    before = up.state()
    big = b"\0" * (LIMIT + 1)
    declared = up.upload(big)
    assert declared.status_code == 413 and declared.json()["problems"][0]["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: cut off once past the limit
        for _ in range(LIMIT // 65536 + 2):
            yield b"\0" * 65536

    streamed = up.upload(chunks())
    assert streamed.status_code == 413, streamed.text[:300]
    bomb = io.BytesIO()  # 5 MiB of zeros compresses to a few KiB: the unpacked size counts too
    with tarfile.open(fileobj=bomb, mode="w:gz") as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = LIMIT + 1024 * 1024
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    unpacked = up.upload(bomb.getvalue())
    assert unpacked.status_code == 422 and unpacked.json()["problems"][0]["code"] == "archive_too_large"
    assert up.state() == before


def test_other_bodies_keep_the_small_limit(up: Up) -> None:
    r = up.client.post("/api/v1/checkpoints", content=b"{" + b"x" * (2 * 1024 * 1024),
                       headers={**up.auth, "content-type": "application/json"})
    assert r.status_code == 413


def _asgi_call(app: FastAPI, query: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """Send one upload request straight to the app; returns (status, body messages it read)."""
    reads = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"\0" * 65536, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": URL, "raw_path": URL.encode(), "query_string": query.encode(),
             "headers": [(b"host", b"testserver"), *headers], "client": ("127.0.0.1", 1),
             "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    return status, reads


def test_no_byte_is_read_without_a_key_or_with_a_bad_name(up: Up) -> None:
    before = up.state()
    for headers in ([], [(b"authorization", b"Bearer ie_not_a_key")]):
        assert _asgi_call(up.app, "name=x", headers) == (401, 0)
    write_tiny_llama(up.tmp / "t")
    auth = [(b"authorization", f"Bearer {up.key}".encode())]
    assert up.upload(tar_of(up.tmp / "t"), "taken").status_code == 201
    for query in ("name=taken", "name=bad%20name!", "name=" + "n" * 5000):
        assert _asgi_call(up.app, query, auth) == (422, 0), query
    assert up.registry.counts()["checkpoints"] == before[0]["checkpoints"] + 1  # only "taken"
    assert [p.name for p in up.drop.iterdir()] == []


# ---- a full disk: 507, and nothing kept -------------------------------------------------------

@contextlib.contextmanager
def small_disk(path: Path, size_bytes: int) -> Iterator[Path]:
    """A real tmpfs of `size_bytes` mounted at `path` (root only, as the test suite runs)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
        assert str(path) not in Path("/proc/self/mounts").read_text(), f"{path} is still mounted"


@pytest.mark.parametrize("where", ["body", "unpacked"])
def test_a_full_drop_folder_answers_507_and_keeps_nothing(up: Up, where: str) -> None:
    body = tar_of(write_tiny_llama(up.tmp / "big"))
    # "body": the archive itself does not fit; "unpacked": it fits, its files do not.
    size = 64 * 1024 if where == "body" else len(body) + 64 * 1024  # the files: ~217 KB
    with small_disk(up.drop, size):
        before = up.state()
        r = up.upload(body, "too-big-for-disk")
        assert r.status_code == 507, r.text
        problem = r.json()["problems"][0]
        assert problem["code"] == "insufficient_storage" and "drop folder" in problem["message"]
        assert "endpoints gc" in problem["hint"]
        assert up.state() == before and list(up.drop.iterdir()) == []
        assert shutil.disk_usage(up.drop).used < 16 * 1024  # the partial bytes were removed
    assert up.registry.find_checkpoint(up.org.id, "too-big-for-disk") is None


def test_a_full_store_answers_507_and_leaves_no_partial_copy(up: Up) -> None:
    body = tar_of(write_tiny_llama(up.tmp / "big"))
    store = up.settings.store_root
    with small_disk(store, 64 * 1024):  # the checkpoint: ~217 KB
        before = up.state()
        r = up.upload(body, "no-room-in-store")
        assert r.status_code == 507, r.text
        assert "checkpoint store" in r.json()["problems"][0]["message"]
        assert up.state() == before
        assert [p for p in store.rglob("*") if p.name.endswith(".importing")] == []
        assert shutil.disk_usage(store).used < 16 * 1024
    assert up.registry.find_checkpoint(up.org.id, "no-room-in-store") is None
    r = up.upload(body, "no-room-in-store")  # with room again, the same upload registers
    assert r.status_code == 201, r.text
