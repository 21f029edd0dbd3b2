"""`endpoints checkpoint delete`, `checkpoint list --all` and the `endpoints gc` table (SQLite, no Prefect)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from inference_endpoints.cli.checkpoints import checkpoint_app, print_gc_report
from inference_endpoints.core.gc import CheckpointFact, Holder
from inference_endpoints.core.status import CheckpointStatus
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.services.collector import Outcome, Report, Result
from inference_endpoints.settings import Settings
from tests.gc_support import GcWorld

runner = CliRunner()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GcWorld:
    monkeypatch.setenv("IE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    settings = Settings()
    registry = Registry(settings.db_url)
    registry.init(default_org="default")
    world = GcWorld.make(registry, tmp_path)
    world.store.root = settings.store_root
    return world


def test_delete_says_who_holds_the_bytes(world: GcWorld) -> None:
    world.register_full("kept")
    world.register_full("free")
    ep = world.create("serving", "kept")
    world.start(ep.id, "run-1", "http://127.0.0.1:9001")
    held = runner.invoke(checkpoint_app, ["delete", "kept"])
    assert held.exit_code == 0, held.output
    assert "held by serving (pending)" in held.output and "run-1" in held.output
    free = runner.invoke(checkpoint_app, ["delete", "free"])
    assert free.exit_code == 0 and "reclaimed at the next collection" in free.output
    missing = runner.invoke(checkpoint_app, ["delete", "nope"])
    assert missing.exit_code == 2 and "checkpoint_not_found" in missing.output

    listed = runner.invoke(checkpoint_app, ["list"])
    assert "kept" not in listed.output and "free" not in listed.output
    everything = runner.invoke(checkpoint_app, ["list", "--all"])
    assert everything.exit_code == 0
    line = next(li for li in everything.output.splitlines() if " kept " in li)
    assert "deleted" in line and "serving (pending)" in line


def test_gc_table_lists_reclaimed_held_and_skipped(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")

    def fact(name: str) -> CheckpointFact:
        return CheckpointFact(f"ckpt_{name}", "org", name, f"org/ckpt_{name}", CheckpointStatus.DELETED, 10)

    report = Report(dry_run=False, outcomes=[
        Outcome(fact("gone"), Result.RECLAIMED, "no endpoint ever leased it", bytes_freed=1234),
        Outcome(fact("busy"), Result.HELD, "held by ep-a",
                holders=(Holder("ep-a", "ep_1", "run-9", "run run-9 is Running"),)),
        Outcome(fact("odd"), Result.SKIPPED, "unsafe location, never deleted: outside the root"),
    ])
    print_gc_report(report.to_dict())
    out = capsys.readouterr().out
    assert "1,234" in out and "held by ep-a: run run-9 is Running" in out and "unsafe location" in out
    assert "1 reclaimed (1,234 bytes freed), 0 would be reclaimed, 1 held, 1 skipped." in out
