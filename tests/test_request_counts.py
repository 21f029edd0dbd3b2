"""One definition of requests, rejections and errors (core.request_counts), as tables."""

from __future__ import annotations

import pytest

from inference_endpoints.adapters.gateway.metrics import GatewayMetrics
from inference_endpoints.adapters.gateway.stats import parse_row
from inference_endpoints.core.request_counts import RequestCounts, is_error, status_class


@pytest.mark.parametrize(("status", "broken_off", "error"), [
    (200, False, False),
    (200, True, True),    # the backend broke the stream off after the 200 went out
    (401, False, False),  # a bad key is the caller's: a rejection, not an error
    (404, False, False),
    (429, False, False),
    (502, False, True),
    (503, False, True),
])
def test_what_is_an_error(status: int, broken_off: bool, error: bool) -> None:
    assert is_error(status, broken_off) is error


@pytest.mark.parametrize(("by_class", "broken", "total", "ok", "rejected", "errors", "summary"), [
    ({}, 0, 0, 0, 0, 0, "0 requests: 0 ok, 0 rejected (4xx), 0 errors (5xx or broken off)"),
    ({"2xx": 51, "4xx": 25}, 0, 76, 51, 25, 0,
     "76 requests: 51 ok, 25 rejected (4xx), 0 errors (5xx or broken off)"),
    ({"2xx": 9, "4xx": 1, "5xx": 2}, 3, 12, 6, 1, 5,
     "12 requests: 6 ok, 1 rejected (4xx), 5 errors (5xx or broken off)"),
    ({"2xx": 1}, 1, 1, 0, 0, 1, "1 request: 0 ok, 0 rejected (4xx), 1 error (5xx or broken off)"),
])
def test_counts(by_class: dict[str, int], broken: int, total: int, ok: int, rejected: int,
                errors: int, summary: str) -> None:
    counts = RequestCounts(by_class, broken)
    assert (counts.total, counts.ok, counts.rejected, counts.errors) == (total, ok, rejected, errors)
    assert counts.summary() == summary
    assert counts.as_dict()["errors"] == errors and counts.as_dict()["4xx"] == rejected


def test_gateway_stats_and_their_reader_agree() -> None:
    """What the gateway counts is what the console, the API and the CLI read back."""
    metrics = GatewayMetrics()
    metrics.seed([("acme", "quiet")])
    for status, broken in [(200, False), (200, False), (200, True), (401, False), (404, False),
                           (503, False)]:
        metrics.observe("acme", "busy", status, 0.01, error=broken)
    rows = {r["endpoint"]: r for r in metrics.stats()["endpoints"]}
    busy = parse_row(rows["busy"])
    assert busy.counts.as_dict() == {"2xx": 3, "4xx": 2, "5xx": 1, "broken_streams": 1, "ok": 2,
                                     "rejected": 2, "errors": 2}
    assert rows["busy"]["errors"] == busy.errors == 2 and rows["busy"]["requests"] == busy.requests == 6
    quiet = parse_row(rows["quiet"])  # seeded: a routable endpoint is counted from 0
    assert quiet.counts.as_dict()["errors"] == 0 and quiet.requests == 0


@pytest.mark.parametrize("row", [
    {"org": "o", "endpoint": "e", "in_flight": 0},                    # no by_class
    {"org": "o", "endpoint": "e", "in_flight": 0, "by_class": [1]},   # not an object
    {"org": "o", "endpoint": "e", "in_flight": "x", "by_class": {}},  # not a number
])
def test_a_malformed_row_is_refused(row: dict[str, object]) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        parse_row(row)


def test_status_class() -> None:
    assert [status_class(s) for s in (200, 204, 401, 499, 500, 503)] == ["2xx", "2xx", "4xx", "4xx",
                                                                         "5xx", "5xx"]
