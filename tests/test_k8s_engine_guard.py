"""The Kubernetes engine runs the engine guard and holds no privilege, as the worker renders its Job.

The Job is rendered with prefect-kubernetes' own worker code and validated against the
`kubernetes` client's models (tests/k8s_support.py). Then the engine container's rendered
command runs here, through `sh -c` as the container would, with a stand-in for the image's
`python3`: it shows the boot line writes the guard where PYTHONPATH points and execs the engine
command with its arguments, and that the guard it wrote is the middleware vLLM would load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import V1Container, V1Job

from inference_endpoints.adapters.k8s_manifest import (
    APP_LABELS,
    ENGINE_SCRATCH_MOUNTS,
    job_variables,
    kube_literal,
)
from inference_endpoints.adapters.runtime.engine_guard import (
    GUARD_BOOT,
    GUARD_MIDDLEWARE,
    GUARD_SOURCE,
    GUARD_SOURCE_ENV,
    GUARD_TARGET,
)
from inference_endpoints.core.serving_config import ENGINE_MODULE
from tests.k8s_support import kubelet_expand, kubernetes_pool_template, validated, worker_manifest
from tests.test_k8s_manifest import INSTANCES, LABELS, engine_of, lora_spec

SCRATCH = {"/tmp", "/root", "/var/tmp"}
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture(scope="module")
def job() -> V1Job:
    variables = job_variables(INSTANCES["h100-80gb-x2"], lora_spec(), LABELS, checkpoint_pvc="ckpt-store")
    return validated(worker_manifest({**variables, "namespace": "endpoints"}), "V1Job")


def engine_env(engine: V1Container) -> dict[str, str]:
    """The engine's plain env values as the process sees them (after the kubelet's expansion)."""
    env: dict[str, str] = {}
    for item in engine.env or []:
        if item.value is not None:
            env[item.name] = kubelet_expand(item.value, env)
    return env


def test_kubelet_expansion_as_kubernetes_documents_it() -> None:
    env = {"A": "1"}
    assert kubelet_expand("$(A)-$(B)-$$(A)-$$-$x-$(-end$", env) == "1-$(B)-$(A)-$-$x-$(-end$"


@pytest.mark.parametrize("text", ["$(HOME)", "$$(A)", "a $ b $$ c", 'printf "%s" "$X" && exec "$@"', "$", "(x)"])
def test_rendered_strings_reach_the_container_unchanged(text: str) -> None:
    assert kubelet_expand(kube_literal(text), {"HOME": "/root", "A": "1", "X": "x"}) == text


def test_engine_command_boots_the_guard_then_the_templates_engine_command(job: V1Job) -> None:
    engine = engine_of(job)
    command = [kubelet_expand(part) for part in engine.command or []]
    default = kubernetes_pool_template()["variables"]["properties"]["engine_command"]["default"]
    assert command == ["sh", "-c", GUARD_BOOT, "ie-engine", *default]
    assert default == ["python3", "-m", ENGINE_MODULE]
    args = [kubelet_expand(arg) for arg in engine.args or []]
    at = args.index(GUARD_MIDDLEWARE[0])
    assert args[at:at + 2] == GUARD_MIDDLEWARE
    env = engine_env(engine)
    assert env["PYTHONPATH"] == GUARD_TARGET
    assert env[GUARD_SOURCE_ENV] == GUARD_SOURCE  # intact through Prefect's templating and the kubelet


def test_engine_holds_no_privilege(job: V1Job) -> None:
    engine = engine_of(job)
    context = engine.security_context
    assert context is not None
    assert context.allow_privilege_escalation is False
    assert context.capabilities is not None and context.capabilities.drop == ["ALL"]
    assert not context.capabilities.add
    assert context.read_only_root_filesystem is True
    assert context.seccomp_profile is not None and context.seccomp_profile.type == "RuntimeDefault"
    assert not context.privileged


def test_only_scratch_emptydirs_are_writable(job: V1Job) -> None:
    engine = engine_of(job)
    assert job.spec is not None and job.spec.template.spec is not None
    volumes = {v.name: v for v in job.spec.template.spec.volumes or []}
    mounts = {m.mount_path: m for m in engine.volume_mounts or []}
    writable = {path for path, m in mounts.items() if not m.read_only}
    assert writable == SCRATCH | {"/dev/shm"}
    for path in SCRATCH:
        scratch = volumes[mounts[path].name].empty_dir
        assert scratch is not None and scratch.size_limit, f"{path} is not a bounded emptyDir"
    assert {m.name for m in mounts.values() if m.mount_path.startswith("/models")} == {"checkpoints"}
    claim = volumes["checkpoints"].persistent_volume_claim
    assert claim is not None and claim.read_only is True


def test_the_service_account_token_stays_out_of_the_engine(job: V1Job) -> None:
    """An existing mount at the token's path makes Kubernetes skip its own for that container."""
    mounts = {m.mount_path: m for m in engine_of(job).volume_mounts or []}
    assert mounts[TOKEN_DIR].read_only is True
    assert job.spec is not None and job.spec.template.spec is not None
    [flow] = job.spec.template.spec.containers
    assert TOKEN_DIR not in {m.mount_path for m in flow.volume_mounts or []}  # the flow keeps its own


