"""Gateway vs direct, in one run: `python -m bench.gateway` (fake backend) or
`python -m bench.gateway --backend vllm --backend-url http://127.0.0.1:PORT --key K --model M`.

Everything binds to 127.0.0.1, runs a bounded number of requests with a deadline,
and stops what it started (by PID). The gateway runs as its own process, exactly as
the stack starts it (`python -m inference_endpoints.gateway.server`), in front of a
throwaway SQLite registry holding one endpoint that points at the backend.

Figures: added latency p50/p99 (gateway minus direct, non-streaming) at concurrency
1, 16, 64; time-to-first-token delta (streaming); throughput ratio; and a hold test
of N concurrent streams through the gateway that must finish with zero errors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from inference_endpoints.models import Checkpoint, Endpoint
from inference_endpoints.registry import Registry

PROJECT = Path(__file__).resolve().parent.parent
DEADLINE_S = 600.0  # the whole run stops by itself after this


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class Target:
    name: str
    base: str  # ends before /v1
    headers: dict[str, str]


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed_s: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed_s if self.elapsed_s else 0.0


@dataclass
class Setup:
    model: str
    non_stream_query: str  # fake-backend timing knobs (empty for vLLM)
    stream_query: str
    model_like_query: str
    hold_query: str
    hold_chunks: int


FAKE = Setup("fake-model", "", "?ttft_ms=0&itl_ms=2&chunks=8", "?ttft_ms=50",
             "?ttft_ms=0&itl_ms=250&chunks=20", 20)


# ---- processes -------------------------------------------------------------------------------

def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=PROJECT, env=env or dict(os.environ), start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {timeout_s:.0f} s")


def seed_registry(db_url: str, backend_url: str, backend_key: str, model: str) -> str:
    """One org key and one healthy endpoint `bench` pointing at the backend."""
    registry = Registry(db_url)
    registry.init(default_org="default")
    org = registry.get_org_by_name("default")
    assert org is not None
    key = registry.create_key(org.id, "bench").secret
    with registry.session() as s:
        s.add(Checkpoint(id="ckpt_bench", org_id=org.id, name="bench", kind="full",
                         base_model="bench", location="bench", size_bytes=0, digest="-",
                         architecture="-", facts_json="{}"))
        s.flush()
        s.add(Endpoint(org_id=org.id, name="bench", checkpoint_id="ckpt_bench", instance="cpu-dev",
                       max_context=1024, precision="auto", quantization="none", status="healthy",
                       backend_url=backend_url, backend_api_key=backend_key,
                       served_model_name=model, serving_config_json="{}"))
    return key


# ---- load ------------------------------------------------------------------------------------

async def closed_loop(total: int, concurrency: int, one: Callable[[Run], Awaitable[None]]) -> Run:
    run = Run()
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one(run)

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), 300)
    run.elapsed_s = time.perf_counter() - started
    return run


def completion(client: httpx.AsyncClient, target: Target, body: bytes, query: str
               ) -> Callable[[Run], Awaitable[None]]:
    url = f"{target.base}/v1/completions{query}"
    headers = {**target.headers, "content-type": "application/json"}

    async def one(run: Run) -> None:
        t0 = time.perf_counter()
        try:
            response = await client.post(url, content=body, headers=headers)
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            run.latencies.append(time.perf_counter() - t0)
        else:
            run.errors += 1
    return one


def streamed(client: httpx.AsyncClient, target: Target, body: bytes, query: str,
             expect_chunks: int | None = None) -> Callable[[Run], Awaitable[None]]:
    url = f"{target.base}/v1/completions{query}"
    headers = {**target.headers, "content-type": "application/json"}

    async def one(run: Run) -> None:
        t0 = time.perf_counter()
        first: float | None = None
        events = 0
        try:
            async with client.stream("POST", url, content=body, headers=headers) as response:
                if response.status_code != 200:
                    run.errors += 1
                    return
                async for chunk in response.aiter_raw():
                    if first is None:
                        first = time.perf_counter() - t0
                    events += chunk.count(b"data: ")
        except httpx.HTTPError:
            run.errors += 1
            return
        if first is None or (expect_chunks is not None and events != expect_chunks + 1):
            run.errors += 1
            return
        run.ttfts.append(first)
        run.latencies.append(time.perf_counter() - t0)
    return one


def body_for(model: str, stream: bool, max_tokens: int) -> bytes:
    import json

    return json.dumps({"model": model, "prompt": "A checkpoint becomes an endpoint when",
                       "max_tokens": max_tokens, "stream": stream, "temperature": 0}).encode()


# ---- phases ----------------------------------------------------------------------------------

async def latency_phase(client: httpx.AsyncClient, direct: Target, gateway: Target, setup: Setup,
                        levels: list[int], per_level: int) -> list[tuple[str, ...]]:
    body = body_for(setup.model, False, 1)
    rows: list[tuple[str, ...]] = []
    for concurrency in levels:
        runs: dict[str, Run] = {"direct": Run(), "gateway": Run()}
        for _round in range(2):  # alternate to cancel drift (CPU frequency, other tenants)
            for target in (direct, gateway):
                part = await closed_loop(per_level // 2, concurrency,
                                         completion(client, target, body, setup.non_stream_query))
                run = runs[target.name]
                run.latencies += part.latencies
                run.errors += part.errors
                run.elapsed_s += part.elapsed_s
        d, g = runs["direct"], runs["gateway"]
        rows.append((f"non-stream c={concurrency}", f"{pct(d.latencies, 50) * 1e3:.2f}",
                     f"{pct(g.latencies, 50) * 1e3:.2f}",
                     f"{(pct(g.latencies, 50) - pct(d.latencies, 50)) * 1e3:+.2f}",
                     f"{pct(d.latencies, 99) * 1e3:.2f}", f"{pct(g.latencies, 99) * 1e3:.2f}",
                     f"{(pct(g.latencies, 99) - pct(d.latencies, 99)) * 1e3:+.2f}",
                     f"{d.rps:.0f} / {g.rps:.0f}", f"{d.errors}/{g.errors}"))
    return rows


async def ttft_phase(client: httpx.AsyncClient, direct: Target, gateway: Target, setup: Setup,
                     levels: list[int], per_level: int, max_tokens: int) -> list[tuple[str, ...]]:
    body = body_for(setup.model, True, max_tokens)
    rows: list[tuple[str, ...]] = []
    for concurrency in levels:
        runs: dict[str, Run] = {"direct": Run(), "gateway": Run()}
        for _round in range(2):
            for target in (direct, gateway):
                part = await closed_loop(per_level // 2, concurrency,
                                         streamed(client, target, body, setup.stream_query))
                runs[target.name].ttfts += part.ttfts
                runs[target.name].errors += part.errors
        d, g = runs["direct"].ttfts, runs["gateway"].ttfts
        rows.append((f"stream TTFT c={concurrency}", f"{pct(d, 50) * 1e3:.2f}",
                     f"{pct(g, 50) * 1e3:.2f}", f"{(pct(g, 50) - pct(d, 50)) * 1e3:+.2f}",
                     f"{pct(d, 99) * 1e3:.2f}", f"{pct(g, 99) * 1e3:.2f}",
                     f"{(pct(g, 99) - pct(d, 99)) * 1e3:+.2f}", "",
                     f"{runs['direct'].errors}/{runs['gateway'].errors}"))
    return rows


async def throughput_phase(client: httpx.AsyncClient, direct: Target, gateway: Target,
                           query: str, model: str, concurrency: int, total: int) -> tuple[str, ...]:
    body = body_for(model, False, 16)
    rps: dict[str, float] = {}
    errors: dict[str, int] = {}
    for target in (direct, gateway, direct, gateway):
        run = await closed_loop(total // 2, concurrency, completion(client, target, body, query))
        rps[target.name] = rps.get(target.name, 0.0) + run.rps / 2
        errors[target.name] = errors.get(target.name, 0) + run.errors
    return (f"throughput c={concurrency}{' ' + query if query else ''}", f"{rps['direct']:.0f} rps",
            f"{rps['gateway']:.0f} rps", f"ratio {rps['gateway'] / rps['direct']:.3f}",
            f"errors {errors['direct']}/{errors['gateway']}")


async def hold_phase(gateway: Target, setup: Setup, streams: int, stats_url: str
                     ) -> tuple[str, ...]:
    body = body_for(setup.model, True, setup.hold_chunks)
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
    peak = 0
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0)) as client:
        run = Run()
        one = streamed(client, gateway, body, setup.hold_query, setup.hold_chunks)
        started = time.perf_counter()
        tasks = [asyncio.ensure_future(one(run)) for _ in range(streams)]
        while not all(t.done() for t in tasks):
            try:
                stats = (await client.get(stats_url, timeout=2.0)).json()["endpoints"]
                peak = max([peak, *(row["in_flight"] for row in stats)])
            except httpx.HTTPError:
                pass
            await asyncio.wait(tasks, timeout=0.5)
        elapsed = time.perf_counter() - started
    return (f"hold {streams} streams", f"completed {len(run.latencies)}", f"errors {run.errors}",
            f"peak in-flight {peak}", f"{elapsed:.1f} s")


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows] if i < len(r)) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths, strict=False)))
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


# ---- main ------------------------------------------------------------------------------------

async def measure(args: argparse.Namespace, direct: Target, gateway: Target, setup: Setup,
                  gateway_proc: psutil.Process) -> None:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0)) as client:
        warm = completion(client, gateway, body_for(setup.model, False, 1), setup.non_stream_query)
        await closed_loop(200, 8, warm)
        await closed_loop(200, 8, completion(client, direct, body_for(setup.model, False, 1),
                                             setup.non_stream_query))
        cpu0 = sum(gateway_proc.cpu_times()[:2])
        lat = await latency_phase(client, direct, gateway, setup, args.concurrency, args.requests)
        cpu1 = sum(gateway_proc.cpu_times()[:2])
        ttft = await ttft_phase(client, direct, gateway, setup, [1, 16], args.stream_requests,
                                args.max_tokens)
        thr = [await throughput_phase(client, direct, gateway, setup.non_stream_query, setup.model,
                                      64, args.requests)]
        if args.backend == "fake":
            thr.append(await throughput_phase(client, direct, gateway, setup.model_like_query,
                                              setup.model, 64, args.requests // 2))
    gateway_requests = sum(args.requests // 2 * 2 for _ in args.concurrency)
    print()
    print(table(("ms", "direct p50", "gateway p50", "added p50", "direct p99", "gateway p99",
                 "added p99", "rps d / g", "errors d/g"), lat + ttft))
    print(f"\ngateway CPU per proxied request: {(cpu1 - cpu0) / gateway_requests * 1e6:.0f} us")
    print()
    for row in thr:
        print("  ".join(row))
    if args.hold:
        print("  ".join(await hold_phase(gateway, setup, args.hold,
                                         f"{gateway.base.split('/e/')[0]}/_gateway/stats")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["fake", "vllm"], default="fake")
    parser.add_argument("--backend-url", help="vLLM base URL (127.0.0.1 only), for --backend vllm")
    parser.add_argument("--key", default="bench-backend-key", help="the backend's API key")
    parser.add_argument("--model", help="served model name (vLLM)")
    parser.add_argument("--requests", type=int, default=2000, help="non-streaming requests per level")
    parser.add_argument("--stream-requests", type=int, default=400)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--hold", type=int, default=None,
                        help="concurrent streams for the hold test (default 1000 fake, 50 vLLM)")
    args = parser.parse_args()
    if args.hold is None:
        args.hold = 1000 if args.backend == "fake" else 50
    work = Path(tempfile.mkdtemp(prefix="ie-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if args.backend == "fake":
            port = free_port()
            procs.append(spawn([sys.executable, "-m", "bench.fake_upstream", "--port", str(port),
                                "--api-key", args.key], work / "upstream.log"))
            backend_url, setup = f"http://127.0.0.1:{port}", FAKE
            wait_http(f"{backend_url}/health")
        else:
            if not args.backend_url or not args.model:
                parser.error("--backend vllm needs --backend-url and --model")
            if httpx.URL(args.backend_url).host not in ("127.0.0.1", "localhost"):
                parser.error("the benchmark only targets 127.0.0.1")
            backend_url = args.backend_url.rstrip("/")
            setup = Setup(args.model, "", "", "", "", args.max_tokens)
        key = seed_registry(f"sqlite:///{work / 'registry.db'}", backend_url, args.key, setup.model)
        gw_port = free_port()
        env = {**os.environ, "IE_DATA_DIR": str(work), "IE_GATEWAY_PORT": str(gw_port),
               "IE_GATEWAY_HOST": "127.0.0.1"}
        env.pop("DATABASE_URL", None)
        gw = spawn([sys.executable, "-m", "inference_endpoints.gateway.server",
                    "--log-level", "warning"], work / "gateway.log", env)
        procs.append(gw)
        gw_url = f"http://127.0.0.1:{gw_port}"
        wait_http(f"{gw_url}/_gateway/health")
        direct = Target("direct", backend_url, {"authorization": f"Bearer {args.key}"})
        gateway = Target("gateway", f"{gw_url}/e/default/bench", {"authorization": f"Bearer {key}"})
        print(f"backend {args.backend} at {backend_url}; gateway pid {gw.pid} at {gw_url}; "
              f"{os.cpu_count()} CPUs shared by load generator, gateway and backend")
        asyncio.run(asyncio.wait_for(measure(args, direct, gateway, setup, psutil.Process(gw.pid)),
                                     DEADLINE_S))
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
