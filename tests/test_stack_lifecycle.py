"""`endpoints up | down | status | create` against a real local stack of its own (no engine).

One stack per module (Prefect server, workers, gateway, console, discovery, Prometheus, in
a temporary data directory on free ports), driven through the CLI as a subprocess with
piped output. The tests run in order, each leaving the stack as the next one expects:
status while up → Prefect killed and `up` again → Docker block left behind and `up` again
→ create through Prefect (twice, no engine: the cpu-dev pool is paused from then on, so no
serve run ever starts) → a foreign port holder makes `up` fail → `down` after that failed `up`.
Everything started here is stopped by PID at the end, and checked to be gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import psutil
import pytest

from inference_endpoints.adapters.processes import alive, stop_group
from inference_endpoints.persistence.models import Endpoint
from tests.cli_support import IsolatedStack

pytestmark = pytest.mark.e2e

CREATE = ("--checkpoint", "demo-tiny-llama", "--max-context", "1024", "--precision", "float32")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedStack]:
    stack = IsolatedStack.make(tmp_path_factory.mktemp("stack") / "data")
    seen: set[int] = set()
    try:
        result = stack.cli("up")
        assert result.returncode == 0, result.stderr
        stack.register_demo()
        yield stack
    finally:
        seen.update(stack.recorded_pids().values())
        stack.cli("down", timeout_s=300)
        seen.update(stack.recorded_pids().values())
        survivors = [pid for pid in seen if alive(pid)]
        for pid in survivors:
            stop_group(pid)
        assert not survivors, f"stack processes still alive after `endpoints down`: {survivors}"


@pytest.fixture
def foreign() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts that are not the stack's; stopped by PID afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        stop_group(proc.pid)


def endpoint(stack: IsolatedStack, org_id: str, name: str) -> Endpoint | None:
    return stack.registry().find_endpoint(org_id, name)


def wait_for(what: str, check: Callable[[], object], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what}")


def test_status_exits_0_when_every_core_part_is_up(stack: IsolatedStack) -> None:
    result = stack.cli("status")
    assert result.returncode == 0
    assert "Prefect server" in result.stdout and "down" not in result.stdout


def test_the_prefect_api_refuses_a_caller_without_the_credential(stack: IsolatedStack) -> None:
    """Port 4200 is no longer an open control plane: no credential, no run (and no block secret)."""
    listed = prefect(stack, "POST", "/deployments/filter", {})
    assert listed.status_code == 200, listed.text  # the stack's own credential works
    deployment = next(d for d in listed.json() if d["entrypoint"].endswith(":stop_endpoint"))
    for method, path, body in (
            ("POST", "/deployments/filter", {}),
            ("POST", f"/deployments/{deployment['id']}/create_flow_run",
             {"parameters": {"endpoint": "anything", "org": "someone-else"}}),
            ("POST", "/block_documents/filter", {"include_secrets": True}),
            ("POST", "/flow_runs/filter", {})):
        refused = prefect(stack, method, path, body, auth=False)
        assert refused.status_code == 401, (path, refused.status_code, refused.text[:200])
        wrong = httpx.request(method, f"{stack.prefect_api}{path}", json=body, timeout=30,
                              auth=("ie", "not-the-credential"))
        assert wrong.status_code == 401, (path, wrong.status_code)
    runs = prefect(stack, "POST", "/flow_runs/filter", {}).json()
    assert not [r for r in runs if r["parameters"].get("org") == "someone-else"], "a run was created"
    assert httpx.get(f"{stack.prefect_api}/health", timeout=10).status_code == 200  # probes stay open


def test_up_after_the_prefect_server_was_killed_keeps_the_rest(stack: IsolatedStack) -> None:
    before = stack.recorded_pids()
    os.killpg(before["prefect_pid"], signal.SIGKILL)
    wait_for("the Prefect server to die", lambda: not alive(before["prefect_pid"]))
    result = stack.cli("up")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    after = stack.recorded_pids()
    assert after["prefect_pid"] != before["prefect_pid"] and alive(after["prefect_pid"])
    kept = {part: pid for part, pid in before.items() if part != "prefect_pid"}
    assert {part: after[part] for part in kept} == kept, "live parts must be reused, not restarted"
    assert all(alive(pid) for pid in after.values())
    assert "kept running:" in result.stdout and "started: Prefect server" in result.stdout


def test_plain_up_resets_a_docker_runtime_left_behind(stack: IsolatedStack) -> None:
    """As after `up --runtime docker` then `down`: the block names a daemon that is gone."""
    gone = f"unix://{stack.data_dir}/no-such-dockerd.sock"
    stack.python(
        "from blocks.settings_blocks import EngineHost\n"
        f"EngineHost(engine_python='python3', run_dir='/tmp/ie', log_dir='/tmp/ie', runtime='docker', "
        f"image='inference-endpoints/vllm-cpu:0.32.0', docker_host={gone!r}).save('cpu-dev', overwrite=True)\n")
    result = stack.cli("up")
    assert result.returncode == 0, result.stderr
    assert "cpu-dev engines run as local processes again" in result.stdout and gone in result.stdout
    block = stack.python(
        "from blocks.settings_blocks import EngineHost\n"
        "h = EngineHost.load('cpu-dev'); print(h.runtime or 'instance', h.docker_host or '-', h.engine_python)\n")
    runtime, docker_host, engine_python = block.split()
    assert (runtime, docker_host) == ("instance", "-") and engine_python != "python3"


def prefect(stack: IsolatedStack, method: str, path: str, json: object = None,
            auth: bool = True) -> httpx.Response:
    """One Prefect REST call; a busy server (SQLite) answers 503 for a moment, as clients retry."""
    for attempt in range(10):
        response = httpx.request(method, f"{stack.prefect_api}{path}", json=json, timeout=30,
                                 auth=stack.prefect_auth if auth else None)
        if response.status_code != 503:
            return response
        time.sleep(0.5 * (attempt + 1))
    return response


@pytest.fixture(scope="module")
def no_engines(stack: IsolatedStack) -> str:
    """Pause the cpu-dev pool for the rest of the module: serve runs are submitted but never
    start (no vLLM here). Returns the default organization's id."""
    assert prefect(stack, "PATCH", "/work_pools/cpu-dev", {"is_paused": True}).status_code == 204
    return stack.register_demo()


