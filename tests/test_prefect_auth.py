"""The local stack's Prefect credential: made once, kept 0600, overridden by the environment."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from inference_endpoints.localstack.prefect_auth import CLIENT_ENV, SERVER_ENV, prefect_auth_string
from inference_endpoints.localstack.stack import LocalStack
from inference_endpoints.settings import Settings


def test_the_credential_is_made_once_private_and_reused(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CLIENT_ENV, raising=False)
    settings = Settings(data_dir=tmp_path / "data")
    first = prefect_auth_string(settings)
    user, _, password = first.partition(":")
    assert user == "ie" and len(password) >= 30
    assert stat.S_IMODE(settings.prefect_auth_path.stat().st_mode) == 0o600
    assert prefect_auth_string(settings) == first
    assert prefect_auth_string(Settings(data_dir=tmp_path / "other")) != first  # one per stack
    env = LocalStack(settings).env()
    assert env[SERVER_ENV] == env[CLIENT_ENV] == first  # the server requires what clients send


def test_an_explicit_credential_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU host (or a test session) sets PREFECT_API_AUTH_STRING; nothing is written then."""
    monkeypatch.setenv(CLIENT_ENV, "ie:from-the-control-plane")
    settings = Settings(data_dir=tmp_path / "data")
    assert prefect_auth_string(settings) == "ie:from-the-control-plane"
    assert not settings.prefect_auth_path.exists()
    assert LocalStack(settings).env()[SERVER_ENV] == "ie:from-the-control-plane"
