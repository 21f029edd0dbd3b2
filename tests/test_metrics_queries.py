"""The metrics tab's PromQL, checked number by number against a real Prometheus.

Samples are backfilled with promtool at known timestamps (every 5 s for 70 min),
so every rate, quantile and gauge has an exact expected value. Look-alike series
(another org with the same endpoint name, an endpoint whose name extends this one,
a removed endpoint that had the same name) carry much larger values: any leak shows
as a wrong number.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import typer
from typer.testing import CliRunner

from inference_endpoints.adapters.metrics import queries as q
from inference_endpoints.adapters.metrics.series import (
    MetricsReport,
    PrometheusUnavailable,
    current_values,
    endpoint_series,
)
from tests.prometheus_support import free_port, running_prometheus

STEP = 5  # seconds between backfilled samples
SPAN = 70 * 60  # seconds of data
END = 0  # last sample; set when the module's Prometheus starts (not at import: a long
START = 0  # session would put the data outside the CLI's "last hour" window)


def _place_samples() -> None:
    """Put the last sample two minutes ago, aligned to the minute for readability."""
    global END, START
    END = (int(time.time()) // 60) * 60 - 120
    START = END - SPAN
OFFSET = 1_000_000.0  # counters start high, so rate() extrapolation never clips at zero


@dataclass(frozen=True)
class Labels:
    org: str
    endpoint: str
    endpoint_id: str

    def render(self, **extra: str) -> str:
        pairs = {"org": self.org, "endpoint": self.endpoint, "endpoint_id": self.endpoint_id,
                 **extra}
        return "{" + ",".join(f'{k}="{v}"' for k, v in pairs.items()) + "}"

    def gateway(self, **extra: str) -> str:  # the gateway labels by names only
        pairs = {"org": self.org, "endpoint": self.endpoint, **extra}
        return "{" + ",".join(f'{k}="{v}"' for k, v in pairs.items()) + "}"


CHAT = Labels("acme", "chat", "ep_chat")
LEAKS = [  # (labels, how much bigger their numbers are)
    (Labels("other", "chat", "ep_other"), 1000.0),  # same endpoint name, another org
    (Labels("acme", "chat-2", "ep_chat2"), 100.0),  # a name that extends ours
]
OLD_CHAT = Labels("acme", "chat", "ep_removed")  # a removed endpoint that had our name
IDLE = Labels("acme", "idle", "ep_idle")  # healthy, no traffic
GPU = Labels("acme", "big", "ep_big")  # served on a GPU
PAIR = Labels("acme", "pair", "ep_pair")  # two replicas, discovery labels each engine's slot
PAIR_SHARES = {"0": 0.3, "1": 0.7}  # of the token rates below

# Per second, for CHAT (look-alikes multiply these).
GATEWAY_RATES = {"2xx": 10.0, "4xx": 0.5, "5xx": 0.25}
BROKEN_STREAMS = 0.1  # ie_gateway_request_errors_total{status_class="2xx"}
FINISHES = {"stop": 9.0, "length": 0.5, "abort": 0.2, "error": 0.05}
PROMPT_TPS, GENERATION_TPS = 200.0, 50.0
# Histograms: observations added per 5 s, cumulative per bucket.
E2E_BUCKETS = {"0.5": 20, "1.0": 40, "2.5": 50, "+Inf": 50}
TTFT_BUCKETS = {"0.05": 10, "0.1": 45, "0.25": 50, "+Inf": 50}
UTILIZATION, MEM_USED, MEM_TOTAL, POWER = 0.37, 1.5e9, 8e9, 250.0

EXPECTED = {
    "request_rate": sum(GATEWAY_RATES.values()),
    **{f"requests_{c}": r for c, r in GATEWAY_RATES.items()},
    # 5xx and broken-off streams only (core.request_counts): not 4xx, not engine aborts
    "error_rate": GATEWAY_RATES["5xx"] + BROKEN_STREAMS,
    "latency_p50": 0.5 + 0.5 * (25 - 20) / 20,  # rank 25 of 50 in (0.5, 1.0]
    "latency_p95": 1.0 + 1.5 * (47.5 - 40) / 10,  # rank 47.5 in (1.0, 2.5]
    "ttft_p50": 0.05 + 0.05 * (25 - 10) / 35,
    "ttft_p95": 0.1 + 0.15 * (47.5 - 45) / 5,
    "prompt_tokens_rate": PROMPT_TPS,
    "generation_tokens_rate": GENERATION_TPS,
    "running_requests": 5.0,  # peak within each step (3 most of the time, 5 every 20 s)
    "waiting_requests": 2.0,
    "kv_cache_usage": 0.5,  # peak (0.42 most of the time)
    "device_utilization": UTILIZATION,
    "device_memory_used": MEM_USED,
    "device_memory_total": MEM_TOTAL,
}


def running_at(i: int) -> float:
    return 5.0 if i % 4 == 0 else 3.0


def kv_at(i: int) -> float:
    return 0.5 if i % 4 == 0 else 0.42


def _family(lines: list[str], name: str, kind: str,
            samples: list[tuple[str, Callable[[int], float]]]) -> None:
    """One metric family: each series' samples over the whole span, in time order."""
    lines.append(f"# TYPE {name} {kind}")
    for series, value in samples:
        for i, ts in enumerate(range(START, END + 1, STEP)):
            lines.append(f"{series} {value(i)} {ts}")


