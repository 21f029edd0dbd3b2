"""When teardown gives up on an orphaned engine: as soon as the run is over and it still answers.

Prefect and the backend are replaced by plain functions here: what is tested is the decision
(when to call `on_orphaned`, when to return), not the calls, which the e2e tests make for real.
"""

from __future__ import annotations

import time

import pytest
from prefect.client.schemas.objects import StateType

import tasks.teardown as teardown
from inference_endpoints.models import Endpoint


def _endpoint() -> Endpoint:
    return Endpoint(id="ep", org_id="org", name="chat", checkpoint_id="c", instance="cpu-dev",
                    max_context=1024, precision="auto", quantization="none", status="stopping",
                    serve_run_id="run-1", backend_url="http://127.0.0.1:9")


@pytest.fixture()
def world(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    state: dict[str, object] = {"run": StateType.RUNNING, "answers": True, "orphan_calls": 0}
    monkeypatch.setattr(teardown, "run_state", lambda run_id: state["run"])
    monkeypatch.setattr(teardown, "answers", lambda url, timeout_s: state["answers"])
    monkeypatch.setattr(teardown, "POLL_S", 0.01)
    monkeypatch.setattr(teardown, "ORPHAN_GRACE_S", 0.2)
    return state


def test_an_engine_answering_after_its_run_ended_is_stopped_after_the_grace(world: dict[str, object]) -> None:
    world["run"] = StateType.CANCELLED

    def stop_orphans() -> None:
        world["orphan_calls"] = int(world["orphan_calls"]) + 1  # type: ignore[call-overload]
        world["answers"] = False

    started = time.monotonic()
    assert teardown.wait_ended(_endpoint(), timeout_s=30, on_orphaned=stop_orphans) is True
    assert world["orphan_calls"] == 1
    assert 0.2 <= time.monotonic() - started < 5, "orphans must be stopped at once, not after the timeout"


def test_a_running_run_is_never_treated_as_orphaned(world: dict[str, object]) -> None:
    calls: list[int] = []
    assert teardown.wait_ended(_endpoint(), timeout_s=0.6, on_orphaned=lambda: calls.append(1)) is False
    assert calls == []


def test_a_quiet_ended_run_needs_no_orphan_stop(world: dict[str, object]) -> None:
    world["run"], world["answers"] = StateType.COMPLETED, False
    calls: list[int] = []
    assert teardown.wait_ended(_endpoint(), timeout_s=5, on_orphaned=lambda: calls.append(1)) is True
    assert calls == []


def test_orphans_are_stopped_once_even_if_the_engine_keeps_answering(world: dict[str, object]) -> None:
    world["run"] = StateType.CRASHED
    calls: list[int] = []
    assert teardown.wait_ended(_endpoint(), timeout_s=0.8, on_orphaned=lambda: calls.append(1)) is False
    assert calls == [1]
