"""Gateway vs direct, in one run: `python -m bench.gateway` (fake backend) or
`python -m bench.gateway --backend vllm --backend-url http://127.0.0.1:PORT --key K --model M`.

Everything binds to 127.0.0.1, runs a bounded number of requests under a deadline,
and stops what it started (by PID). The gateway runs as its own process, exactly as
the stack starts it (`python -m inference_endpoints.adapters.gateway.server`), in front of a
throwaway SQLite registry holding one endpoint that points at the backend.

Figures: added latency p50/p99 (gateway minus direct, non-streaming) at concurrency
1, 16 and 64; time-to-first-token delta (streaming); throughput ratio; and a hold
test of N concurrent streams through the gateway that must end with zero errors.
With the fake backend every series runs twice: a 0 ms backend (pure overhead, and
on a small machine a CPU-bound worst case) and a model-like one (50 ms per answer).
All processes share every CPU by default; `--pin` puts the gateway on a CPU of its
own (load generator and backend on the rest), which helps only on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import psutil

from inference_endpoints.persistence.models import Checkpoint, Endpoint
from inference_endpoints.persistence.registry import Registry

PROJECT = Path(__file__).resolve().parent.parent
DEADLINE_S = 900.0  # the whole measurement stops by itself after this
TARGETS = {"added p50 ms": 1.0, "added p99 ms": 5.0, "TTFT delta ms": 2.0, "throughput ratio": 0.9}


@dataclass(frozen=True)
class Target:
    name: str
    base: str  # everything before /v1
    headers: dict[str, str]


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed_s: float = 0.0

    def add(self, other: Run) -> None:
        self.latencies += other.latencies
        self.ttfts += other.ttfts
        self.errors += other.errors
        self.elapsed_s += other.elapsed_s

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed_s if self.elapsed_s else 0.0


@dataclass(frozen=True)
class Series:
    """One kind of request: a label, the fake backend's timing knobs, the body."""

    label: str
    query: str
    stream: bool
    max_tokens: int


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# ---- processes and registry --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def seed_registry(db_url: str, backend_url: str, backend_key: str, model: str, name: str = "bench") -> str:
    """An org key and one healthy endpoint `name` pointing at the backend; returns the key."""
    registry = Registry(db_url)
    registry.init(default_org="default")
    org = registry.get_org_by_name("default")
    assert org is not None
    key = registry.create_key(org.id, "bench").secret
    with registry.session() as s:
        s.add(Checkpoint(id=f"ckpt_{name}", org_id=org.id, name=name, kind="full",
                         base_model="bench", location="bench", size_bytes=0, digest="-",
                         architecture="-", facts_json="{}"))
        s.flush()
        s.add(Endpoint(org_id=org.id, name=name, checkpoint_id=f"ckpt_{name}", instance="cpu-dev",
                       max_context=1024, precision="auto", quantization="none", status="healthy",
                       backend_url=backend_url, backend_api_key=backend_key,
                       served_model_name=model, serving_config_json="{}"))
    return key


def pin(pids: list[int], cpus: set[int]) -> None:
    for pid in pids:
        os.sched_setaffinity(pid, cpus)


# ---- load ------------------------------------------------------------------------------------
# aiohttp, not httpx, drives the load: httpx's async pool collapses under concurrency
# (encode/httpx#3215), which would measure the load generator instead of the gateway.

def new_client(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections),
                                 timeout=aiohttp.ClientTimeout(total=120))


def body_for(model: str, series: Series) -> bytes:
    return json.dumps({"model": model, "prompt": "A checkpoint becomes an endpoint when",
                       "max_tokens": series.max_tokens, "stream": series.stream,
                       "temperature": 0, "ignore_eos": True}).encode()


def request_fn(client: aiohttp.ClientSession, target: Target, model: str, series: Series
               ) -> Callable[[Run], Awaitable[None]]:
    """One request of `series` against `target`, recorded into a Run."""
    url = f"{target.base}/v1/completions{series.query}"
    headers = {**target.headers, "content-type": "application/json"}
    body = body_for(model, series)

    async def one(run: Run) -> None:
        t0 = time.perf_counter()
        first: float | None = None
        tail = b""
        try:
            async with client.post(url, data=body, headers=headers) as response:
                async for chunk in response.content.iter_any():
                    if first is None:
                        first = time.perf_counter() - t0
                    tail = (tail + chunk)[-32:]
                ok = response.status == 200
        except aiohttp.ClientError:
            ok = False
        if ok and series.stream:
            ok = tail.rstrip().endswith(b"data: [DONE]")  # a complete stream
        if not ok or first is None:
            run.errors += 1
            return
        run.latencies.append(time.perf_counter() - t0)
        run.ttfts.append(first)
    return one


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