def _counter(rate: float) -> Callable[[int], float]:
    return lambda i: OFFSET + rate * STEP * i


def openmetrics() -> str:
    lines: list[str] = []
    endpoints = [(CHAT, 1.0), *LEAKS, (OLD_CHAT, 10.0)]
    gw = [(lb, k) for lb, k in endpoints if lb is not OLD_CHAT]  # the gateway knows names only
    _family(lines, "ie_gateway_requests", "counter", [
        (f"ie_gateway_requests_total{lb.gateway(status_class=c)}", _counter(r * k))
        for lb, k in gw for c, r in GATEWAY_RATES.items()
    ] + [(f"ie_gateway_requests_total{IDLE.gateway(status_class='2xx')}", _counter(0.0))])
    _family(lines, "ie_gateway_request_errors", "counter", [
        (f"ie_gateway_request_errors_total{lb.gateway(status_class=c)}", _counter(r * k))
        for lb, k in gw for c, r in (("2xx", BROKEN_STREAMS), ("5xx", GATEWAY_RATES["5xx"]))
    ])
    engines = [*endpoints, (IDLE, 0.0), (GPU, 1.0)]
    _family(lines, "vllm:request_success", "counter", [
        (f"vllm:request_success_total{lb.render(finished_reason=f)}", _counter(r * k))
        for lb, k in engines for f, r in FINISHES.items()
    ])
    for name, rate in (("vllm:prompt_tokens", PROMPT_TPS), ("vllm:generation_tokens", GENERATION_TPS)):
        _family(lines, name, "counter",
                [(f"{name}_total{lb.render()}", _counter(rate * k)) for lb, k in engines]
                + [(f"{name}_total{PAIR.render(replica=r)}", _counter(rate * k))
                   for r, k in PAIR_SHARES.items()])
    for name, buckets in (("vllm:e2e_request_latency_seconds", E2E_BUCKETS),
                          ("vllm:time_to_first_token_seconds", TTFT_BUCKETS)):
        samples: list[tuple[str, Callable[[int], float]]] = []
        for lb, k in engines:
            # Look-alikes put all their observations in the last bucket: a leak moves quantiles.
            for le, count in buckets.items():
                per_step = count if lb in (CHAT, GPU) else (0 if le != "+Inf" else count) * k
                samples.append((f"{name}_bucket{lb.render(le=le)}",
                                lambda i, n=per_step: float(n * i)))
            samples.append((f"{name}_count{lb.render()}", lambda i, n=buckets["+Inf"] * k: n * i))
            samples.append((f"{name}_sum{lb.render()}", lambda i: float(i)))
        _family(lines, name, "histogram", samples)
    gauges = [(CHAT, 1.0), *LEAKS, (OLD_CHAT, 10.0)]
    _family(lines, "vllm:num_requests_running", "gauge",
            [(f"vllm:num_requests_running{lb.render()}", lambda i, k=k: running_at(i) * k)
             for lb, k in gauges])
    _family(lines, "vllm:num_requests_waiting", "gauge",
            [(f"vllm:num_requests_waiting{lb.render()}", lambda i, k=k: 2.0 * k) for lb, k in gauges])
    _family(lines, "vllm:kv_cache_usage_perc", "gauge",
            [(f"vllm:kv_cache_usage_perc{lb.render()}", lambda i, k=k: min(1.0, kv_at(i) * k))
             for lb, k in gauges])
    devices = [(CHAT, "cpu", 1.0), (LEAKS[0][0], "gpu", 2.0), (LEAKS[1][0], "cpu", 2.0),
               (GPU, "gpu", 1.0)]
    for name, value in (("ie_device_utilization_ratio", UTILIZATION),
                        ("ie_device_memory_used_bytes", MEM_USED),
                        ("ie_device_memory_total_bytes", MEM_TOTAL)):
        _family(lines, name, "gauge", [
            (f"{name}{lb.render(device=d, index='0' if d == 'gpu' else '')}",
             lambda i, v=value * k: v) for lb, d, k in devices])
    _family(lines, "ie_device_power_watts", "gauge", [
        (f"ie_device_power_watts{lb.render(device='gpu', index='0')}", lambda i, v=POWER * k: v)
        for lb, d, k in devices if d == "gpu"])
    _family(lines, "ie_device_info", "gauge", [
        (f"ie_device_info{lb.render(device=d, index='0' if d == 'gpu' else '', model=d)}", lambda i: 1.0)
        for lb, d, _ in devices])
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _place_samples()
    home = tmp_path_factory.mktemp("prometheus")
    config = {"global": {"scrape_interval": "15s"}, "scrape_configs": []}
    with running_prometheus(home, config, openmetrics()) as url:
        yield url


