"""A real Prometheus scrapes a real vLLM behind the real gateway, found through service discovery.

The module starts its own discovery server and Prometheus (until `endpoints up` does),
creates one endpoint, and sends a burst larger than the engine's batch (128 sequences
on CPU) so the queue, the KV cache and the CPU all move. Look-alike endpoints with
enormous numbers (same org; another org with the same endpoint name) are scraped
too: every series of the endpoint must have non-zero data and none of theirs.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import openai
import psutil
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from inference_endpoints.adapters.console import server as console_server
from inference_endpoints.adapters.metrics.config import MetricsConfig
from inference_endpoints.adapters.metrics.discovery import start_discovery, stop_discovery
from inference_endpoints.adapters.metrics.exporter import Exporter, start_exporter
from inference_endpoints.adapters.metrics.prometheus import start_prometheus, stop_prometheus
from inference_endpoints.adapters.metrics.series import MetricsReport, endpoint_series
from inference_endpoints.adapters.processes import alive, spawn, stop_group, wait_until
from inference_endpoints.adapters.runtime.base import EngineLabels
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.persistence.models import Checkpoint, Endpoint, utcnow
from tests.e2e.conftest import E2EStack
from tests.e2e.engine_tools import backend_port, listener_pid
from tests.lifecycle_support import put_status
from tests.prometheus_support import free_port, wait_for

pytestmark = pytest.mark.e2e

NAME = "metrics-a"
OTHER_NAME = "metrics-b"  # same org, another endpoint
OTHER_ORG = "metrics-org2"  # another org, an endpoint with our name
BURST = 160  # > vLLM-CPU's default max_num_seqs (128): some requests must wait
MAX_TOKENS = 48
PROMPT_TOKENS = 380  # distinct prompts (defeats prefix caching), well inside max_context 1024
LOOKALIKE_REQUESTS = 300  # gateway traffic to each look-alike, ~2x ours
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SENTENCE = ("the checkpoint serves requests at a stable url while the engine keeps its model loaded "
            "and every token streams back through the gateway to the caller")
WORDS = SENTENCE.split()


@dataclass
class Metrics:
    prometheus_url: str
    discovery_url: str
    prometheus_pid: int | None = None
    prometheus_log: Path | None = None


@pytest.fixture(scope="module")
def metrics(e2e: E2EStack) -> Iterator[Metrics]:
    """Discovery and Prometheus for this module, on free ports, stopped by PID."""
    cfg = MetricsConfig(prometheus_port=free_port(), discovery_port=free_port(), scrape_interval_s=1,
                        sd_refresh_interval_s=1)
    env = e2e.stack.env()
    sd_pid, sd_url = start_discovery(e2e.settings, config=cfg, env=env)
    prom_pid: int | None = None
    try:
        prom_pid, prom_url = start_prometheus(e2e.settings, sd_url, e2e.gateway_url, config=cfg)
        yield Metrics(prom_url, sd_url, prom_pid, e2e.settings.log_dir / "prometheus.log")
    finally:
        stop_prometheus(prom_pid)
        stop_discovery(sd_pid)
        assert not alive(prom_pid) and not alive(sd_pid)


# ---- look-alikes: endpoints whose numbers are far beyond anything the tiny model does -------------

class LookAlike:
    """A stand-in engine and exporter with huge values (prometheus_client, like vLLM's /metrics)."""

    def __init__(self) -> None:
        self.t0 = time.time()
        engine, device = CollectorRegistry(), CollectorRegistry()
        engine.register(self)
        device.register(_DeviceLookAlike())
        self.servers = [start_http_server(0, addr="127.0.0.1", registry=r)[0] for r in (engine, device)]
        self.engine_url, self.exporter_url = (
            f"http://127.0.0.1:{s.server_address[1]}" for s in self.servers)

    def collect(self) -> Iterator[Metric]:
        n = time.time() - self.t0
        for name, rate in (("vllm:prompt_tokens", 1e6), ("vllm:generation_tokens", 1e6)):
            c = CounterMetricFamily(name, name, labels=["model_name"])
            c.add_metric(["x"], rate * n)
            yield c
        finished = CounterMetricFamily("vllm:request_success", "f", labels=["model_name", "finished_reason"])
        finished.add_metric(["x", "error"], 1e4 * n)
        yield finished
        for name in ("vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds"):
            h = HistogramMetricFamily(name, name, labels=["model_name"])
            h.add_metric(["x"], [("0.001", 0.0), ("+Inf", 1e4 * n)], sum_value=1e9 * n)
            yield h
        for name, value in (("vllm:num_requests_running", 5e4), ("vllm:num_requests_waiting", 5e4),
                            ("vllm:kv_cache_usage_perc", 0.999)):
            g = GaugeMetricFamily(name, name, labels=["model_name"])
            g.add_metric(["x"], value)
            yield g

    def stop(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()


class _DeviceLookAlike:
    def collect(self) -> Iterator[Metric]:
        for name, value in (("ie_device_utilization_ratio", 0.999), ("ie_device_memory_used_bytes", 1e15),
                            ("ie_device_memory_total_bytes", 1e15)):
            g = GaugeMetricFamily(name, name, labels=["device", "index"])
            g.add_metric(["cpu", ""], value)
            yield g
        info = GaugeMetricFamily("ie_device_info", "i", labels=["device", "index", "model", "serve_run"])
        info.add_metric(["cpu", "", "cpu", "x"], 1)
        yield info


def _register(e2e: E2EStack, org_id: str, name: str, fake: LookAlike) -> str:
    """A healthy-looking endpoint row pointing at a look-alike (no serve run, no lease)."""
    ckpt_id = f"ckpt_metrics_{org_id}"
    with e2e.registry.session() as s:
        if s.get(Checkpoint, ckpt_id) is None:
            s.add(Checkpoint(id=ckpt_id, org_id=org_id, name="metrics-fake", kind="full",
                             base_model="fake", location="metrics-fake", size_bytes=1, digest="d",
                             architecture="LlamaForCausalLM", facts_json="{}"))
            s.flush()
        ep = Endpoint(org_id=org_id, name=name, checkpoint_id=ckpt_id,
                      instance="cpu-dev", max_context=512, precision="auto", quantization="none",
                      status="healthy", backend_url=fake.engine_url, exporter_url=fake.exporter_url,
                      backend_api_key="fake", served_model_name=name, serving_config_json="{}",
                      healthy_at=utcnow(), updated_at=utcnow())
        s.add(ep)
    return ep.id


@dataclass
class LookAlikes:
    same_org: tuple[str, str]  # (org, endpoint) as labelled
    other_org: tuple[str, str]
    other_key: str


@pytest.fixture(scope="module")
def lookalikes(e2e: E2EStack) -> Iterator[LookAlikes]:
    fakes = [LookAlike(), LookAlike()]
    org2 = e2e.registry.get_org_by_name(OTHER_ORG)
    if org2 is None:
        org2, key = e2e.registry.create_org(OTHER_ORG)
        secret = key.secret
    else:
        secret = e2e.registry.create_key(org2.id, "metrics-e2e").secret
    ids = [_register(e2e, e2e.org_id, OTHER_NAME, fakes[0]), _register(e2e, org2.id, NAME, fakes[1])]
    try:
        yield LookAlikes((e2e.org_name, OTHER_NAME), (OTHER_ORG, NAME), secret)
    finally:
        for ep_id in ids:  # ended: out of discovery, the gateway and the session's teardown
            put_status(e2e.registry, ep_id, EndpointStatus.STOPPING)
            put_status(e2e.registry, ep_id, EndpointStatus.STOPPED)
        for fake in fakes:
            fake.stop()


# ---- the real endpoint ------------------------------------------------------------------------------

@dataclass
class Served:
    endpoint: Endpoint
    exporter: Exporter | None  # started here while the serve flow does not start one itself


@pytest.fixture(scope="module")
def served(e2e: E2EStack, metrics: Metrics) -> Iterator[Served]:
    ep = e2e.create(NAME)
    assert ep.status == "healthy", f"{ep.status}: {ep.reason_code} {ep.reason_message}"
    exporter = None
    try:
        wait_for(lambda: e2e.endpoint(NAME).exporter_url is not None, 10)
    except AssertionError:
        print("\n[metrics-e2e] the serve flow published no exporter_url: starting the accelerator "
              "exporter here for the engine's process tree (until serve_endpoint starts it)")
        assert ep.backend_url
        leader = listener_pid(backend_port(ep.backend_url))
        assert leader is not None
        exporter = start_exporter(EngineLabels(e2e.org_name, ep.id, NAME, ep.serve_run_id or ""),
                                  lambda: [leader], "127.0.0.1")
        e2e.registry.update_endpoint(ep.id, exporter_url=exporter.url)
    try:
        yield Served(e2e.endpoint(NAME), exporter)
    finally:
        if exporter is not None:
            exporter.stop()


def _prompts(e2e: E2EStack, count: int) -> list[str]:
    """Distinct prompts of about PROMPT_TOKENS tokens each (the demo tokenizer counts)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(e2e.demo.full / "tokenizer.json"))
    rng = random.Random(7)
    prompts = []
    for i in range(count):
        words = [str(i)]
        while len(tokenizer.encode(" ".join(words)).ids) < PROMPT_TOKENS:
            words += rng.sample(WORDS, 8)
        prompts.append(" ".join(words))
    return prompts


def _complete(client: openai.OpenAI, prompt: str, stream: bool) -> int:
    if stream:
        chunks = client.completions.create(model=NAME, prompt=prompt, max_tokens=MAX_TOKENS, stream=True)
        return sum(1 for _ in chunks)
    return len(client.completions.create(model=NAME, prompt=prompt, max_tokens=MAX_TOKENS).choices)


@dataclass
class Burst:
    ok: int
    rejected: int  # 401 (bad key) and 400 (prompt longer than max_context) through the gateway
    started: float
    ended: float


def _rejected(e2e: E2EStack, client: openai.OpenAI) -> int:
    """A 401 (wrong key) and a 400 (prompt longer than max_context): errors the endpoint got."""
    bad_key = openai.OpenAI(base_url=f"{e2e.url(NAME)}/v1", api_key="ie_wrong_key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.completions.create(model=NAME, prompt="hi", max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=NAME, prompt=" ".join(WORDS * 120), max_tokens=4)
    return 2


def _send_burst(e2e: E2EStack, prompts: list[str]) -> tuple[int, int]:
    """Rejected requests before and after the burst: the gateway creates a status class's series
    at its first request, and rate() sees only increases after the first scrape of it."""
    client = openai.OpenAI(base_url=f"{e2e.url(NAME)}/v1", api_key=e2e.api_key, timeout=300,
                           max_retries=0)
    rejected = _rejected(e2e, client)
    time.sleep(2.5)
    with ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(lambda ip: _complete(client, ip[1], ip[0] % 4 == 0), enumerate(prompts)))
    for _ in range(3):
        rejected += _rejected(e2e, client)
    return sum(1 for r in results if r), rejected


def _lookalike_traffic(e2e: E2EStack, fakes: LookAlikes) -> None:
    with httpx.Client(timeout=10) as http:
        for (org, name), key in ((fakes.same_org, e2e.api_key), (fakes.other_org, fakes.other_key)):
            url = f"{e2e.gateway_url}/e/{org}/{name}/v1/completions"
            for _ in range(3):  # spread over several scrapes
                for _ in range(LOOKALIKE_REQUESTS // 3):
                    http.post(url, json={"model": name, "prompt": "x"},
                              headers={"Authorization": f"Bearer {key}"})
                time.sleep(1.5)


@pytest.fixture(scope="module")
def burst(e2e: E2EStack, metrics: Metrics, served: Served, lookalikes: LookAlikes) -> Burst:
    ep = served.endpoint
    # Prometheus scrapes the engine, its exporter, the look-alikes and the gateway before the burst.
    wait_for(lambda: _up(metrics, f'up{{endpoint="{NAME}",endpoint_id="{ep.id}"}}') == 2, 30)
    wait_for(lambda: _up(metrics, 'up{job="gateway"}') == 1, 30)
    wait_for(lambda: _up(metrics, f'up{{endpoint="{OTHER_NAME}"}}') == 2, 30)
    wait_for(lambda: _up(metrics, f'up{{org="{OTHER_ORG}"}}') == 2, 30)
    prompts = _prompts(e2e, BURST)
    started = time.time()
    other = threading.Thread(target=_lookalike_traffic, args=(e2e, lookalikes))
    other.start()
    ok, rejected = _send_burst(e2e, prompts)
    other.join()
    ended = time.time()
    print(f"\n[metrics-e2e] {ok} completions + {rejected} rejected requests in {ended - started:.1f} s")
    time.sleep(3)  # two more scrapes
    return Burst(ok, rejected, started, ended)


def _up(metrics: Metrics, query: str) -> int:
    try:
        data = httpx.get(f"{metrics.prometheus_url}/api/v1/query", params={"query": query}, timeout=5).json()
    except httpx.HTTPError as exc:  # say why: is it still running, and what did it last log?
        log = metrics.prometheus_log
        tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else "(no log)"
        raise AssertionError(f"Prometheus at {metrics.prometheus_url} did not answer ({exc!r}); "
                             f"pid {metrics.prometheus_pid} alive: {alive(metrics.prometheus_pid)}; "
                             f"its log ends:\n{tail}") from exc
    return sum(1 for r in data["data"]["result"] if r["value"][1] == "1")


def _report(metrics: Metrics, org: str, name: str, endpoint_id: str | None) -> MetricsReport:
    return endpoint_series(metrics.prometheus_url, org, name, "15m", endpoint_id=endpoint_id)


def _peak(report: MetricsReport, name: str) -> float:
    return max((v for _, v in report.get(name).points), default=0.0)


def test_every_series_has_data_for_the_endpoint_and_none_of_anothers(
    e2e: E2EStack, metrics: Metrics, served: Served, burst: Burst, lookalikes: LookAlikes
) -> None:
    ep = served.endpoint
    report = _report(metrics, e2e.org_name, NAME, ep.id)
    print("[metrics-e2e] peaks: " + ", ".join(f"{s.name}={_peak(report, s.name):.4g}" for s in report.series))
    assert report.device == "cpu"
    assert "device_power" not in {s.name for s in report.series}  # CPU host: no power series
    # The burst's 401s and 400s are rejections (4xx), not errors (core.request_counts): the 5xx
    # and error-rate series are there, at 0, while the 4xx one counts them.
    at_zero = {"requests_5xx", "error_rate"}
    empty_or_zero = [s.name for s in report.series if not s.nonzero and s.name not in at_zero]
    assert not empty_or_zero, f"series without non-zero data: {empty_or_zero}"
    for name in at_zero:
        assert report.get(name).points and not report.get(name).nonzero, name
    assert report.get("requests_4xx").nonzero

    # The look-alikes are scraped and their numbers are huge, so any leak would show.
    for org, name in (lookalikes.same_org, lookalikes.other_org):
        theirs = _report(metrics, org, name, None)
        assert _peak(theirs, "prompt_tokens_rate") > 1e5 and _peak(theirs, "request_rate") > 0, (org, name)
    sent = burst.ok + burst.rejected
    assert report.requests_in_window is not None
    # Requests before the first scrape of a new series are not in increase(); the look-alikes
    # had ~3.5x ours, so a leak would overshoot the upper bound.
    assert 0.3 * sent <= report.requests_in_window <= 1.3 * sent
    assert _peak(report, "prompt_tokens_rate") < 1e5
    assert _peak(report, "generation_tokens_rate") < 1e5
    assert _peak(report, "error_rate") < 100
    assert _peak(report, "latency_p95") < 120 and _peak(report, "ttft_p95") < 120
    assert _peak(report, "running_requests") <= 128 and _peak(report, "waiting_requests") <= BURST
    assert _peak(report, "kv_cache_usage") < 0.99
    assert _peak(report, "device_memory_used") < 1e13
    assert _peak(report, "device_memory_total") == psutil.virtual_memory().total
    # What the engine itself counted, through our queries: the burst's prompt and output tokens.
    assert report.get("generation_tokens_rate").nonzero and report.get("ttft_p50").latest is not None


def test_metrics_tab_screenshot_under_load(e2e: E2EStack, metrics: Metrics, served: Served,
                                           burst: Burst) -> None:
    """Written to test-artifacts/metrics-tab.png."""
    port = free_port()
    env = {**e2e.stack.env(), "IE_CONSOLE_PORT": str(port), "IE_PROMETHEUS_URL": metrics.prometheus_url}
    log = e2e.settings.log_dir / "console-metrics-e2e.log"
    pid = spawn([sys.executable, "-m", console_server.__name__], log, env)
    base = f"http://127.0.0.1:{port}"
    stop_load = threading.Event()
    load = threading.Thread(target=_steady_load, args=(e2e, stop_load))
    try:
        wait_until(lambda: _answers(f"{base}/signin"), pid, "console", log, 60)
        load.start()
        time.sleep(5)  # a few scrapes of the load
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "metrics-tab.png"
        charts = _screenshot(base, e2e.api_key, f"/endpoints/{NAME}?tab=metrics&window=15m", shot)
        print(f"\n[metrics-e2e] metrics tab screenshot: {shot}; charts: {charts}")
        assert charts, "the metrics tab drew no chart"
        for chart in charts:  # a Chart.js line with data, and pixels on its canvas that show it
            assert chart["points"] > 0 and chart["painted"] > 0 and chart["colors"] >= 3, chart
    finally:
        stop_load.set()
        if load.is_alive():
            load.join(120)
        stop_group(pid)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _steady_load(e2e: E2EStack, stop: threading.Event) -> None:
    client = openai.OpenAI(base_url=f"{e2e.url(NAME)}/v1", api_key=e2e.api_key, timeout=120, max_retries=0)

    def loop(i: int) -> None:
        while not stop.is_set():
            client.completions.create(model=NAME, prompt=f"{i} {' '.join(WORDS)}", max_tokens=MAX_TOKENS)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(loop, range(8)))


# For each chart canvas: its title, the points Chart.js holds, painted pixels and distinct colours.
CANVAS_STATS = """() => Array.from(document.querySelectorAll('#metrics-charts .chart canvas')).map(c => {
  const chart = window.Chart && window.Chart.getChart(c);
  const points = chart ? chart.data.datasets.reduce((n, d) => n + d.data.length, 0) : 0;
  const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let painted = 0; const colors = new Set();
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 0) { painted++; colors.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]); }
  }
  return {title: c.parentElement.querySelector('h3').textContent, points, painted, colors: colors.size};
})"""


def _screenshot(base: str, api_key: str, path: str, out: Path) -> list[dict[str, object]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("IE_CHROMIUM", "/usr/bin/chromium"),
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/signin?next={quote(path, safe='')}")
            page.fill("#api_key", api_key)
            page.click("button[type=submit]")
            page.wait_for_selector("#metrics-charts .chart, #metrics-unavailable", timeout=60_000)
            assert page.locator("#metrics-unavailable").count() == 0, page.inner_text("#metrics")
            page.wait_for_timeout(1500)  # let the charts finish drawing
            page.screenshot(path=str(out), full_page=True)
            charts: list[dict[str, object]] = page.evaluate(CANVAS_STATS)
            return charts
        finally:
            browser.close()