def test_create_is_a_deployment_run_and_a_failure_says_why(stack: IsolatedStack, no_engines: str) -> None:
    before = time.monotonic()
    result = stack.cli("create", "first", *CREATE, "--startup-timeout-s", "5")
    print(f"create returned after {time.monotonic() - before:.0f} s")
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "deploy_timeout: not ready after 5 s" in result.stderr and "hint:" in result.stderr
    ep = endpoint(stack, no_engines, "first")
    assert ep is not None and ep.status == "failed" and ep.reason_code == "deploy_timeout"
    # It ran as a run of the create-endpoint/create deployment, with a key this call generated.
    run = prefect(stack, "GET", f"/flow_runs/{ep.create_run_id}").json()
    deployment = prefect(stack, "GET", f"/deployments/{run['deployment_id']}").json()
    flow = prefect(stack, "GET", f"/flows/{deployment['flow_id']}").json()
    assert (flow["name"], deployment["name"]) == ("create-endpoint", "create")
    assert run["parent_task_run_id"] is None, "not a subflow of the CLI"
    # The CLI follows the endpoint, which is `failed` a moment before its create run is final.
    wait_for("the create run to end", lambda: prefect(
        stack, "GET", f"/flow_runs/{ep.create_run_id}").json()["state_type"] != "RUNNING", 60)
    assert prefect(stack, "GET", f"/flow_runs/{ep.create_run_id}").json()["state_type"] == "FAILED"
    assert ep.idempotency_key and ep.idempotency_key.startswith("cli-")
    assert run["parameters"]["idempotency_key"] == ep.idempotency_key