def chat_report(url: str, window: str = "15m", **kwargs: str | None) -> MetricsReport:
    kwargs.setdefault("endpoint_id", CHAT.endpoint_id)
    return endpoint_series(url, CHAT.org, CHAT.endpoint, window, end=END, **kwargs)


def test_every_series_has_the_expected_numbers(prometheus: str) -> None:
    report = chat_report(prometheus)
    assert report.device == "cpu"
    assert "CPU" in report.get("device_utilization").title
    assert [s.name for s in report.series if s.name == "device_power"] == []  # no power on CPU
    assert report.requests_in_window == pytest.approx(EXPECTED["request_rate"] * 15 * 60, rel=0.02)
    assert not report.no_requests
    assert {s.name for s in report.series} == set(EXPECTED)
    for series in report.series:
        values = [v for _, v in series.points]
        assert len(values) == 61, series.name  # 15 min at a 15 s step, both ends included
        assert values == pytest.approx([EXPECTED[series.name]] * 61, rel=1e-6), (
            f"{series.name}: {series.query}")


@pytest.mark.parametrize("window", ["1h", "6h", "24h"])
def test_longer_windows_use_a_coarser_step_and_the_same_numbers(prometheus: str, window: str) -> None:
    w = q.window(window)
    report = chat_report(prometheus, window)
    assert report.step_s == w.step_s
    for series in report.series:
        # Points fully inside the 70 minutes of data (rates need one range of samples before them).
        inside = [v for ts, v in series.points if ts - w.range_s >= START]
        assert inside, series.name
        assert inside == pytest.approx([EXPECTED[series.name]] * len(inside), rel=1e-6), series.name
        assert all(START <= ts <= END + w.step_s for ts, _ in series.points)


