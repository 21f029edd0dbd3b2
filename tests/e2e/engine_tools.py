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