def test_ctrl_c_stops_following_and_the_endpoint_still_ends(stack: IsolatedStack, no_engines: str) -> None:
    proc = stack.popen("create", "second", *CREATE, "--startup-timeout-s", "20")
    try:
        wait_for("second to be deploying", lambda: (ep := endpoint(stack, no_engines, "second")) is not None
                 and ep.status == "deploying")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(stdout, stderr)
    assert proc.returncode == 130
    assert "still being created" in stderr
    assert "endpoints show second" in stderr and "endpoints stop second" in stderr
    assert "Traceback" not in stdout + stderr
    # Nothing follows it any more, yet it ends (here: failed, no worker serves the pool).
    wait_for("second to end", lambda: (ep := endpoint(stack, no_engines, "second")) is not None
             and ep.status in ("failed", "healthy"))
    ep = endpoint(stack, no_engines, "second")
    assert ep is not None and ep.status == "failed" and ep.reason_code == "deploy_timeout"


def test_a_create_run_that_records_nothing_ends_with_its_state_message(
        stack: IsolatedStack, no_engines: str) -> None:
    """The race: the checkpoint is deleted after the CLI validated the request but before the
    flow (held back by pausing its pool) records the endpoint."""
    pool = "/work_pools/control-plane"
    assert prefect(stack, "PATCH", pool, {"is_paused": True}).status_code == 204
    try:
        proc = stack.popen("create", "third", *CREATE)
        query = {"flow_runs": {"name": {"any_": ["create/default/third"]}}}
        wait_for("the create run to be submitted",
                 lambda: prefect(stack, "POST", "/flow_runs/filter", query).json())
        assert stack.cli("checkpoint", "delete", "demo-tiny-llama").returncode == 0
    finally:
        assert prefect(stack, "PATCH", pool, {"is_paused": False}).status_code == 204
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(stdout, stderr)
    assert proc.returncode == 1
    assert "Endpoint third was not created: the create run ended Failed:" in stderr
    assert "checkpoint" in stderr and "Traceback" not in stdout + stderr
    assert endpoint(stack, no_engines, "third") is None


def test_a_port_held_by_another_process_fails_up_in_one_line(
        stack: IsolatedStack, foreign: list[subprocess.Popen[bytes]]) -> None:
    pids = stack.recorded_pids()
    for part in ("gateway_pid", "prometheus_pid", "console_pid"):
        stop_group(pids[part])
    port = stack.port("IE_CONSOLE_PORT")
    holder = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    foreign.append(holder)
    wait_for("the foreign server to listen", lambda: any(
        c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
        for c in psutil.net_connections(kind="inet")))
    result = stack.cli("up")
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"port {port} (console)" in lines[0] and f"pid {holder.pid}" in lines[0]
    assert "http.server" in lines[0] and "IE_CONSOLE_PORT" in lines[0]
    assert alive(holder.pid), "a process that is not the stack's is never stopped"
    # What this failed `up` started before it gave up is recorded (for `down` to stop).
    after = stack.recorded_pids()
    for part in ("gateway_pid", "prometheus_pid"):
        assert after[part] != pids[part] and alive(after[part])


def test_down_after_a_failed_up_stops_everything_it_recorded(stack: IsolatedStack) -> None:
    recorded = stack.recorded_pids()
    assert recorded and any(alive(pid) for pid in recorded.values())
    result = stack.cli("down")
    assert result.returncode == 0
    assert "Local stack stopped:" in result.stdout
    for part in ("gateway", "Prometheus", "service discovery", "Prefect server", "worker cpu-dev"):
        assert part in result.stdout
    assert not [pid for pid in recorded.values() if alive(pid)]
    assert not stack.recorded_pids()
    again = stack.cli("down")
    assert again.returncode == 0 and "Nothing of the local stack is running" in again.stdout
    status = stack.cli("status")
    assert status.returncode == 1 and "Prefect server" in status.stdout