def test_without_endpoint_id_a_removed_endpoints_history_shows_too(prometheus: str) -> None:
    """Names are reused after `endpoints rm`; the endpoint id keeps old engine series apart."""
    pinned = chat_report(prometheus).get("prompt_tokens_rate")
    by_name = chat_report(prometheus, endpoint_id=None).get("prompt_tokens_rate")
    assert pinned.latest == pytest.approx(PROMPT_TPS)
    assert by_name.latest == pytest.approx(PROMPT_TPS * 11)  # ours plus the removed one (x10)


def test_current_values_are_last_minute_rates_and_last_gauges(prometheus: str) -> None:
    values = {v.name: v.value for v in current_values(prometheus, CHAT.org, CHAT.endpoint,
                                                      endpoint_id=CHAT.endpoint_id, at=END)}
    last = (END - START) // STEP
    expected = {**EXPECTED, "running_requests": running_at(last), "kv_cache_usage": kv_at(last)}
    assert values == pytest.approx(expected, rel=1e-6)


def test_gpu_endpoint_shows_power_and_says_gpu(prometheus: str) -> None:
    report = endpoint_series(prometheus, GPU.org, GPU.endpoint, "15m", endpoint_id=GPU.endpoint_id,
                             end=END)
    assert report.device == "gpu"
    assert report.get("device_utilization").title == "GPU utilization"
    power = report.get("device_power")
    assert power.points and all(v == pytest.approx(POWER) for _, v in power.points)
    assert report.get("latency_p50").latest == pytest.approx(EXPECTED["latency_p50"])


def test_idle_endpoint_reads_as_no_requests_not_as_broken(prometheus: str) -> None:
    report = endpoint_series(prometheus, IDLE.org, IDLE.endpoint, "15m", endpoint_id=IDLE.endpoint_id,
                             end=END)
    assert report.no_requests and report.requests_in_window == 0
    rate = report.get("request_rate")
    assert not rate.empty and not rate.nonzero  # a flat zero line
    assert report.get("error_rate").points and not report.get("error_rate").nonzero
    for name in ("latency_p50", "latency_p95", "ttft_p50", "ttft_p95"):
        assert report.get(name).empty, name  # no requests: no quantile, not NaN points
    assert report.device is None


def test_unknown_endpoint_has_only_empty_series(prometheus: str) -> None:
    report = endpoint_series(prometheus, "acme", "ch", "15m", end=END)  # a prefix of "chat"
    assert all(s.empty for s in report.series)
    assert report.requests_in_window is None and report.no_requests


def test_another_endpoints_series_never_match_our_selectors(prometheus: str) -> None:
    """Each look-alike alone gives its own (scaled) numbers; ours never include them."""
    for labels, scale in LEAKS:
        report = endpoint_series(prometheus, labels.org, labels.endpoint, "15m",
                                 endpoint_id=labels.endpoint_id, end=END)
        assert report.get("prompt_tokens_rate").latest == pytest.approx(PROMPT_TPS * scale)
        assert report.get("request_rate").latest == pytest.approx(EXPECTED["request_rate"] * scale)
    ours = chat_report(prometheus)
    assert ours.get("prompt_tokens_rate").latest == pytest.approx(PROMPT_TPS)


def test_unreachable_prometheus_says_so_plainly() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusUnavailable, match="not reachable"):
        endpoint_series(url, "acme", "chat", "1h")


class _Failing(BaseHTTPRequestHandler):
    """A Prometheus that answers 503 to everything, counting the requests."""

    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        return None


def test_a_failing_prometheus_is_asked_once_no_retry_back_off() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Failing.hits.clear()
    try:
        with pytest.raises(PrometheusUnavailable, match="answered an error"):
            endpoint_series(f"http://127.0.0.1:{server.server_address[1]}", "acme", "chat", "1h")
    finally:
        server.shutdown()
        server.server_close()
    assert len(_Failing.hits) == 1, _Failing.hits  # the first failure is reported, not retried


