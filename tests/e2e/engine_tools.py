"""Helpers for looking at a live engine from the outside (processes, ports, mounts)."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import psutil


def backend_port(url: str) -> int:
    port = urlparse(url).port
    assert port is not None
    return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def listener_pid(port: int) -> int | None:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            return conn.pid
    return None


def process_tree(pid: int) -> list[int]:
    try:
        proc = psutil.Process(pid)
        return [pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def write_in_mount_namespace(pid: int, path: str) -> subprocess.CompletedProcess[str]:
    """Try to create a file at `path` as root, from inside the engine's mount namespace."""
    nsenter = shutil.which("nsenter")
    assert nsenter, "nsenter (util-linux) is needed for this check"
    return subprocess.run([nsenter, "-t", str(pid), "-m", "--", "sh", "-c", f"echo x > '{path}'"],
                          capture_output=True, text=True, check=False)


def as_the_engine(pid: int, command: str) -> subprocess.CompletedProcess[str]:
    """Run `command` inside the engine's mount namespace with exactly the engine's privileges.

    nsenter (run by root here) enters the namespace; setpriv then takes the process down to
    the capability sets the engine itself holds (read from /proc), so this is what code running
    in the engine could do.
    """
    status = engine_privileges(pid)
    assert status["CapBnd"] == status["CapEff"] == "0000000000000000", status
    return subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "setpriv", "--no-new-privs",
                           "--bounding-set", "-all", "--inh-caps", "-all", "--ambient-caps", "-all",
                           "--", "sh", "-c", command], capture_output=True, text=True, check=False)


def engine_privileges(pid: int) -> dict[str, str]:
    """The capability sets and no_new_privs flag of a process, from /proc/PID/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap") or key == "NoNewPrivs":
            fields[key] = value.strip()
    return fields


def swap_tensor_shape(checkpoint: Path, tensor: str) -> None:
    """Damage a checkpoint the way bit rot in a header would: same byte count, wrong shape.

    Our inspection (sizes and offsets) accepts it; vLLM's weight loader does not.
    """
    weights = checkpoint / "model.safetensors"
    raw = weights.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    header[tensor]["shape"] = list(reversed(header[tensor]["shape"]))
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (length - len(encoded))
    assert len(encoded) == length
    weights.write_bytes(raw[:8] + encoded + raw[8 + length :])



def engine_leaders(endpoint_id: str) -> list[int]:
    """Every engine API server of the endpoint (a replacement runs two): the processes carrying
    the endpoint label whose parent does not."""
    from inference_endpoints.adapters.runtime.process import ENDPOINT_ENV

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(ENDPOINT_ENV) != endpoint_id:
                continue
            parent = proc.parent()
            if parent is None or parent.environ().get(ENDPOINT_ENV) != endpoint_id:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def engine_leader(endpoint_id: str) -> psutil.Process | None:
    leaders = engine_leaders(endpoint_id)
    try:
        return psutil.Process(leaders[0]) if leaders else None
    except psutil.NoSuchProcess:
        return None


def flow_run_process(flow_run_id: str) -> psutil.Process | None:
    """The process a Prefect worker started for a flow run (it carries the run's id)."""
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("PREFECT__FLOW_RUN_ID") == flow_run_id:
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


PROBE_ROUTES = {("get", "/health"), ("head", "/health"), ("get", "/metrics")}


def assert_only_the_key_opens_the_engine(backend_url: str, key: str) -> int:
    """Every route of the engine's own OpenAPI document, called without its key, is refused.

    The caller is this test process: a local process that is not the gateway. Only the
    platform's probe and scrape (`GET /health`, `GET /metrics`) answer, and they generate
    nothing. Returns how many routes were tried.
    """
    import httpx

    with httpx.Client(base_url=backend_url, timeout=30) as client:
        assert client.get("/openapi.json").status_code == 401, "the engine's own route list is open"
        spec = client.get("/openapi.json", headers={"Authorization": f"Bearer {key}"})
        assert spec.status_code == 200, spec.text[:200]
        body = {"model": "m", "prompt": "Hello", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4, "input": "hi", "text": "hi", "tokens": [1, 2]}
        tried = 0
        for path, methods in spec.json()["paths"].items():
            concrete = path.replace("{", "").replace("}", "")  # e.g. /v1/models/{id}
            for method in methods:
                if method not in ("get", "post", "put", "delete", "patch"):
                    continue
                tried += 1
                answer = client.request(method.upper(), concrete, json=body)
                if (method, path) in PROBE_ROUTES:
                    assert '"choices"' not in answer.text, (method, path)
                    continue
                assert answer.status_code == 401, (method, path, answer.status_code, answer.text[:200])
        return tried
