"""Run one vLLM server as a Docker container (docker-py), with its checkpoints mounted read-only.

How the container is built (`container_spec`, pure and unit-tested against docker-py's types):
- the image's own interpreter runs `-m vllm.entrypoints.openai.api_server` with the rendered
  arguments; the interpreter is an image-level detail, read from the image label
  `inference-endpoints.engine-python` (the local CPU image sets `/opt/venv/bin/python`),
  else `python3` as in the official `vllm/vllm-openai` image;
- host networking: the engine binds the internal address and port the serve flow chose,
  exactly as the process runtime does, and only the gateway exposes it;
- every checkpoint is a read-only bind mount at the path the renderer used (`/models/...`);
  a write from inside, even as root, fails with `Read-only file system`;
- GPUs through `device_requests` (what `docker run --gpus N` sends), shared memory sized for
  vLLM's worker processes (Docker's 64 MB default is too small), and labels naming the org,
  endpoint and serve run so a container left behind by a dead serve run is found again.

Containers are created with auto-removal: stopping one (`docker stop -t grace`) returns once the
engine has stopped, and the daemon removes it even if the serve flow is gone by then (on the vfs
storage driver removal deletes a copy of the image and takes ~30 s; a serve flow waiting for it
would outlive its worker's kill grace). Exit code and log lines are captured before removal: a
thread waits for the exit, another copies the output to the engine's log file.

A container is not a child of the serve flow: if the flow's process is SIGKILLed the container
keeps serving. `DockerRuntime.leftovers` finds it by label; stopping the handle ends it.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest, Mount

from inference_endpoints.adapters.runtime import CONTAINER_MODEL_ROOT
from inference_endpoints.adapters.runtime.base import EngineLabels
from inference_endpoints.adapters.runtime.engine_guard import (
    GUARD_BOOT,
    GUARD_MIDDLEWARE,
    GUARD_SOURCE,
    GUARD_SOURCE_ENV,
    GUARD_TARGET,
)
from inference_endpoints.core.serving_config import ENGINE_MODULE, ServingSpec

ENGINE_PYTHON_LABEL = "inference-endpoints.engine-python"
DEFAULT_ENGINE_PYTHON = "python3"  # the official vllm/vllm-openai image
ENDPOINT_LABEL = "inference-endpoints.endpoint-id"
MANAGED_LABEL = "inference-endpoints.managed"
SHM_GIB_PER_DEVICE = 2
# Creating or removing a container copies or deletes the whole image on the vfs storage driver:
# ~50 s and ~30 s for the 3.6 GB vLLM-CPU image here, over 60 s (docker-py's default timeout)
# when the disk is busy. Near-instant on overlay2.
API_TIMEOUT_S = 600
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")
_ENDED = ("exited", "dead", "removing")


def shm_size_for(gpu_count: int) -> str:
    """Shared memory for vLLM: 2 GiB per GPU (tensor-parallel workers share tensors through it).

    CPU engines (gpu_count 0) get the same 2 GiB as one GPU: the API server and the engine
    core exchange requests through shared memory too. It is a tmpfs limit, not a reservation.
    """
    return f"{SHM_GIB_PER_DEVICE * max(1, gpu_count)}g"


def container_name(labels: EngineLabels) -> str:
    """One container per endpoint and serve run: `ie-<endpoint id>-<run id prefix>`."""
    return _NAME_UNSAFE.sub("-", f"ie-{labels.endpoint_id}-{labels.serve_run_id[:8]}")


def container_spec(
    spec: ServingSpec,
    *,
    image: str,
    engine_python: str,
    sources: Mapping[str, Path | str],
    host: str,
    port: int,
    labels: EngineLabels,
    gpu_count: int,
) -> dict[str, Any]:
    """The keyword arguments of `client.containers.run` for one engine. Pure: no daemon needed."""
    mounts = [
        Mount(target=m.target, source=str(sources[m.target]), type="bind", read_only=True)
        for m in spec.mounts
    ]
    device_requests = (
        [DeviceRequest(count=gpu_count, capabilities=[["gpu"]])] if gpu_count > 0 else []
    )
    return {
        "image": image,
        "name": container_name(labels),
        # The guard travels in the environment and is written to the container's own tmpfs
        # before vLLM starts: no host path it would need on a remote Docker host.
        "entrypoint": ["sh", "-c", GUARD_BOOT, "ie-engine", engine_python, "-m", ENGINE_MODULE],
        "command": [*spec.args, *GUARD_MIDDLEWARE, "--host", host, "--port", str(port)],
        "environment": {**spec.env, "VLLM_API_KEY": spec.api_key, "PYTHONPATH": GUARD_TARGET,
                        GUARD_SOURCE_ENV: GUARD_SOURCE},
        "mounts": mounts,
        "labels": {**labels.as_dict(), MANAGED_LABEL: "true"},
        "network_mode": "host",
        "shm_size": shm_size_for(gpu_count),
        # No privilege: no capability, none to gain, an immutable root filesystem. vLLM writes
        # only its caches (under HOME=/root) and temporary files, each on its own tmpfs.
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "tmpfs": dict(ENGINE_TMPFS),
        "device_requests": device_requests,
        # The daemon removes the container once it has stopped, even if the serve flow is gone
        # by then (removal copies nothing but can take ~30 s on vfs).
        "auto_remove": True,
        "detach": True,
    }


# What vLLM writes under the read-only root: its caches (HOME=/root) and temporary files.
ENGINE_TMPFS = {"/tmp": "rw,exec,size=1g", "/root": "rw,exec,size=1g", "/var/tmp": "rw,size=256m"}


def _arg(args: list[str], flag: str) -> str | None:
    for i, value in enumerate(args[:-1]):
        if value == flag:
            return args[i + 1]
    return None


class DockerEngine:
    """A started engine container. Its output is also copied to `log_path` while it runs."""

    def __init__(self, container: Any, host: str, port: int, log_path: Path | None = None):
        self.container = container
        self.host = host
        self.port = port
        self.log_path = log_path
        self._last_exit: int | None = None
        self._exited = threading.Event()

    @classmethod
    def from_container(cls, container: Any) -> DockerEngine:
        args = list(container.attrs.get("Args") or [])
        port = _arg(args, "--port")
        return cls(container, _arg(args, "--host") or "127.0.0.1", int(port) if port else 0)

    @property
    def id(self) -> str:
        return str(self.container.id)

    @property
    def name(self) -> str:
        return str(self.container.name)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.container.labels)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}" if self.port else ""

    def exit_code(self) -> int | None:
        try:
            self.container.reload()
        except NotFound:  # auto-removed (or removed behind our back): not running
            self._exited.wait(timeout=2)
            return self._last_exit if self._last_exit is not None else 137
        state = self.container.attrs.get("State") or {}
        if state.get("Status") in _ENDED:
            self._last_exit = int(state.get("ExitCode", 1))
            return self._last_exit
        return None

    def watch_exit(self, stream_source: Any) -> None:
        """Record the exit code when the container stops, before auto-removal erases it."""
        def wait() -> None:
            with contextlib.suppress(DockerException, requests.RequestException):
                self._last_exit = int(stream_source.wait(condition="not-running")["StatusCode"])
            self._exited.set()

        threading.Thread(target=wait, name=f"exit-{self.name}", daemon=True).start()

    def tail(self, lines: int = 20) -> list[str]:
        try:
            raw = self.container.logs(stdout=True, stderr=True, tail=lines)
        except (NotFound, APIError):  # auto-removed, or being removed: the copy on disk has it all
            return self._file_tail(lines)
        return raw.decode(errors="replace").splitlines()[-lines:]

    def _file_tail(self, lines: int) -> list[str]:
        if self.log_path is None or not self.log_path.exists():
            return []
        return self.log_path.read_text(errors="replace").splitlines()[-lines:]

    def follow_logs(self, stream_source: Any = None) -> None:
        """Copy the container's output to `log_path` in a daemon thread (ends with the container).

        `stream_source` is the same container seen through a client without a read timeout:
        an idle engine writes nothing for minutes, which would end a timed-out stream.
        """
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        source = stream_source if stream_source is not None else self.container
        thread = threading.Thread(target=self._copy_logs, args=(source,), name=f"logs-{self.name}",
                                  daemon=True)
        thread.start()

    def _copy_logs(self, source: Any) -> None:
        assert self.log_path is not None
        with contextlib.suppress(DockerException, requests.RequestException, OSError), \
                self.log_path.open("ab") as out:
            for chunk in source.logs(stream=True, follow=True, stdout=True, stderr=True):
                out.write(chunk)
                out.flush()

    def stop(self, grace_s: float = 10.0) -> None:
        """`docker stop -t grace` (SIGTERM, SIGKILL after grace); the daemon then removes it.

        Returns once the engine has stopped serving. A container that never started, or one
        created without auto-removal, is removed here.
        """
        try:
            self.container.reload()
        except NotFound:
            return
        status = (self.container.attrs.get("State") or {}).get("Status")
        if status not in _ENDED and status != "created":
            try:
                self.container.stop(timeout=max(0, round(grace_s)))
            except NotFound:
                return
            except (APIError, requests.RequestException):
                with contextlib.suppress(NotFound, APIError):
                    self.container.kill()
            self.exit_code()
        auto_remove = bool((self.container.attrs.get("HostConfig") or {}).get("AutoRemove"))
        if status in ("created", "dead") or not auto_remove:
            with contextlib.suppress(NotFound, APIError):  # 409: removal already in progress
                self.container.remove(force=True)


class DockerRuntime:
    """Engines as containers on a Docker daemon (GPU hosts, or CPU hosts with the local image)."""

    kind = "docker"

    def __init__(self, image: str, docker_host: str | None, gpu_count: int,
                 engine_python: str | None = None, api_timeout_s: int = API_TIMEOUT_S):
        if not image:
            raise ValueError("the docker runtime needs an engine image (catalog or engine-host block)")
        self.image = image
        self.docker_host = docker_host
        self.gpu_count = gpu_count
        self.engine_python = engine_python
        self.api_timeout_s = api_timeout_s
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._connect(self.api_timeout_s)
        return self._client

    def _connect(self, timeout_s: int | None) -> Any:
        if self.docker_host:
            return docker.DockerClient(base_url=self.docker_host, timeout=timeout_s)
        return docker.from_env(timeout=timeout_s)

    def model_root(self, endpoint_id: str) -> str:
        return CONTAINER_MODEL_ROOT

    def image_python(self) -> str:
        """The engine interpreter: explicit, else the image's label, else `python3`."""
        if self.engine_python:
            return self.engine_python
        try:
            image = self.client.images.get(self.image)
        except ImageNotFound:
            try:
                image = self.client.images.pull(self.image)
            except (APIError, requests.RequestException) as exc:
                raise RuntimeError(
                    f"engine image {self.image} is not on the Docker daemon at "
                    f"{self.docker_host or 'DOCKER_HOST'} and cannot be pulled ({exc}); "
                    "build the local CPU image with scripts/build-engine-image.sh") from exc
        return str((image.labels or {}).get(ENGINE_PYTHON_LABEL) or DEFAULT_ENGINE_PYTHON)

    def start(
        self,
        spec: ServingSpec,
        *,
        sources: dict[str, Path],
        host: str,
        port: int,
        labels: EngineLabels,
        log_path: Path,
    ) -> DockerEngine:
        kwargs = container_spec(spec, image=self.image, engine_python=self.image_python(),
                                sources=sources, host=host, port=port, labels=labels,
                                gpu_count=self.gpu_count)
        name = kwargs["name"]
        # A retried serve run has the same run id, hence the same name: its old container is stale.
        self._remove(name)
        kwargs.pop("detach")
        try:
            # create, then start: if the serve run is stopped (SIGTERM) while the daemon is still
            # creating, the container it finishes later was never started and cannot serve.
            container = self.client.containers.create(**kwargs)
            container.start()
        except BaseException:
            self._remove(name)
            raise
        engine = DockerEngine(container, host, port, log_path)
        watched = self._connect(None).containers.get(container.id)  # no read timeout: waits long
        engine.watch_exit(watched)
        engine.follow_logs(watched)
        return engine

    def _remove(self, name: str) -> None:
        with contextlib.suppress(NotFound, APIError, requests.RequestException):
            self.client.containers.get(name).remove(force=True)

    def leftovers(self, endpoint_id: str) -> list[DockerEngine]:
        """This endpoint's containers, running or stopped (`exit_code()` tells which), except
        those the daemon is already removing."""
        containers = self.client.containers.list(  # one removed between list and inspect is gone
            all=True, filters={"label": f"{ENDPOINT_LABEL}={endpoint_id}"}, ignore_removed=True)
        return [DockerEngine.from_container(c) for c in containers if c.status != "removing"]