def test_pod_labels_keep_the_app_name(job: V1Job) -> None:
    assert job.spec is not None and job.spec.template.metadata is not None
    labels = job.spec.template.metadata.labels or {}
    assert APP_LABELS.items() <= labels.items()
    assert labels["inference-endpoints.endpoint-id"] == LABELS.endpoint_id


def test_template_defaults_alone_keep_the_scratch_mounts() -> None:
    default_job = validated(worker_manifest({}), "V1Job")
    engine = engine_of(default_job)
    paths = {m.mount_path for m in engine.volume_mounts or []}
    assert {m["mountPath"] for m in ENGINE_SCRATCH_MOUNTS} <= paths
    assert engine.security_context is not None and engine.security_context.read_only_root_filesystem
    template = kubernetes_pool_template()
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert {m["name"] for m in ENGINE_SCRATCH_MOUNTS} <= empty_dirs


STAND_IN = '''
"""Stand-in for the image's python3: load the middleware named on the command line, try it."""
import asyncio, importlib, json, os, sys
import httpx
argv = sys.argv[1:]
name = argv[argv.index("--middleware") + 1]
module_name, _, class_name = name.rpartition(".")
module = importlib.import_module(module_name)

async def engine(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"generated"})

async def statuses():
    app = getattr(module, class_name)(engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e") as c:
        key = {"Authorization": "Bearer " + os.environ["VLLM_API_KEY"]}
        return [(await c.post("/tokenize")).status_code, (await c.post("/tokenize", headers=key)).status_code,
                (await c.get("/health")).status_code]

print(json.dumps({"pid": os.getpid(), "argv": argv, "module": module.__file__,
                  "statuses": asyncio.run(statuses())}))
'''


def test_the_rendered_command_writes_the_guard_and_execs_the_engine(job: V1Job, tmp_path: Path) -> None:
    engine = engine_of(job)
    target = tmp_path / "container-tmp" / "ie-engine-guard"  # the container's /tmp, not this host's
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "stand_in.py").write_text(STAND_IN)
    python3 = bin_dir / "python3"
    python3.write_text(f'#!/bin/sh\nexec {sys.executable} {bin_dir / "stand_in.py"} "$@"\n')
    python3.chmod(0o755)
    env = {k: v.replace(GUARD_TARGET, str(target)) for k, v in engine_env(engine).items()}
    env |= {"PATH": f"{bin_dir}:/usr/bin:/bin", "VLLM_API_KEY": "be_secret"}  # the key: from its Secret
    command = [kubelet_expand(part).replace(GUARD_TARGET, str(target)) for part in engine.command or []]
    args = [kubelet_expand(arg) for arg in engine.args or []]
    proc = subprocess.Popen([*command, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    report: dict[str, Any] = json.loads(out)
    assert report["pid"] == proc.pid, "sh did not exec the engine"
    assert report["argv"] == ["-m", ENGINE_MODULE, *args]
    assert Path(report["module"]) == target / "ie_engine_guard.py"
    assert (target / "ie_engine_guard.py").read_text() == GUARD_SOURCE
    assert report["statuses"] == [401, 200, 200]  # no key: refused; key: through; /health open
