"""The accelerator exporter: real process trees on this CPU host, a stand-in NVML for GPU hosts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inference_endpoints.adapters.metrics.exporter import (
    NvmlSampler,
    ProcessTreeSampler,
    engine_pids,
    make_sampler,
    start_exporter,
)
from inference_endpoints.adapters.runtime.base import EngineLabels

LABELS = EngineLabels("acme", "ep_1", "chat", "run-1")
BURN_S = 0.5  # CPU seconds the busy child burns after `go`: an amount of work, not a duration
# A leader whose child, on `go`, burns BURN_S of its own CPU time, says `burned` and waits for
# `release`; the leader then says `reaped` and idles (a process tree like vLLM's). Files in DIR
# carry the handshakes, so nothing depends on how fast this machine is.
CHILD = ("import os, sys, time\n"
         "d = sys.argv[1]\n"
         "while not os.path.exists(d + '/go'): time.sleep(0.02)\n"
         "t = time.process_time()\n"
         "while time.process_time() - t < float(sys.argv[2]): pass\n"
         "open(d + '/burned', 'w').close()\n"
         "while not os.path.exists(d + '/release'): time.sleep(0.02)\n")
TREE = ("import subprocess, sys, time\n"
        "subprocess.run([sys.executable, '-c', sys.argv[1], sys.argv[2], sys.argv[3]])\n"
        "open(sys.argv[2] + '/reaped', 'w').close()\n"
        "time.sleep(600)\n")


@dataclass
class Tree:
    proc: subprocess.Popen[bytes]
    dir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def say(self, name: str) -> None:
        (self.dir / name).touch()

    def wait(self, name: str, timeout_s: float = 120) -> None:
        """Wait for the tree's handshake file (the deadline guards a hung child; it is no assertion on speed)."""
        deadline = time.monotonic() + timeout_s
        while not (self.dir / name).exists():
            assert self.proc.poll() is None, f"the tree exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, f"no {name!r} from the tree in {timeout_s:.0f} s"
            time.sleep(0.02)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    proc = subprocess.Popen([sys.executable, "-c", TREE, CHILD, str(tmp_path), str(BURN_S)],
                            start_new_session=True)
    yield Tree(proc, tmp_path)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def scrape(url: str) -> dict[str, list[Any]]:
    text = httpx.get(f"{url}/metrics", headers={"Accept": "text/plain"}, timeout=5).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_cpu_host_exports_the_engine_trees_cpu_and_memory(tree: Tree) -> None:
    exporter = start_exporter(LABELS, lambda: [tree.pid], "127.0.0.1")
    try:
        assert exporter.device == "cpu"
        assert exporter.url.startswith("http://127.0.0.1:")
        tree.say("go")
        tree.wait("burned")  # BURN_S of CPU since the exporter's first sample
        families = scrape(exporter.url)
        util = families["ie_device_utilization_ratio"]
        assert [s.labels["device"] for s in util] == ["cpu"]
        assert 0 < util[0].value <= 1.0  # the child's CPU over the host's cores
        cpu = families["ie_device_cpu_seconds"][0]
        # /proc counts whole clock ticks (10 ms), so a few may be missing from the burned work
        assert cpu.name == "ie_device_cpu_seconds_total" and cpu.value >= BURN_S - 0.05
        used = families["ie_device_memory_used_bytes"][0].value
        assert 1 << 20 < used < psutil.virtual_memory().total
        assert families["ie_device_memory_total_bytes"][0].value == psutil.virtual_memory().total
        assert families["ie_device_power_watts"] == []  # no power on CPU hosts
        info = families["ie_device_info"][0].labels
        assert (info["device"], info["serve_run"]) == ("cpu", "run-1")
        again = scrape(exporter.url)["ie_device_cpu_seconds"][0].value
        assert again >= cpu.value  # a counter
    finally:
        exporter.stop()
        exporter.stop()  # idempotent
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{exporter.url}/metrics", timeout=2)


def test_cpu_seconds_never_go_down_when_a_child_exits(tree: Tree) -> None:
    sampler = ProcessTreeSampler(lambda: [tree.pid])
    tree.say("go")
    tree.wait("burned")
    during = sampler.sample()[0].cpu_seconds
    tree.say("release")
    tree.wait("reaped")  # the busy child has exited; its CPU seconds are gone from the live tree
    after = sampler.sample()[0]
    assert during is not None and after.cpu_seconds is not None
    assert after.cpu_seconds >= during >= BURN_S - 0.05
    time.sleep(sampler.min_interval_s + 0.1)  # let the next sample compute a utilization
    idle = sampler.sample()[0]
    assert idle.cpu_seconds is not None and after.cpu_seconds <= idle.cpu_seconds <= after.cpu_seconds + 0.01
    # Only the sleeping leader is left: at most a clock tick (10 ms) over the interval.
    assert idle.utilization is not None and idle.utilization < 0.05


# ---- NVML ---------------------------------------------------------------------------------------

class FakeNvml(SimpleNamespace):
    """Just the pynvml calls the exporter makes; GPU 1 runs the engine."""

    class NVMLError(Exception):
        pass

    def __init__(self, engine_pid: int, init_fails: bool = False):
        super().__init__()
        self.engine_pid = engine_pid
        self.init_fails = init_fails
        self.shut = False

    def nvmlInit(self) -> None:
        if self.init_fails:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        return [SimpleNamespace(pid=self.engine_pid if h == 1 else 999_999)]

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(used=40 * 2**30, total=80 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=87)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return 412_500  # milliwatts


def test_gpu_host_exports_the_engines_gpus_through_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(engine_pid=4242)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    exporter = start_exporter(LABELS, lambda: [4242], "127.0.0.1")
    try:
        assert exporter.device == "gpu" and isinstance(exporter.sampler, NvmlSampler)
        families = scrape(exporter.url)
        util = families["ie_device_utilization_ratio"]
        assert [(s.labels["device"], s.labels["index"], s.value) for s in util] == [("gpu", "1", 0.87)]
        assert families["ie_device_power_watts"][0].value == 412.5
        assert families["ie_device_memory_used_bytes"][0].value == 40 * 2**30
        assert families["ie_device_memory_total_bytes"][0].value == 80 * 2**30
        assert families["ie_device_cpu_seconds"] == []
        assert families["ie_device_info"][0].labels["model"] == "NVIDIA H100 80GB HBM3"
    finally:
        exporter.stop()
    assert fake.shut


def test_no_driver_falls_back_to_the_cpu_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(1, init_fails=True))
    assert isinstance(make_sampler(lambda: [os.getpid()]), ProcessTreeSampler)


def test_engine_pids_for_processes_containers_and_unknowns() -> None:
    assert engine_pids(SimpleNamespace(pids=lambda: [1, 2]))() == [1, 2]
    container = SimpleNamespace(top=lambda ps_args: {"Titles": ["PID"], "Processes": [["12"], ["13"]]})
    assert engine_pids(SimpleNamespace(container=container))() == [12, 13]
    assert engine_pids(object())() == []
