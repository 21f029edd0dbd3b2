"""The metrics tab's data, from `inference_endpoints.adapters.metrics.series` when that module exists.

The metrics module (Prometheus queries) is built separately; until it is importable,
and whenever Prometheus does not answer, the tab says so plainly and the rest of the
console keeps working.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass
from typing import Any

from inference_endpoints.adapters.console.charts import charts_payload

WINDOWS = ("15m", "1h", "6h", "24h")


@dataclass(frozen=True)
class MetricsResult:
    available: bool
    message: str
    data: Any = None  # the report as the JSON API returns it
    charts: dict[str, Any] | None = None  # what the page draws (charts.charts_payload)

    def charts_json(self) -> str:
        """The chart specs, for the block console.js draws from."""
        return _script_json(self.charts if self.charts is not None else {"charts": []})


def _script_json(value: Any) -> str:
    """No `<` at all (still valid JSON), so neither `</script>` nor `<!--` can end the block early."""
    return json.dumps(value, default=str).replace("<", "\\u003c")


def to_jsonable(value: Any) -> Any:
    """Whatever the metrics module returns, as plain JSON data."""
    if hasattr(value, "to_dict"):
        return to_jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if hasattr(value, "model_dump"):
        return to_jsonable(value.model_dump(mode="json"))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def default_prometheus_url() -> str:
    """Where the metrics package says Prometheus answers (its `MetricsConfig`), if installed."""
    try:
        from inference_endpoints.adapters.metrics.config import MetricsConfig
    except ImportError:
        return "http://127.0.0.1:9390"
    return str(MetricsConfig().url)


def load_series(prometheus_url: str, org: str, endpoint: str, window: str,
                endpoint_id: str | None = None, replica: int | None = None) -> MetricsResult:
    if window not in WINDOWS:
        window = "1h"
    try:
        module = importlib.import_module("inference_endpoints.adapters.metrics.series")
    except ImportError:
        return MetricsResult(False, "Metrics are not available in this installation yet.")
    fetch = getattr(module, "endpoint_series", None)
    if fetch is None:
        return MetricsResult(False, "Metrics are not available in this installation yet.")
    try:
        data = fetch(prometheus_url, org, endpoint, window, endpoint_id=endpoint_id,
                     **({"replica": replica} if replica is not None else {}))
    except Exception as exc:  # any Prometheus/client failure must leave the page usable
        text = str(exc)
        if prometheus_url not in text:
            text = f"Prometheus at {prometheus_url} did not answer: {text}"
        return MetricsResult(False, text)
    report = to_jsonable(data)
    return MetricsResult(True, "", report, charts_payload(report))