# ---- pure -----------------------------------------------------------------------------------------

def test_selectors_escape_label_values() -> None:
    t = q.Target('a"b', "c\\d", "ep_1")
    assert t.selector() == '{org="a\\"b",endpoint="c\\\\d"}'
    assert t.engine() == '{org="a\\"b",endpoint="c\\\\d",endpoint_id="ep_1"}'


def test_windows_and_steps() -> None:
    assert [(w.name, w.seconds // w.step_s) for w in q.WINDOWS.values()] == [
        ("15m", 60), ("1h", 120), ("6h", 120), ("24h", 120)]
    assert all(w.range_s >= max(w.step_s, 60) for w in q.WINDOWS.values())
    with pytest.raises(ValueError, match="15m, 1h, 6h, 24h"):
        q.window("2h")


def test_tab_lists_power_only_when_not_cpu() -> None:
    t = q.Target("o", "e")
    assert "device_power" not in {x.name for x in q.tab_queries(t, "1m", "cpu")}
    assert "device_power" in {x.name for x in q.tab_queries(t, "1m", "gpu")}
    assert all("[" not in x.promql for x in q.tab_queries(t, None, "gpu")
               if x.name in ("running_requests", "kv_cache_usage", "device_power"))


def test_sd_labels_are_what_queries_select_on(tmp_path: Path) -> None:
    """The selectors use exactly the label names discovery attaches (org, endpoint, endpoint_id)."""
    from inference_endpoints.adapters.metrics.discovery import target_groups
    from inference_endpoints.persistence.models import Endpoint

    ep = Endpoint(id="ep_1", org_id="org_1", name="chat", checkpoint_id="c", instance="cpu-dev",
                  max_context=1, precision="auto", quantization="none", status="healthy",
                  backend_url="http://127.0.0.1:1", served_model_name="chat", serving_config_json="{}")
    labels = target_groups([ep], {"org_1": "acme"})[0]["labels"]
    assert q.Target("acme", "chat", "ep_1").engine() == (
        "{" + ",".join(f'{k}="{labels[k]}"' for k in ("org", "endpoint", "endpoint_id")) + "}")


# ---- `endpoints metrics` ----------------------------------------------------------------------------

def _cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, prometheus_url: str) -> typer.Typer:
    from inference_endpoints.cli.metrics import metrics_cmd
    from inference_endpoints.persistence.models import Checkpoint, Endpoint
    from inference_endpoints.persistence.registry import Registry

    monkeypatch.setenv("IE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IE_ORG", CHAT.org)
    monkeypatch.setenv("IE_PROMETHEUS_URL", prometheus_url)
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.init(default_org=CHAT.org)
    org = registry.get_org_by_name(CHAT.org)
    assert org is not None
    with registry.session() as s:
        s.add(Checkpoint(id="ckpt_1", org_id=org.id, name="tiny", kind="full", base_model="tiny",
                         location="x", size_bytes=1, digest="d", architecture="LlamaForCausalLM",
                         facts_json="{}"))
        s.flush()
        s.add(Endpoint(id=CHAT.endpoint_id, org_id=org.id, name=CHAT.endpoint, checkpoint_id="ckpt_1",
                       instance="cpu-dev", max_context=512, precision="auto", quantization="none",
                       status="healthy", served_model_name="chat", serving_config_json="{}"))
    app = typer.Typer()
    app.command("metrics")(metrics_cmd)
    app.command("noop")(lambda: None)  # keep Typer from collapsing to a single command
    return app


