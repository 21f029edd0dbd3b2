"""Shared fixtures: registries on SQLite and PostgreSQL, checkpoint directories."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_endpoints.persistence.db import scratch_postgres
from inference_endpoints.persistence.registry import Registry
from tests.ci_budget import install as install_ci_budget
from tests.fake_kube_api import FakeKubeApi
from tests.session_env import SESSION  # sets PREFECT_* before any Prefect import
from tests.skip_guard import install as install_skip_guard

PG_ADMIN_URL = os.environ.get("IE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        with scratch_postgres(PG_ADMIN_URL, "ie_test") as url:
            yield url


@pytest.fixture
def registry(db_url: str) -> Registry:
    reg = Registry(db_url)
    reg.init(default_org="default")
    return reg


@pytest.fixture
def fake_api() -> Iterator[FakeKubeApi]:
    """The FAKE Kubernetes API server (no cluster can run here), started on a free port."""
    api = FakeKubeApi().start()
    yield api
    api.stop()


@pytest.fixture
def sqlite_registry(tmp_path: Path) -> Registry:
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.init(default_org="default")
    return reg


def pytest_configure(config: pytest.Config) -> None:
    """No silent skips (tests/skip_allowlist.txt); failures shown at once; the suite's deadline."""
    install_skip_guard(config)
    install_ci_budget(config)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The session's data directory goes with it (set IE_KEEP_TEST_DATA=1 to look inside)."""
    import shutil

    if not os.environ.get("IE_KEEP_TEST_DATA"):
        shutil.rmtree(SESSION.data_dir, ignore_errors=True)
