"""The docker runtime end to end: a real dockerd, the locally built vLLM-CPU image, real Prefect.

The module starts (or reuses) a dockerd whose data root is cached between sessions under
~/.cache/inference-endpoints/dockerd (override: IE_DOCKER_CACHE), makes sure the engine image
is there with scripts/build-engine-image.sh (about 5 minutes the first time, about a second
once built), and points the cpu-dev pool's serve runs at Docker by saving an
`engine-host/cpu-dev` block override (restored afterwards). It never skips: setup.sh installs
docker.io, so a missing or failing daemon fails the module with the daemon's log.

On this machine's vfs storage driver, creating a container copies the 3.6 GB image (~50 s)
and removing one deletes that copy (~30 s); both are near-instant with overlay2.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import httpx
import psutil
import pytest
from openai import OpenAI
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from blocks.settings_blocks import EngineHost
from inference_endpoints.adapters.health import answers
from inference_endpoints.adapters.runtime.docker import ENDPOINT_LABEL, DockerEngine, DockerRuntime
from inference_endpoints.adapters.runtime.dockerd import DockerDaemon, dockerd_installed, start_dockerd
from inference_endpoints.core.serving_config import ServingSpec
from inference_endpoints.services.checkpoints import checkpoint_digest
from tasks.runs import is_final, run_state
from tests.e2e.conftest import E2EStack, paused_deployment
from tests.e2e.engine_tools import assert_only_the_key_opens_the_engine, backend_port, port_open
from tests.leftovers import docker_cache_dir

pytestmark = pytest.mark.e2e

PROJECT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("IE_ENGINE_IMAGE", "inference-endpoints/vllm-cpu:0.32.0")
DOCKER_CACHE = docker_cache_dir()  # the teardown's leftover check looks there too
POOL = "cpu-dev"
CREATED: list[str] = []  # endpoint ids made here: their containers are removed whatever happens
STARTUP_S = 600  # container creation on vfs (~50 s) + vLLM-CPU load, on a shared 2-core machine


@pytest.fixture(scope="module")
def dockerd() -> Iterator[DockerDaemon]:
    assert dockerd_installed(), ("dockerd is not installed (scripts/setup.sh installs docker.io; "
                                 "so does scripts/build-engine-image.sh)")
    try:
        daemon = start_dockerd(DOCKER_CACHE, DOCKER_CACHE / "logs")
    except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
        pytest.fail(f"dockerd did not start: {exc}\n{_daemon_log(DOCKER_CACHE / 'logs' / 'dockerd.log')}")
    try:
        started = time.monotonic()
        result = subprocess.run([str(PROJECT / "scripts" / "build-engine-image.sh")],
                                env={**os.environ, "DOCKER_HOST": daemon.url, "IE_ENGINE_IMAGE": IMAGE},
                                capture_output=True, text=True, check=False, timeout=3600)
        assert result.returncode == 0, f"image build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        print(f"\n[docker] dockerd at {daemon.url} (started here: {daemon.started}); "
              f"image {IMAGE} ready in {time.monotonic() - started:.1f} s")
        yield daemon
    finally:
        if daemon.started:
            daemon.stop()


def _daemon_log(path: Path, chars: int = 4000) -> str:
    """The end of dockerd's log, which says why it did not come up."""
    try:
        return f"--- {path} (last {chars} characters) ---\n{path.read_text(errors='replace')[-chars:]}"
    except OSError as exc:
        return f"(no dockerd log at {path}: {exc})"


@pytest.fixture(scope="module")
def docker_pool(e2e: E2EStack, dockerd: DockerDaemon) -> Iterator[DockerRuntime]:
    """cpu-dev serve runs use the docker runtime, set up as `endpoints up --runtime docker` does
    (`LocalStack.use_docker`: it finds the module's dockerd answering and the image built); the
    reconcile schedule is paused meanwhile (the tests run reconcile in-process, so what it decides
    does not depend on timing)."""
    try:
        previous: EngineHost | None = EngineHost.load(POOL)  # type: ignore[assignment]
    except ValueError:
        previous = None
    assert e2e.stack.use_docker(DOCKER_CACHE, IMAGE) == dockerd.url
    host = EngineHost.load(POOL)
    assert isinstance(host, EngineHost)
    assert (host.runtime, host.image, host.docker_host) == ("docker", IMAGE, dockerd.url)
    state = e2e.stack.read_state()
    assert state is not None and state.dockerd_pid is None, "the stack must not stop a daemon it did not start"
    runtime = DockerRuntime(IMAGE, dockerd.url, gpu_count=0)
    try:
        with paused_deployment("reconcile-endpoints/self-healing"):
            yield runtime
    finally:
        for endpoint_id in CREATED:
            for engine in runtime.leftovers(endpoint_id):
                print(f"[docker] removing container {engine.name} left by a failed test")
                engine.stop(grace_s=2)
        with get_client(sync_client=True) as client:
            if previous is not None:
                previous.save(POOL, overwrite=True)
            else:
                try:
                    doc = client.read_block_document_by_name(POOL, block_type_slug="engine-host")
                    client.delete_block_document(doc.id)
                except ObjectNotFound:
                    pass


