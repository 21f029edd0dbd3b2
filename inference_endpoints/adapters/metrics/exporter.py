"""The accelerator exporter each serve run starts next to its engine.

On NVIDIA hosts it reads the GPUs the engine uses through NVML (`nvidia-ml-py`,
imported lazily): utilization, memory used/total, power. Elsewhere (CPU hosts such
as ours, or NVML missing) it reports the engine's *process tree*: CPU seconds, its
share of the host's CPUs, and resident memory. Every sample says which with the
`device` label ("gpu" or "cpu"), so the metrics tab can say what it shows. Org and
endpoint labels come from service discovery, like the engine's own metrics.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

import psutil
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from inference_endpoints.adapters.runtime.base import EngineLabels

log = logging.getLogger(__name__)
PidSource = Callable[[], list[int]]


@dataclass(frozen=True)
class DeviceSample:
    device: str  # "gpu" or "cpu"
    index: str  # GPU index; "" for the CPU process tree
    model: str  # GPU product name, or "cpu"
    utilization: float | None  # 0..1
    memory_used_bytes: float | None
    memory_total_bytes: float | None
    power_watts: float | None = None  # GPU only
    cpu_seconds: float | None = None  # CPU only (user + system of the tree, monotonic)


class Sampler(Protocol):
    device: str

    def sample(self) -> list[DeviceSample]: ...

    def close(self) -> None: ...


class ProcessTreeSampler:
    """CPU use and resident memory of the engine's processes (vLLM runs three)."""

    device = "cpu"

    def __init__(self, pids: PidSource, min_interval_s: float = 0.5):
        self.pids = pids
        self.min_interval_s = min_interval_s
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, create time) -> last CPU seconds
        self._last: tuple[float, float] | None = None  # (wall time, total CPU seconds)
        self._utilization: float | None = None
        self._lock = threading.Lock()
        self.sample()  # prime, so the first scrape already has a utilization

    def _tree(self) -> list[psutil.Process]:
        procs: dict[int, psutil.Process] = {}
        for pid in self.pids():
            try:
                proc = psutil.Process(pid)
                procs[pid] = proc
                for child in proc.children(recursive=True):
                    procs[child.pid] = child
            except psutil.Error:
                continue
        return list(procs.values())

    def sample(self) -> list[DeviceSample]:
        with self._lock:
            rss = 0.0
            live = 0
            for proc in self._tree():
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        key = (proc.pid, proc.create_time())
                        rss += proc.memory_info().rss
                except psutil.Error:
                    continue
                live += 1
                # Exited processes keep their last CPU seconds, so the counter never goes down.
                self._cpu[key] = max(self._cpu.get(key, 0.0), times.user + times.system)
            if not live:
                return []
            total = sum(self._cpu.values())
            now = time.monotonic()
            if self._last is None:
                self._last = (now, total)
            elif now - self._last[0] >= self.min_interval_s:
                wall = now - self._last[0]
                cpus = psutil.cpu_count() or 1
                self._utilization = max(0.0, min(1.0, (total - self._last[1]) / wall / cpus))
                self._last = (now, total)
            return [DeviceSample("cpu", "", "cpu", self._utilization, rss,
                                 float(psutil.virtual_memory().total), cpu_seconds=total)]

    def close(self) -> None:
        return None


class NvmlSampler:
    """GPUs through NVML: those running one of the engine's processes, else every visible GPU."""

    device = "gpu"

    def __init__(self, nvml: Any, pids: PidSource):
        self.nvml = nvml
        self.pids = pids
        self.count = int(nvml.nvmlDeviceGetCount())

    def _used_by_engine(self, handles: list[Any]) -> list[int]:
        engine = set(self.pids())
        found = []
        for i, handle in enumerate(handles):
            try:
                procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except self.nvml.NVMLError:
                continue
            if any(p.pid in engine for p in procs):
                found.append(i)
        return found

    def sample(self) -> list[DeviceSample]:
        nvml = self.nvml
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self.count)]
        chosen = self._used_by_engine(handles) or list(range(self.count))
        out = []
        for i in chosen:
            h = handles[i]
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            name = nvml.nvmlDeviceGetName(h)
            try:
                power: float | None = nvml.nvmlDeviceGetPowerUsage(h) / 1000.0  # milliwatts
            except nvml.NVMLError:
                power = None
            out.append(DeviceSample(
                "gpu", str(i), name.decode() if isinstance(name, bytes) else str(name),
                nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0, float(mem.used),
                float(mem.total), power_watts=power))
        return out

    def close(self) -> None:
        with contextlib.suppress(self.nvml.NVMLError):
            self.nvml.nvmlShutdown()


