"""PromQL for one endpoint's metrics tab, as pure functions returning strings.

Every selector pins `org` and `endpoint` (and `endpoint_id` for engine and device
series when known, so a removed endpoint's history never shows under a new one of
the same name). Label values are escaped; nothing is interpolated unquoted.

Sources: the gateway (`ie_gateway_*`: what callers sent and got back), vLLM's own
`/metrics` (`vllm:*`: latency, TTFT, tokens, queue, KV cache) and the accelerator
exporter (`ie_device_*`).
"""

from __future__ import annotations

from dataclasses import dataclass

from inference_endpoints.adapters.metrics.prometheus import duration
from inference_endpoints.core.request_counts import STATUS_CLASSES

GATEWAY_REQUESTS = "ie_gateway_requests_total"
GATEWAY_ERRORS = "ie_gateway_request_errors_total"
E2E_LATENCY = "vllm:e2e_request_latency_seconds_bucket"
TTFT = "vllm:time_to_first_token_seconds_bucket"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = "vllm:kv_cache_usage_perc"  # a 0..1 fraction despite the name
DEVICE_UTIL = "ie_device_utilization_ratio"
DEVICE_MEM_USED = "ie_device_memory_used_bytes"
DEVICE_MEM_TOTAL = "ie_device_memory_total_bytes"
DEVICE_POWER = "ie_device_power_watts"
DEVICE_INFO = "ie_device_info"


@dataclass(frozen=True)
class Window:
    """A chart window: ~60-120 points, each rate taken over max(step, 1 min) so points tile it."""

    name: str
    seconds: int
    step_s: int
    range_s: int

    @property
    def range(self) -> str:
        return duration(self.range_s)


WINDOWS: dict[str, Window] = {w.name: w for w in (
    Window("15m", 15 * 60, 15, 60),
    Window("1h", 3600, 30, 60),
    Window("6h", 6 * 3600, 180, 180),
    Window("24h", 24 * 3600, 720, 720),
)}
CURRENT_RANGE = "1m"  # rates for "now": the last minute


def window(name: str) -> Window:
    try:
        return WINDOWS[name]
    except KeyError:
        raise ValueError(f"unknown window {name!r}; choose one of {', '.join(WINDOWS)}") from None


