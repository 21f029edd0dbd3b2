"""`endpoints org create` and `endpoints key create | list | revoke`, through the real CLI code."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from inference_endpoints.cli.keys import key_app, org_app
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.settings import Settings

app = typer.Typer()
app.add_typer(key_app, name="key")
app.add_typer(org_app, name="org")


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("IE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IE_ORG", "default")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return CliRunner()


def _registry() -> Registry:
    return Registry(Settings().db_url)


def test_org_create_prints_its_first_key_once(cli: CliRunner) -> None:
    result = cli.invoke(app, ["org", "create", "acme"])
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip().splitlines()[-1]
    org = _registry().org_for_key(secret)
    assert org is not None and org.name == "acme"
    assert "shown only this once" in result.stderr
    again = cli.invoke(app, ["org", "create", "acme"])
    assert again.exit_code == 2 and "already exists" in again.stderr
    bad = cli.invoke(app, ["org", "create", "Not_A_Label"])
    assert bad.exit_code == 2 and "DNS label" in bad.stderr
    quiet = cli.invoke(app, ["org", "create", "zeta", "-q"])
    assert quiet.exit_code == 0 and quiet.stdout.count("\n") == 1
    assert _registry().org_for_key(quiet.stdout.strip()) is not None


def test_key_create_list_revoke(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    created = cli.invoke(app, ["key", "create", "--name", "ci", "--quiet"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    registry = _registry()
    org = registry.org_for_key(secret)
    assert org is not None and org.name == "default"
    prefix = "_".join(secret.split("_")[:2])
    listed = cli.invoke(app, ["key", "list"])
    assert listed.exit_code == 0
    assert prefix in listed.stdout and "ci" in listed.stdout
    # The secret part (after `ie_<prefix>_`; it may itself contain "_") is never listed.
    assert secret not in listed.stdout and secret[len(prefix) + 1:] not in listed.stdout
    revoked = cli.invoke(app, ["key", "revoke", prefix])
    assert revoked.exit_code == 0 and f"revoked {prefix}" in revoked.stdout
    assert registry.org_for_key(secret) is None
    row = next(k for k in registry.list_keys(org.id) if k.prefix == prefix)
    assert row.revoked_at is not None
    assert cli.invoke(app, ["key", "revoke", "ie_nothere"]).exit_code == 2
    # Another organization sees only its own keys and cannot revoke ours.
    assert cli.invoke(app, ["org", "create", "acme", "-q"]).exit_code == 0
    monkeypatch.setenv("IE_ORG", "acme")
    other = cli.invoke(app, ["key", "list"])
    assert prefix not in other.stdout
    assert cli.invoke(app, ["key", "revoke", row.id]).exit_code == 2


def test_up_with_an_unknown_runtime_names_it_and_starts_nothing(cli: CliRunner, tmp_path: Path) -> None:
    from inference_endpoints.cli import app as endpoints_app

    result = cli.invoke(endpoints_app, ["up", "--runtime", "podman"])
    assert result.exit_code == 2
    assert "--runtime must be process or docker" in result.stderr and "podman" in result.stderr
    assert not (tmp_path / "run" / "stack.json").exists(), "a rejected `up` started something"
