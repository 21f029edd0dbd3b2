"""The detail page's Logs tab and playground route, on a real SQLite registry through TestClient.

The logs are files written as a serve run writes them (it records where). The
playground's streamed call through the real gateway is in tests/e2e/test_console_browser.py;
here, every refusal: each is answered before the gateway is asked and leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_endpoints.adapters.console.detail_tabs import PlaygroundCall, upstream_body
from inference_endpoints.core.status import EndpointStatus, ReasonCode
from inference_endpoints.persistence.models import ServeRun
from inference_endpoints.services.engine_log import last_lines, pick_run
from tests import test_console_api
from tests.test_console_api import World, sign_in

world = test_console_api.world  # the same fixture: a console on a real SQLite registry


def _live(w: World, name: str) -> str:
    ep = w.registry.find_endpoint(w.org.id, name)
    assert ep is not None and ep.live_run is not None
    return ep.live_run


def _write_log(w: World, run_id: str, path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    assert w.registry.runs.report(run_id, log_path=str(path))


def test_logs_tab_shows_the_engine_lines_escaped_with_the_prefect_link(world: World, tmp_path: Path) -> None:
    world.create("ep1")
    world.set_status("ep1", EndpointStatus.DEPLOYING, EndpointStatus.LOADING, EndpointStatus.HEALTHY)
    run_id = _live(world, "ep1")
    world.registry.runs.record_submitted(run_id, "fr-123")
    _write_log(world, run_id, tmp_path / "e.log", [f"INFO line {i}" for i in range(300)] + ["<script>x</script>"])
    world.client.app.state.service.deps.console.prefect_ui_url = "http://127.0.0.1:4200"  # type: ignore[attr-defined]
    sign_in(world)
    page = world.client.get("/endpoints/ep1?tab=logs")
    assert page.status_code == 200 and 'id="logs"' in page.text and "/endpoints/ep1/_logs?lines=100" in page.text
    fragment = world.client.get("/endpoints/ep1/_logs?lines=100").text
    assert "INFO line 299" in fragment and "INFO line 201" in fragment and "INFO line 200" not in fragment
    assert "<script>x</script>" not in fragment and "&lt;script&gt;x&lt;/script&gt;" in fragment
    assert 'href="http://127.0.0.1:4200/runs/flow-run/fr-123"' in fragment
    assert run_id in fragment and 'id="log-cause"' not in fragment  # serving: no failure to point at
    odd = world.client.get("/endpoints/ep1/_logs?lines=7").text  # only the offered counts
    assert "INFO line 201" in odd and "INFO line 200" not in odd


def test_a_failed_runs_root_cause_is_highlighted(world: World, tmp_path: Path) -> None:
    world.create("ep1")
    world.set_status("ep1", EndpointStatus.DEPLOYING, EndpointStatus.LOADING)
    run_id = _live(world, "ep1")
    _write_log(world, run_id, tmp_path / "f.log", [
        "INFO 12-04 10:00:00 [api_server.py:1] starting",
        "ERROR 12-04 10:00:01 [core.py:2] EngineCore failed to start.",
        "ValueError: max_model_len 99999 is larger than the model's 2048",
        "RuntimeError: Engine core initialization failed. See root cause above.",
    ])
    assert world.registry.runs.ended(run_id, ReasonCode.ENGINE_EXITED, "vLLM exited with code 1")
    sign_in(world)
    fragment = world.client.get("/endpoints/ep1/_logs").text
    assert 'id="log-cause"' in fragment
    assert "ValueError: max_model_len 99999 is larger than the model&#39;s 2048" in fragment
    assert 'class="log-cause">ValueError' in fragment  # the line itself is marked in the log


def test_no_run_yet_and_a_log_elsewhere_say_so(world: World) -> None:
    world.create("ep1")
    sign_in(world)
    fragment = world.client.get("/endpoints/ep1/_logs").text
    assert "has not started its engine yet" in fragment
    assert world.registry.runs.report(_live(world, "ep1"), log_path="/nowhere/e.log", log_host="gpu-7")
    elsewhere = world.client.get("/endpoints/ep1/_logs").text
    assert "gpu-7" in elsewhere and "/nowhere/e.log" in elsewhere
    assert world.client.get("/endpoints/nope/_logs").status_code == 404


def test_another_orgs_logs_are_not_found(world: World, tmp_path: Path) -> None:
    world.create("ep1")
    _write_log(world, _live(world, "ep1"), tmp_path / "s.log", ["secret line"])
    sign_in(world, world.other_key)
    answer = world.client.get("/endpoints/ep1/_logs")
    assert answer.status_code == 404 and "secret line" not in answer.text


def _run(generation: int, replica: int, ended: bool = False, run_id: str = "") -> ServeRun:
    from datetime import UTC, datetime

    return ServeRun(id=run_id or f"sr{generation}", endpoint_id="e", org_id="o", generation=generation,
                    role="replica" if replica else "live", replica=replica, purpose="start",
                    checkpoint_id="c", serving_config_json="{}",
                    ended_at=datetime(2026, 1, 1, tzinfo=UTC) if ended else None)


@pytest.mark.parametrize(("live", "generation", "replica", "expected"), [
    ("sr2", None, None, "sr2"),   # the live run
    (None, None, None, "sr4"),    # no live run: the newest
    ("sr2", 0, None, "sr0"),      # a generation asked for
    ("sr2", 9, None, None),       # an unknown generation: nothing made up
    ("sr2", None, 1, "sr3"),      # replica 1: its open run
    ("sr2", None, 2, "sr4"),      # replica 2 has only an ended run: that one
    ("sr2", None, 5, None),       # no such replica
])
def test_pick_run(live: str | None, generation: int | None, replica: int | None, expected: str | None) -> None:
    runs = [_run(0, 0, ended=True), _run(1, 1, ended=True), _run(2, 0), _run(3, 1), _run(4, 2, ended=True)]
    picked = pick_run(runs, live, generation, replica)
    assert (picked.id if picked else None) == expected


def test_last_lines_reads_only_the_end_of_a_long_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inference_endpoints.services import engine_log

    path = tmp_path / "long.log"
    path.write_text("".join(f"line {i:05d}\n" for i in range(10_000)))  # 11 bytes a line
    monkeypatch.setattr(engine_log, "MAX_TAIL_BYTES", 1000)
    lines, end = last_lines(path, 5000)
    assert end == path.stat().st_size
    assert lines[-1] == "line 09999" and len(lines) == 90  # 1000 bytes, the cut first line dropped
    assert all(line.startswith("line ") and len(line) == 10 for line in lines)
    assert last_lines(path, 0) == ([], end)


# ---- playground ----------------------------------------------------------------------------------

def test_upstream_body_streams_with_usage_for_both_modes() -> None:
    path, body = upstream_body(PlaygroundCall(mode="chat", prompt="hi", max_tokens=5), "ep1")
    assert path == "/v1/chat/completions" and body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "ep1" and body["max_tokens"] == 5 and body["temperature"] == 0.0
    path, body = upstream_body(PlaygroundCall(mode="completion", prompt="Once"), "ep1")
    assert path == "/v1/completions" and body["prompt"] == "Once" and "messages" not in body


def test_playground_refusals_write_nothing(world: World) -> None:
    world.create("ep1")
    token = sign_in(world)
    before = world.registry.counts()
    calls = len(world.orchestrator.calls)
    c = world.client
    url = "/endpoints/ep1/_playground"
    good = {"mode": "chat", "prompt": "hi", "max_tokens": 4}
    no_csrf = c.post(url, json=good, headers=world.auth)
    assert no_csrf.status_code == 403
    no_key = c.post(url, json=good, headers={"X-CSRF-Token": token})
    assert no_key.status_code == 401 and no_key.json()["problems"][0]["field"] == "api_key"
    other = c.post(url, json=good, headers={"X-CSRF-Token": token, **world.other_auth})
    assert other.status_code == 401, "another organization's key never calls this org's endpoint"
    for bad in ({**good, "prompt": ""}, {**good, "max_tokens": 0}, {**good, "mode": "image"},
                {**good, "temperature": 9}):
        answer = c.post(url, json=bad, headers={"X-CSRF-Token": token, **world.auth})
        assert answer.status_code == 422, (bad, answer.text)
    missing = c.post("/endpoints/nope/_playground", json=good, headers={"X-CSRF-Token": token, **world.auth})
    assert missing.status_code == 404
    assert world.registry.counts() == before and len(world.orchestrator.calls) == calls


def test_the_overview_has_the_playground_and_a_stopped_endpoint_says_start_it(world: World) -> None:
    world.create("ep1")
    world.set_status("ep1", EndpointStatus.DEPLOYING, EndpointStatus.LOADING, EndpointStatus.HEALTHY)
    sign_in(world)
    page = world.client.get("/endpoints/ep1").text
    assert 'id="pg-form"' in page and 'data-endpoint="ep1"' in page and "/static/detail.js" in page
    assert world.key not in page
    world.set_status("ep1", EndpointStatus.STOPPING, EndpointStatus.STOPPED)
    stopped = world.client.get("/endpoints/ep1").text
    assert 'id="pg-form"' not in stopped and "start it to try it here" in stopped