def escape(value: str) -> str:
    """A PromQL double-quoted string body."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(frozen=True)
class Target:
    """Which endpoint: names as the gateway and discovery label them."""

    org: str
    endpoint: str
    endpoint_id: str | None = None
    # One replica's engine and exporter series (discovery labels each with its slot); the
    # gateway's series are the endpoint's whichever replica answered.
    replica: int | None = None

    def selector(self, *extra: str, with_id: bool = False) -> str:
        parts = [f'org="{escape(self.org)}"', f'endpoint="{escape(self.endpoint)}"']
        if with_id and self.endpoint_id:
            parts.append(f'endpoint_id="{escape(self.endpoint_id)}"')
        return "{" + ",".join([*parts, *extra]) + "}"

    def engine(self, *extra: str) -> str:
        if self.replica is not None:
            extra = (*extra, _eq("replica", str(self.replica)))
        return self.selector(*extra, with_id=True)


# ---- traffic (gateway) --------------------------------------------------------------------------

def request_rate(t: Target, rng: str) -> str:
    """Requests per second the endpoint received through the gateway, any status."""
    return f"sum(rate({GATEWAY_REQUESTS}{t.selector()}[{rng}]))"


def requests_by_class(t: Target, rng: str, klass: str) -> str:
    """Requests per second answered with one status class (2xx, 4xx or 5xx)."""
    return f"sum(rate({GATEWAY_REQUESTS}{t.selector(_eq('status_class', klass))}[{rng}]))"


def error_rate(t: Target, rng: str) -> str:
    """Errors per second as `core.request_counts` defines them: 5xx answers and 2xx streams the
    backend broke off (4xx are the caller's own, charted by class, never errors). The gateway
    counts exactly these in its errors counter. The zero term (same labels once `rate` drops the
    name, so `or` only fills gaps) keeps the series at 0, not absent, while requests succeed."""
    zero = f"0 * rate({GATEWAY_REQUESTS}{t.selector()}[{rng}])"
    return f"sum(rate({GATEWAY_ERRORS}{t.selector()}[{rng}]) or {zero})"


def requests_in(t: Target, rng: str) -> str:
    """How many requests arrived in the window (0: the tab says "no requests in this window")."""
    return f"sum(increase({GATEWAY_REQUESTS}{t.selector()}[{rng}]))"


# ---- engine (vLLM) ------------------------------------------------------------------------------

def _quantile(q: float, bucket: str, t: Target, rng: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({bucket}{t.engine()}[{rng}])))"


def latency_quantile(t: Target, rng: str, q: float) -> str:
    """End-to-end request latency in the engine (queue + prefill + decode), seconds."""
    return _quantile(q, E2E_LATENCY, t, rng)


def ttft_quantile(t: Target, rng: str, q: float) -> str:
    return _quantile(q, TTFT, t, rng)


def prompt_tokens_rate(t: Target, rng: str) -> str:
    return f"sum(rate({PROMPT_TOKENS}{t.engine()}[{rng}]))"


def generation_tokens_rate(t: Target, rng: str) -> str:
    return f"sum(rate({GENERATION_TOKENS}{t.engine()}[{rng}]))"


def _gauge(agg: str, over: str, metric: str, sel: str, rng: str | None) -> str:
    """`rng`: peak/average within each step of a chart; None: the value now."""
    inner = f"{metric}{sel}" if rng is None else f"{over}_over_time({metric}{sel}[{rng}])"
    return f"{agg}({inner})"


def running_requests(t: Target, rng: str | None = None) -> str:
    return _gauge("sum", "max", RUNNING, t.engine(), rng)


def waiting_requests(t: Target, rng: str | None = None) -> str:
    return _gauge("sum", "max", WAITING, t.engine(), rng)


def kv_cache_usage(t: Target, rng: str | None = None) -> str:
    """Fraction of the KV cache in use (the fullest engine, if a replacement runs beside it)."""
    return _gauge("max", "max", KV_CACHE, t.engine(), rng)


# ---- device (accelerator exporter) --------------------------------------------------------------

def device_utilization(t: Target, rng: str | None = None) -> str:
    return _gauge("avg", "avg", DEVICE_UTIL, t.engine(), rng)


def device_memory_used(t: Target, rng: str | None = None) -> str:
    return _gauge("sum", "max", DEVICE_MEM_USED, t.engine(), rng)


def device_memory_total(t: Target, rng: str | None = None) -> str:
    return _gauge("sum", "max", DEVICE_MEM_TOTAL, t.engine(), rng)


def device_power(t: Target, rng: str | None = None) -> str:
    return _gauge("sum", "avg", DEVICE_POWER, t.engine(), rng)


def device_kind(t: Target, rng: str) -> str:
    """One series per kind seen in the window; its `device` label is "gpu" or "cpu"."""
    return f"count by (device) (last_over_time({DEVICE_INFO}{t.engine()}[{rng}]))"


# ---- the tab ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    name: str
    title: str
    unit: str
    chart: str  # series with the same chart are drawn together (e.g. p50 and p95)
    promql: str


def _eq(label: str, value: str) -> str:
    return f'{label}="{escape(value)}"'


def device_titles(device: str | None) -> tuple[str, str, str]:
    """(utilization, memory used, memory total) titles in words that say what is measured."""
    if device == "cpu":
        return ("CPU use (engine processes, share of host CPUs)",
                "Resident memory (engine processes)", "Host memory")
    return "GPU utilization", "GPU memory used", "GPU memory total"


def tab_queries(t: Target, rng: str | None, device: str | None = None) -> list[Query]:
    """Every series of the metrics tab. Power only for GPUs; `rng` None gives current values."""
    r = rng or CURRENT_RANGE
    util_title, used_title, total_title = device_titles(device)
    queries = [
        Query("request_rate", "Request rate", "req/s", "requests", request_rate(t, r)),
        *(Query(f"requests_{k}", f"Request rate {k}", "req/s", "requests", requests_by_class(t, r, k))
          for k in STATUS_CLASSES),
        Query("error_rate", "Error rate (5xx and broken-off streams)", "errors/s", "errors",
              error_rate(t, r)),
        Query("latency_p50", "Latency p50", "s", "latency", latency_quantile(t, r, 0.5)),
        Query("latency_p95", "Latency p95", "s", "latency", latency_quantile(t, r, 0.95)),
        Query("ttft_p50", "Time to first token p50", "s", "ttft", ttft_quantile(t, r, 0.5)),
        Query("ttft_p95", "Time to first token p95", "s", "ttft", ttft_quantile(t, r, 0.95)),
        Query("prompt_tokens_rate", "Prompt tokens", "tokens/s", "tokens",
              prompt_tokens_rate(t, r)),
        Query("generation_tokens_rate", "Generated tokens", "tokens/s", "tokens",
              generation_tokens_rate(t, r)),
        Query("running_requests", "Running requests", "requests", "queue",
              running_requests(t, rng)),
        Query("waiting_requests", "Waiting requests", "requests", "queue",
              waiting_requests(t, rng)),
        Query("kv_cache_usage", "KV-cache use", "ratio", "kv_cache", kv_cache_usage(t, rng)),
        Query("device_utilization", util_title, "ratio", "device", device_utilization(t, rng)),
        Query("device_memory_used", used_title, "bytes", "device_memory", device_memory_used(t, rng)),
        Query("device_memory_total", total_title, "bytes", "device_memory",
              device_memory_total(t, rng)),
    ]
    if device != "cpu":
        queries.append(Query("device_power", "GPU power", "W", "device_power", device_power(t, rng)))
    return queries