def nvml_sampler(pids: PidSource) -> NvmlSampler | None:
    """An NVML sampler if `nvidia-ml-py` is installed and sees at least one GPU."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.info("NVML unavailable (%s): exporting CPU metrics", exc)
        return None
    sampler = NvmlSampler(pynvml, pids)
    if sampler.count == 0:
        sampler.close()
        return None
    return sampler


def make_sampler(pids: PidSource) -> Sampler:
    return nvml_sampler(pids) or ProcessTreeSampler(pids)


class DeviceCollector:
    """Turns samples into Prometheus families at scrape time (no background thread)."""

    def __init__(self, sampler: Sampler, serve_run: str):
        self.sampler = sampler
        self.serve_run = serve_run

    def collect(self) -> Iterator[Metric]:
        labels = ["device", "index"]
        util = GaugeMetricFamily("ie_device_utilization_ratio", "GPU utilization (NVML), or the "
                                 "share of the host's CPUs the engine's process tree used since "
                                 "the last scrape (device=cpu)", labels=labels)
        used = GaugeMetricFamily("ie_device_memory_used_bytes", "GPU memory used, or resident "
                                 "memory of the engine's process tree (device=cpu)", labels=labels)
        total = GaugeMetricFamily("ie_device_memory_total_bytes", "GPU memory, or host memory "
                                  "(device=cpu)", labels=labels)
        power = GaugeMetricFamily("ie_device_power_watts", "GPU power draw", labels=labels)
        cpu = CounterMetricFamily("ie_device_cpu_seconds", "CPU seconds (user + system) of the "
                                  "engine's process tree", labels=labels)
        info = GaugeMetricFamily("ie_device_info", "What the device metrics describe",
                                 labels=[*labels, "model", "serve_run"])
        for s in self.sampler.sample():
            values = [s.device, s.index]
            info.add_metric([*values, s.model, self.serve_run], 1)
            for family, value in ((util, s.utilization), (used, s.memory_used_bytes),
                                  (total, s.memory_total_bytes), (power, s.power_watts),
                                  (cpu, s.cpu_seconds)):
                if value is not None:
                    family.add_metric(values, value)
        yield from (util, used, total, power, cpu, info)


@dataclass
class Exporter:
    server: WSGIServer
    thread: threading.Thread
    sampler: Sampler
    host: str
    port: int

    @property
    def url(self) -> str:
        """Base address; Prometheus scrapes `<url>/metrics` (discovery appends it)."""
        return f"http://{self.host}:{self.port}"

    @property
    def device(self) -> str:
        return self.sampler.device

    stopped: bool = False

    def stop(self) -> None:
        """Idempotent; safe in a `finally`."""
        if self.stopped:
            return
        self.stopped = True
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        self.sampler.close()


def start_exporter(labels: EngineLabels, pids: PidSource, host: str,
                   sampler: Sampler | None = None, port: int = 0) -> Exporter:
    """Serve the engine's device metrics on `host`:`port` (0: a free port), in a daemon thread."""
    sampler = sampler or make_sampler(pids)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeviceCollector(sampler, labels.serve_run_id))
    server, thread = start_http_server(port, addr=host, registry=registry)
    thread.name = f"ie-exporter-{labels.endpoint_id}"
    port = int(server.server_address[1])
    return Exporter(server, thread, sampler, host, port)


def engine_pids(engine: object) -> PidSource:
    """The engine's host PIDs: a process engine's own tree, or a container's processes."""
    pids = getattr(engine, "pids", None)
    if callable(pids):
        return lambda: list(pids())
    container = getattr(engine, "container", None)
    if container is not None:
        return lambda: _container_pids(container)
    return lambda: []


def _container_pids(container: Any) -> list[int]:
    import requests
    from docker.errors import DockerException

    try:
        top = container.top(ps_args="-o pid")
    except (DockerException, requests.RequestException):  # gone or daemon busy: none this time
        return []
    return [int(row[0]) for row in top.get("Processes") or [] if row and str(row[0]).isdigit()]
