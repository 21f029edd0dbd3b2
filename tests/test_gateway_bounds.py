"""The gateway's bounds on callers, tried on the real app under uvicorn with raw sockets.

Slow headers are disconnected, stalled bodies get 408, oversized ones 413 (declared
or streamed), `/v1/models` shows no host path. Timeouts are short here (1 s) and
every wait has a generous bound (10x) that only guards against a hang: nothing
asserts how fast.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from inference_endpoints.adapters.gateway import GatewayConfig
from inference_endpoints.adapters.gateway.asgi import Receive, Scope, Send
from inference_endpoints.adapters.gateway.protocol import HTTPTOOLS
from inference_endpoints.adapters.gateway.server import ThreadedServer, run_in_thread, serve_in_thread
from inference_endpoints.adapters.metrics.prometheus import render_config, write_config, write_gateway_token
from inference_endpoints.persistence.db import get_engine
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.settings import Settings
from tests.test_gateway_units import add_endpoint

BASE = "endpoints.localhost"
BACKEND_KEY = "backend-secret"
TIMEOUT_S = 1.0
BOUND_S = 10 * TIMEOUT_S  # "closed within": a hang guard, not a speed claim
LIMIT = 4096
HOST_PATH = "/var/lib/inference-endpoints/run/ep_123"
PARSERS = ["h11"] + (["httptools"] if HTTPTOOLS is not None else [])


async def vllm_like_models(scope: Scope, receive: Receive, send: Send) -> None:
    """vLLM's model list for a LoRA endpoint `lora-ep`: host paths in `root`, as vLLM sends it."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    base = {"id": "lora-ep-base", "object": "model", "owned_by": "vllm", "root": f"{HOST_PATH}/base",
            "parent": None, "max_model_len": 512}
    adapter = {"id": "lora-ep", "object": "model", "owned_by": "vllm", "root": f"{HOST_PATH}/adapter",
               "parent": "lora-ep-base", "max_model_len": None}
    odd = {"id": "odd", "object": "model", "root": f"{HOST_PATH}/odd", "parent": f"{HOST_PATH}/x"}
    path = scope["path"]
    if path == "/v1/models":
        payload: object = {"object": "list", "data": [base, adapter, odd]}
    elif path == "/v1/models/lora-ep":
        payload = adapter
    else:
        payload = {"detail": "Not Found"}
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": 200 if path.startswith("/v1/models") else 404,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@dataclass
class World:
    gateways: dict[str, ThreadedServer]
    upstream: ThreadedServer
    models: ThreadedServer
    fake: FakeUpstream
    key: str

    def address(self, parser: str = "h11") -> tuple[str, int]:
        host, port = self.gateways[parser].url.removeprefix("http://").split(":")
        return host, int(port)

    def url(self, endpoint: str = "demo", parser: str = "h11") -> str:
        return f"{self.gateways[parser].url}/e/default/{endpoint}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("bounds")
    registry = Registry(f"sqlite:///{tmp / 'registry.db'}")
    registry.init(default_org="default")
    org = registry.get_org_by_name("default")
    assert org is not None
    key = registry.create_key(org.id, "test").secret
    fake = FakeUpstream(model="demo", api_key=BACKEND_KEY)
    upstream = serve_in_thread(fake)
    models = serve_in_thread(vllm_like_models)
    add_endpoint(registry, org.id, "demo", "healthy", upstream.url, BACKEND_KEY)
    add_endpoint(registry, org.id, "lora-ep", "healthy", models.url, BACKEND_KEY)
    config = GatewayConfig(db_url=registry.url, base_domain=BASE, header_timeout_s=TIMEOUT_S,
                           body_timeout_s=TIMEOUT_S, max_body_bytes=LIMIT, admin_token="t")
    gateways = {parser: run_in_thread(config, parser=parser) for parser in PARSERS}
    try:
        yield World(gateways, upstream, models, fake, key)
    finally:
        for gateway in gateways.values():
            gateway.stop()
        upstream.stop()
        models.stop()
        get_engine(registry.url).dispose()