def diagnosis(e2e: E2EStack, endpoint_id: str) -> str:
    """The engine's and the worker's last log lines, for a failure message."""
    logs = e2e.settings.log_dir
    parts = []
    for path in [*sorted((logs / "engines").glob(f"{endpoint_id}-*.log")), logs / f"worker-{POOL}.log"]:
        if path.exists():
            parts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
    return "\n".join(parts)


def wait_container_gone(runtime: DockerRuntime, endpoint_id: str, timeout_s: float = 180) -> float:
    """Until the daemon has removed every container of the endpoint (vfs removal takes ~30 s)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if not runtime.client.containers.list(all=True, sparse=True,  # sparse: no inspect race
                                              filters={"label": f"{ENDPOINT_LABEL}={endpoint_id}"}):
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"containers of {endpoint_id} still there after {timeout_s:.0f} s")


def only_container(runtime: DockerRuntime, endpoint_id: str) -> DockerEngine:
    engines = runtime.leftovers(endpoint_id)
    assert len(engines) == 1, [e.name for e in engines]
    return engines[0]


def engine_processes_on(port: int) -> list[int]:
    """Host PIDs of vLLM processes serving `port` (a container's processes are visible here)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "vllm" in cmd and f"--port {port}" in cmd:
            found.append(proc.info["pid"])
    return found


def serve_run_processes(run_id: str) -> list[psutil.Process]:
    """The serve flow's own processes: the worker starts them with PREFECT__FLOW_RUN_ID."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("PREFECT__FLOW_RUN_ID") == run_id:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_docker_endpoint_serves_read_only_and_stops_clean(e2e: E2EStack, docker_pool: DockerRuntime) -> None:
    e2e.ensure_worker(POOL)
    ckpt = e2e.registry.find_checkpoint(e2e.org_id, "demo-tiny-llama")
    assert ckpt is not None
    started = time.monotonic()
    ep = e2e.create("docker-demo", startup_timeout_s=STARTUP_S)
    CREATED.append(ep.id)
    print(f"[docker] create -> healthy: {time.monotonic() - started:.1f} s")
    assert ep.status == "healthy", (ep.status, ep.reason_code, ep.reason_message, diagnosis(e2e, ep.id))
    assert ep.backend_url and ep.backend_api_key and ep.serve_run_id
    assert e2e.registry.open_lease_count(ep.id) == 1

    engine = only_container(docker_pool, ep.id)
    assert engine.exit_code() is None
    assert engine.labels["inference-endpoints.serve-run"] == ep.serve_run_id
    assert engine.labels["inference-endpoints.org"] == e2e.org_name
    host_config = engine.container.attrs["HostConfig"]
    assert host_config["NetworkMode"] == "host"
    spec = ServingSpec.from_json(ep.serving_config_json)
    assert spec.model_path == "/models/model"
    mounts = {m["Destination"]: m for m in engine.container.attrs["Mounts"]}
    assert mounts["/models/model"]["RW"] is False
    assert mounts["/models/model"]["Source"] == str(e2e.store.path_of(ckpt.location))

    backend = OpenAI(base_url=f"{ep.backend_url}/v1", api_key=ep.backend_api_key, max_retries=0)
    assert backend.completions.create(model="docker-demo", prompt="The endpoint", max_tokens=8).choices[0].text
    # The gateway learns of the status change on its next refresh: wait for the stable URL's
    # health check, as a client would, before calling it.
    deadline = time.monotonic() + 20
    while httpx.get(f"{e2e.url('docker-demo')}/health", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the stable URL never reported healthy"
        time.sleep(0.2)
    stable = OpenAI(base_url=f"{e2e.url('docker-demo')}/v1", api_key=e2e.api_key, max_retries=0)
    chat = stable.chat.completions.create(model="docker-demo", max_tokens=8,
                                          messages=[{"role": "user", "content": "hello"}])
    assert chat.choices[0].message.content is not None

    # The checkpoint is a read-only bind mount: even root inside the container gets EROFS.
    for command in (f"echo x > {spec.model_path}/config.json", f"touch {spec.model_path}/new-file"):
        result = engine.container.exec_run(["sh", "-c", command])
        assert result.exit_code != 0 and b"Read-only file system" in result.output, result
    # Nor can it take the mount back, or write anywhere but its tmpfs: no capability, none to gain.
    assert host_config["CapDrop"] == ["ALL"] and host_config["ReadonlyRootfs"] is True
    for command in (f"mount -o remount,bind,rw {spec.model_path}", f"umount {spec.model_path}",
                    "touch /opt/escaped"):
        result = engine.container.exec_run(["sh", "-c", command])
        assert result.exit_code != 0, (command, result)
    status = engine.container.exec_run(["sh", "-c", "grep -E '^(CapEff|NoNewPrivs)' /proc/1/status"])
    assert b"CapEff:\t0000000000000000" in status.output and b"NoNewPrivs:\t1" in status.output, status
    assert checkpoint_digest(e2e.store.path_of(ckpt.location)) == ckpt.digest
    # Nothing but the gateway (which holds the engine's key) gets an answer from the engine.
    assert assert_only_the_key_opens_the_engine(ep.backend_url, ep.backend_api_key) > 10

    port = backend_port(ep.backend_url)
    assert engine_processes_on(port), "the engine's processes should be visible from the host"
    stop_started = time.monotonic()
    assert e2e.stop("docker-demo", timeout_s=120) == "stopped"
    print(f"[docker] stop: {time.monotonic() - stop_started:.1f} s")
    # The engine is stopped when the stop returns; the daemon removes the exited container
    # on its own (slowly on vfs), which `wait_container_gone` below waits for.
    assert [c for c in docker_pool.leftovers(ep.id) if c.exit_code() is None] == [], "no engine left"
    print(f"[docker] daemon removed the stopped container {wait_container_gone(docker_pool, ep.id):.1f} s later")
    assert engine_processes_on(port) == [], "no engine process left"
    assert not port_open(port)
    assert e2e.registry.open_lease_count(ep.id) == 0, "lease not released"
    assert e2e.stop("docker-demo", remove=True) == "removed"


def test_a_killed_serve_run_leaves_a_container_that_reconcile_finds_by_label_and_removes(
    e2e: E2EStack, docker_pool: DockerRuntime,
) -> None:
    from flows.reconcile_endpoints import reconcile_endpoints

    e2e.ensure_worker(POOL)
    ep = e2e.create("docker-orphan", startup_timeout_s=STARTUP_S)
    CREATED.append(ep.id)
    assert ep.status == "healthy", (ep.status, ep.reason_code, ep.reason_message, diagnosis(e2e, ep.id))
    assert ep.serve_run_id and ep.backend_url
    engine = only_container(docker_pool, ep.id)

    # SIGKILL the serve flow's process: nothing runs its `finally`, and a container is not a
    # child process, so the engine keeps serving with no run watching it.
    serve = serve_run_processes(ep.serve_run_id)
    assert serve, "the serve run's process should be on this host"
    for proc in serve:
        proc.kill()
    deadline = time.monotonic() + 60
    while not is_final(run_state(ep.serve_run_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"[docker] serve run after SIGKILL: {run_state(ep.serve_run_id)}")
    assert is_final(run_state(ep.serve_run_id))
    assert engine.exit_code() is None and answers(ep.backend_url), "the orphan still serves"

    # Found by its labels: the endpoint id names it, the serve-run label says whose it was.
    [orphan] = docker_pool.leftovers(ep.id)
    assert orphan.id == engine.id
    assert orphan.labels["inference-endpoints.serve-run"] == ep.serve_run_id
    assert orphan.url == ep.backend_url

    # Reconcile (in-process, as its schedule would) stops and removes it. With no restarts
    # allowed it then fails the endpoint instead of starting a second engine on this machine.
    # The reconciler believes Prefect's "crashed" only once the serve run's record has gone
    # quiet too (its heartbeat stops with it), so passes before that decide nothing.
    started = time.monotonic()
    mine: list[dict[str, str]] = []
    while not any("orphan" in r["done"] for r in mine) and time.monotonic() - started < 90:
        rows = reconcile_endpoints(max_restarts=0)
        mine += [r for r in rows if r["endpoint"] == "docker-orphan"]
        time.sleep(1)
    print(f"[docker] reconcile: {time.monotonic() - started:.1f} s: {mine}")
    assert any("orphan" in r["done"] for r in mine), mine
    assert docker_pool.leftovers(ep.id) == [], "the orphan container is stopped and going"
    print(f"[docker] orphan removed {wait_container_gone(docker_pool, ep.id):.1f} s after reconcile")
    assert not answers(ep.backend_url)
    kinds = [ev.kind for ev in e2e.registry.activity(ep.id)]
    assert "orphan_stopped" in kinds
    after = e2e.endpoint("docker-orphan")
    assert after.status == "failed" and after.reason_code == "restart_limit", (after.status, after.reason_code)
    assert e2e.registry.open_lease_count(ep.id) == 0
    assert e2e.stop("docker-orphan", remove=True) == "removed"
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(ep.serve_run_id))
    assert run.state is not None and run.state.is_final()