def test_cli_prints_values_and_sparklines(prometheus: str, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    from rich.console import Console

    from inference_endpoints.cli import metrics as cli_metrics

    app = _cli(monkeypatch, tmp_path, prometheus)
    monkeypatch.setattr(cli_metrics, "out", Console(width=200))  # wide enough for every column
    result = CliRunner().invoke(app, ["metrics", "chat", "--window", "1h"])
    assert result.exit_code == 0, result.output
    for text in ("Request rate", "10.75 req/s", "Latency p95", "2.12 s", "Time to first token p50",
                 "71 ms", "200.00 tokens/s", "KV-cache use", "50.0 %", "Device: CPU", "Host memory", "█"):
        assert text in result.output, result.output


def test_cli_says_plainly_when_prometheus_is_down(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    app = _cli(monkeypatch, tmp_path, f"http://127.0.0.1:{free_port()}")
    result = CliRunner().invoke(app, ["metrics", "chat"], terminal_width=200)
    assert result.exit_code == 1
    assert "Metrics unavailable" in result.output and "is not reachable" in result.output


def test_cli_rejects_unknown_windows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    app = _cli(monkeypatch, tmp_path, "http://127.0.0.1:1")
    result = CliRunner().invoke(app, ["metrics", "chat", "--window", "2h"])
    assert result.exit_code == 2 and "15m, 1h, 6h, 24h" in result.output


def test_value_formatting_and_sparklines() -> None:
    from inference_endpoints.adapters.metrics.format import format_value, sparkline

    assert format_value(0.0712, "s") == "71 ms" and format_value(2.125, "s") == "2.12 s"
    assert format_value(0.5, "ratio") == "50.0 %"
    assert format_value(1.5 * 2**30, "bytes") == "1.50 GiB"
    assert format_value(None, "req/s") == "-"
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([0.0] * 5) == "▁" * 5  # no traffic: a flat line at the bottom
    assert len(sparkline(list(range(500)), width=40)) == 40


def test_cli_json_has_every_series_with_its_numbers(prometheus: str, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    import json

    app = _cli(monkeypatch, tmp_path, prometheus)
    result = CliRunner().invoke(app, ["metrics", "chat", "--window", "1h", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["endpoint"], doc["org"], doc["window"], doc["device"]) == ("chat", CHAT.org, "1h", "cpu")
    assert doc["no_requests"] is False and doc["step_s"] > 0
    by_name = {s["name"]: s for s in doc["series"]}
    assert set(by_name) == set(EXPECTED)
    gauges = {"running_requests", "waiting_requests", "kv_cache_usage", "device_utilization",
              "device_memory_used", "device_memory_total"}
    for name, series in by_name.items():
        assert series["unit"] and series["title"], name
        assert series["points"] and all(len(p) == 2 and p[0] <= doc["end"] for p in series["points"]), name
        # the samples are constant: the maximum is the expected number (rates ramp at both ends
        # of the samples, which stop two minutes ago), and gauges are that now too
        assert series["max"] == pytest.approx(EXPECTED[name], rel=1e-6), name
        assert series["min"] <= series["avg"] * (1 + 1e-9) and series["avg"] <= series["max"] * (1 + 1e-9), name
        if name in gauges:
            assert series["now"] == pytest.approx(EXPECTED[name], rel=1e-6), name


def test_one_replicas_engine_series(prometheus: str) -> None:
    """`replica` narrows engine series to that replica's engine; without it they add up."""
    def rate(replica: int | None) -> list[float]:
        report = endpoint_series(prometheus, PAIR.org, PAIR.endpoint, "15m", endpoint_id=PAIR.endpoint_id,
                                 end=END, replica=replica)
        assert report.replica == replica and report.to_dict()["replica"] == replica
        return [v for _, v in report.get("generation_tokens_rate").points]

    whole, first, second = rate(None), rate(0), rate(1)
    assert whole and whole == pytest.approx([GENERATION_TPS] * len(whole), rel=1e-6)
    assert first == pytest.approx([GENERATION_TPS * 0.3] * len(first), rel=1e-6)
    assert second == pytest.approx([GENERATION_TPS * 0.7] * len(second), rel=1e-6)
    assert rate(2) == []  # no such replica: no data, not the endpoint's