async def compare(client: aiohttp.ClientSession, targets: tuple[Target, Target], model: str,
                  series: Series, concurrency: int, total: int) -> tuple[Run, Run]:
    """Direct and gateway, alternating in two rounds so drift hits both alike."""
    runs = (Run(), Run())
    for _round in range(2):
        for i, target in enumerate(targets):
            runs[i].add(await closed_loop(max(1, total // 2), concurrency,
                                          request_fn(client, target, model, series)))
    return runs


# ---- report ----------------------------------------------------------------------------------

@dataclass
class Report:
    rows: list[tuple[str, ...]] = field(default_factory=list)
    checks: list[tuple[str, float, bool]] = field(default_factory=list)

    def latency(self, label: str, direct: Run, gateway: Run, ttft: bool = False) -> None:
        d = direct.ttfts if ttft else direct.latencies
        g = gateway.ttfts if ttft else gateway.latencies
        a50, a99 = (pct(g, 50) - pct(d, 50)) * 1e3, (pct(g, 99) - pct(d, 99)) * 1e3
        self.rows.append((label, f"{pct(d, 50) * 1e3:.2f}", f"{pct(g, 50) * 1e3:.2f}", f"{a50:+.2f}",
                          f"{pct(d, 99) * 1e3:.2f}", f"{pct(g, 99) * 1e3:.2f}", f"{a99:+.2f}",
                          f"{direct.rps:.0f} / {gateway.rps:.0f}",
                          f"{direct.errors} / {gateway.errors}"))
        if ttft:
            self.checks.append((f"{label}: TTFT delta p50 ms", a50, a50 <= TARGETS["TTFT delta ms"]))
        else:
            self.checks.append((f"{label}: added p50 ms", a50, a50 <= TARGETS["added p50 ms"]))
            self.checks.append((f"{label}: added p99 ms", a99, a99 <= TARGETS["added p99 ms"]))
        self.checks.append((f"{label}: errors", float(direct.errors + gateway.errors),
                            direct.errors + gateway.errors == 0))


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True)))
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


# ---- phases ----------------------------------------------------------------------------------

async def measure(args: argparse.Namespace, targets: tuple[Target, Target], model: str,
                  gateway_proc: psutil.Process, stats_url: str) -> Report:
    fake = args.backend == "fake"
    report = Report()
    plain = Series("0 ms backend" if fake else "vLLM", "?ttft_ms=0" if fake else "", False, 1)
    model_like = Series("50 ms backend", "?ttft_ms=50", False, 1)
    stream = Series("stream" if not fake else "stream 0 ms", "?ttft_ms=0&itl_ms=2&chunks=8"
                    if fake else "", True, args.max_tokens)
    async with new_client(256) as client:
        for target in targets:  # warm-up: connections, code paths
            await closed_loop(200, 8, request_fn(client, target, model, plain))
        cpu0, served = sum(gateway_proc.cpu_times()[:2]), 0
        for c in args.concurrency:
            d, g = await compare(client, targets, model, plain, c, args.requests)
            report.latency(f"{plain.label} c={c}", d, g)
            served += len(g.latencies) + g.errors
        cpu_per_request = (sum(gateway_proc.cpu_times()[:2]) - cpu0) / max(served, 1)
        if fake:
            for c in args.concurrency:  # enough requests for a p99, within ~10 s a level
                total = min(args.requests, max(200, c * 40))
                d, g = await compare(client, targets, model, model_like, c, total)
                report.latency(f"{model_like.label} c={c}", d, g)
        for c in (1, 16):
            d, g = await compare(client, targets, model, stream, c, args.stream_requests)
            report.latency(f"{stream.label} TTFT c={c}", d, g, ttft=True)
        throughput = []
        for series in ([plain, model_like] if fake else [plain]):
            d, g = await compare(client, targets, model, series, 64, args.requests)
            ratio = g.rps / d.rps if d.rps else 0.0
            throughput.append((f"{series.label} c=64", f"{d.rps:.0f}", f"{g.rps:.0f}",
                               f"{ratio:.3f}", f"{d.errors} / {g.errors}"))
            report.checks.append((f"{series.label}: throughput ratio", ratio,
                                  ratio >= TARGETS["throughput ratio"]))
    print()
    print(table(("ms", "direct p50", "gateway p50", "added p50", "direct p99", "gateway p99",
                 "added p99", "rps d / g", "errors d / g"), report.rows))
    print(f"\ngateway CPU per proxied request (0 ms series): {cpu_per_request * 1e6:.0f} us\n")
    print(table(("throughput", "direct rps", "gateway rps", "ratio", "errors d / g"), throughput))
    if args.hold:
        hold = Series("hold", "?ttft_ms=0&itl_ms=250&chunks=20" if fake else "", True,
                      20 if fake else args.max_tokens)
        print()
        print(await hold_phase(targets[1], model, hold, args.hold, stats_url, report))
    return report