def closed_by_server(sock: socket.socket, bound_s: float = BOUND_S) -> bool:
    """True once the server closes `sock` (EOF or reset); False if it is still open after `bound_s`."""
    sock.settimeout(bound_s)
    try:
        while sock.recv(4096):
            pass  # a response before the close is fine; the close is what counts
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def response_of(sock: socket.socket, bound_s: float = BOUND_S) -> tuple[int, dict[str, str], bytes]:
    """Read one whole response (the server closes after it): status, headers, body."""
    sock.settimeout(bound_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def request_head(world: World, method: str, extra: str = "", path: str = "/v1/echo") -> bytes:
    return (f"{method} /e/default/demo{path} HTTP/1.1\r\nHost: gw.test\r\n"
            f"Authorization: Bearer {world.key}\r\n{extra}\r\n").encode()


# ---- headers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("parser", PARSERS)
def test_connections_that_never_finish_their_headers_are_closed(world: World, parser: str) -> None:
    address = world.address(parser)
    partial = [socket.create_connection(address) for _ in range(5)]
    silent = socket.create_connection(address)  # never sends a byte
    try:
        for sock in partial:
            sock.sendall(b"GET /e/default/demo/v1/models HTTP/1.1\r\nHost: gw.test\r\nX-Slow: ")
        assert all(closed_by_server(sock) for sock in partial)
        assert closed_by_server(silent)
    finally:
        for sock in [*partial, silent]:
            sock.close()


@pytest.mark.parametrize("parser", PARSERS)
def test_trickled_headers_do_not_keep_a_connection_open(world: World, parser: str) -> None:
    """A byte every 0.2 s: activity is not progress; the deadline is for the whole header."""
    with socket.create_connection(world.address(parser)) as sock:
        sock.sendall(b"GET /e/default/demo/v1/models HTTP/1.1\r\nHost: gw.test\r\n")
        deadline = time.monotonic() + BOUND_S
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed = closed_by_server(sock, 0.2)
        assert closed


@pytest.mark.parametrize("parser", PARSERS)
def test_a_slow_answer_and_a_kept_alive_connection_are_not_cut(world: World, parser: str) -> None:
    """The header timer stops at the end of the headers: a backend slower than it still answers,
    and a second request on the same connection gets its own full allowance."""
    with httpx.Client(timeout=BOUND_S) as client:
        auth = {"Authorization": f"Bearer {world.key}"}
        slow = client.post(f"{world.url(parser=parser)}/v1/completions?ttft_ms=1500",
                           headers=auth, json={"max_tokens": 1})
        assert slow.status_code == 200 and slow.json()["choices"]
        time.sleep(TIMEOUT_S * 1.5)  # idle between requests: keep-alive (30 s) governs, not headers
        again = client.get(f"{world.url(parser=parser)}/v1/models", headers=auth)
        assert again.status_code == 200
        assert client.get(f"{world.url(parser=parser)}/v1/models", headers=auth).status_code == 200


# ---- bodies --------------------------------------------------------------------------------------

@pytest.mark.parametrize("sent", [b"", b"0123456789"])
def test_a_stalled_body_gets_408_and_the_connection_closes(world: World, sent: bytes) -> None:
    with socket.create_connection(world.address()) as sock:
        sock.sendall(request_head(world, "POST", "Content-Length: 100\r\n") + sent)
        status, headers, body = response_of(sock)
    assert status == 408
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(world: World) -> None:
    with socket.create_connection(world.address()) as sock:
        # Expect: 100-continue would make uvicorn invite the body on the first read: none is sent.
        sock.sendall(request_head(world, "POST", f"Content-Length: {LIMIT + 1}\r\n"
                                  "Expect: 100-continue\r\nX-Probe: declared-too-big\r\n",
                                  path="/v1/headers"))
        status, headers, body = response_of(sock)
    assert status == 413 and headers["connection"] == "close"  # no "100 Continue" came first
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large" and error["limit_bytes"] == LIMIT
    assert "4 KiB" in error["message"]
    # Never forwarded (the upstream records the headers of each /v1/headers call it gets).
    assert world.fake.state.last_headers.get("x-probe") != "declared-too-big"


def _chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_a_streamed_body_over_the_limit_gets_413(world: World) -> None:
    before = world.fake.state.bytes_received
    with socket.create_connection(world.address()) as sock:
        sock.sendall(request_head(world, "POST", "Transfer-Encoding: chunked\r\n"))
        try:
            for _ in range(4):
                sock.sendall(_chunked([b"x" * 1500])[:-5])  # one chunk at a time, no terminator
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-upload: the answer is still there to read
        status, _, body = response_of(sock)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert world.fake.state.bytes_received - before <= LIMIT  # never more than the limit upstream


def test_bodies_within_the_limit_pass_whole(world: World) -> None:
    payload = bytes(range(256)) * (LIMIT // 256)  # exactly the limit
    with socket.create_connection(world.address()) as sock:
        sock.sendall(request_head(world, "POST", "Transfer-Encoding: chunked\r\nConnection: close\r\n")
                     + _chunked([payload[:1000], payload[1000:]]))
        status, _, body = response_of(sock)
    assert status == 200 and body == payload
    with httpx.Client(timeout=BOUND_S) as client:
        echoed = client.post(f"{world.url()}/v1/echo", content=payload,
                             headers={"Authorization": f"Bearer {world.key}"})
        assert echoed.status_code == 200 and echoed.content == payload
        too_big = client.post(f"{world.url()}/v1/echo", content=payload + b"!",
                              headers={"Authorization": f"Bearer {world.key}"})
        assert too_big.status_code == 413


# ---- /v1/models ----------------------------------------------------------------------------------

def test_models_list_through_the_gateway_shows_no_host_path(world: World) -> None:
    direct = httpx.get(f"{world.models.url}/v1/models", timeout=BOUND_S)
    assert HOST_PATH in direct.text  # the upstream really does send paths, like vLLM
    with httpx.Client(timeout=BOUND_S, headers={"Authorization": f"Bearer {world.key}"}) as client:
        listed = client.get(f"{world.url('lora-ep')}/v1/models")
        one = client.get(f"{world.url('lora-ep')}/v1/models/lora-ep")
        query = client.get(f"{world.url('lora-ep')}/v1/models?x=1")
    for response in (listed, one, query):
        assert response.status_code == 200
        assert "/var/lib" not in response.text and HOST_PATH not in response.text
        assert int(response.headers["content-length"]) == len(response.content)
    cards = {card["id"]: card for card in listed.json()["data"]}
    assert set(cards) == {"lora-ep-base", "lora-ep", "odd"}
    assert all(card["root"] == name for name, card in cards.items())
    assert cards["lora-ep"]["parent"] == "lora-ep-base"  # a served name: kept
    assert cards["odd"]["parent"] is None  # a path: dropped
    assert cards["lora-ep-base"]["max_model_len"] == 512  # the rest is untouched
    assert one.json()["root"] == "lora-ep" and one.json()["parent"] is None


# ---- admin token for Prometheus --------------------------------------------------------------------

def test_prometheus_scrapes_the_gateway_with_the_admin_token(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, gateway_admin_token="s3cret-token")
    token_file = write_gateway_token(tmp_path / "prometheus", settings)
    assert token_file.read_text().strip() == "s3cret-token"
    assert token_file.stat().st_mode & 0o077 == 0
    config = render_config("http://127.0.0.1:9391/sd/targets", "http://127.0.0.1:8780",
                           gateway_token_file=token_file)
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "gateway")
    assert job["authorization"] == {"type": "Bearer", "credentials_file": str(token_file)}
    path = write_config(tmp_path / "prometheus" / "prometheus.yml", config)
    checked = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True,
                             text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_data_dir_token_is_made_once_and_shared(tmp_path: Path) -> None:
    from inference_endpoints.settings import gateway_admin_token

    settings = Settings(data_dir=tmp_path)
    first = gateway_admin_token(settings)
    assert len(first) >= 32 and gateway_admin_token(Settings(data_dir=tmp_path)) == first
    assert settings.gateway_admin_token_path.stat().st_mode & 0o077 == 0
    assert GatewayConfig.from_settings(settings).admin_token == first
    assert gateway_admin_token(Settings(data_dir=tmp_path, gateway_admin_token="env")) == "env"