async def hold_phase(gateway: Target, model: str, series: Series, streams: int, stats_url: str,
                     report: Report) -> str:
    """`streams` concurrent streams through the gateway at once; all must complete."""
    peak = 0
    async with new_client(streams + 10) as client:
        run = Run()
        one = request_fn(client, gateway, model, series)
        started = time.perf_counter()
        tasks = [asyncio.ensure_future(one(run)) for _ in range(streams)]
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=0.25)
            try:
                async with client.get(stats_url) as response:
                    rows = (await response.json())["endpoints"]
                peak = max([peak, *(row["in_flight"] for row in rows)])
            except aiohttp.ClientError:
                pass
        elapsed = time.perf_counter() - started
    report.checks.append((f"hold {streams} streams: errors", float(run.errors),
                          run.errors == 0 and len(run.latencies) == streams))
    return (f"hold: {streams} concurrent streams through the gateway: {len(run.latencies)} "
            f"completed, {run.errors} errors, peak in-flight {peak}, {elapsed:.1f} s "
            f"(TTFT p50 {pct(run.ttfts, 50) * 1e3:.1f} ms, p99 {pct(run.ttfts, 99) * 1e3:.1f} ms)")


# ---- main ------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--backend", choices=["fake", "vllm"], default="fake")
    parser.add_argument("--backend-url", help="vLLM base URL (127.0.0.1 only), for --backend vllm")
    parser.add_argument("--key", default="bench-backend-key", help="the backend's API key")
    parser.add_argument("--model", help="served model name (vLLM)")
    parser.add_argument("--requests", type=int, default=2000, help="non-streaming requests per level")
    parser.add_argument("--stream-requests", type=int, default=400)
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per streamed answer")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--hold", type=int, default=None,
                        help="concurrent streams for the hold test (default 1000 fake, 50 vLLM)")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=False,
                        help="gateway on a CPU of its own (needs 2+ CPUs)")
    parser.add_argument("--peers", action="store_true",
                        help="ours against LiteLLM's proxy and nginx, in front of the same fake backends "
                             "(bench/gateway_peers.py; concurrency 1 16 64 256 unless given)")
    args = parser.parse_args()
    if args.peers:
        from bench.gateway_peers import run_peers

        if args.concurrency == [1, 16, 64]:
            args.concurrency = [1, 16, 64, 256]
        args.hold = args.hold or 1000
        run_peers(args)
        return
    fake = args.backend == "fake"
    if args.hold is None:
        args.hold = 1000 if fake else 50
    cpus = sorted(os.sched_getaffinity(0))
    do_pin = args.pin and len(cpus) >= 2
    work = Path(tempfile.mkdtemp(prefix="ie-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if fake:
            port = free_port()
            procs.append(spawn([sys.executable, "-m", "bench.fake_upstream", "--port", str(port),
                                "--api-key", args.key], work / "upstream.log"))
            backend_url, model = f"http://127.0.0.1:{port}", "fake-model"
            wait_http(f"{backend_url}/health")
        else:
            if not args.backend_url or not args.model:
                parser.error("--backend vllm needs --backend-url and --model")
            if httpx.URL(args.backend_url).host not in ("127.0.0.1", "localhost"):
                parser.error("the benchmark only targets 127.0.0.1")
            backend_url, model = args.backend_url.rstrip("/"), args.model
        key = seed_registry(f"sqlite:///{work / 'registry.db'}", backend_url, args.key, model)
        gw_port = free_port()
        env = {**os.environ, "IE_DATA_DIR": str(work), "IE_GATEWAY_PORT": str(gw_port),
               "IE_GATEWAY_HOST": "127.0.0.1"}
        env.pop("DATABASE_URL", None)
        gateway_proc = spawn([sys.executable, "-m", "inference_endpoints.adapters.gateway.server",
                              "--log-level", "warning"], work / "gateway.log", env)
        procs.append(gateway_proc)
        gw_url = f"http://127.0.0.1:{gw_port}"
        wait_http(f"{gw_url}/_gateway/health")
        placement = "all processes share every CPU"
        if do_pin:
            pin([gateway_proc.pid], {cpus[-1]})
            pin([os.getpid(), *(p.pid for p in procs if p is not gateway_proc)], set(cpus[:-1]))
            placement = f"gateway pinned to CPU {cpus[-1]}, load generator and backend to {cpus[:-1]}"
        targets = (Target("direct", backend_url, {"authorization": f"Bearer {args.key}"}),
                   Target("gateway", f"{gw_url}/e/default/bench", {"authorization": f"Bearer {key}"}))
        print(f"backend: {args.backend} at {backend_url}; gateway at {gw_url}; {len(cpus)} CPUs, "
              f"{placement}; load avg {os.getloadavg()[0]:.2f}")
        report = asyncio.run(asyncio.wait_for(
            measure(args, targets, model, psutil.Process(gateway_proc.pid), f"{gw_url}/_gateway/stats"),
            DEADLINE_S))
        print("\ntargets: " + ", ".join(f"{k} {'<=' if k != 'throughput ratio' else '>='} {v}"
                                         for k, v in TARGETS.items()))
        for name, value, ok in report.checks:
            print(f"  {'PASS' if ok else 'MISS'}  {name}: {value:.3f}")
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
