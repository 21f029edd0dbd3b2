"""The gateway against its peers, in one run: `python -m bench.gateway --peers`.

In front of the same fake backends (instant, 50 ms per answer, a 2 ms-per-chunk stream, and
a 250 ms-per-chunk stream for the hold test), one process each of: our gateway, LiteLLM's
proxy (the most used OpenAI-compatible gateway; installed in its own virtualenv under
~/.cache/inference-endpoints/bench-litellm on first use) and nginx (Debian's nginx-light, a
plain `proxy_pass` with buffering off and upstream keep-alive: the floor for any proxy).
Direct calls to the backend are the baseline. Every level alternates the four targets in two
rounds so drift hits all alike. Everything binds to 127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.gateway import (
    DEADLINE_S,
    Run,
    Series,
    Target,
    closed_loop,
    free_port,
    new_client,
    pct,
    request_fn,
    seed_registry,
    spawn,
    stop,
    table,
    wait_http,
)

LITELLM_HOME = Path.home() / ".cache" / "inference-endpoints" / "bench-litellm"
KEY = "bench-backend-key"
LITELLM_KEY = "sk-bench-" + secrets.token_hex(16)
MODEL = "fake-model"
# name: (fake backend's --ttft-ms, --itl-ms)
BACKENDS = {"b0": (0.0, 0.0), "b50": (50.0, 0.0), "bstream": (0.0, 2.0), "bhold": (0.0, 250.0)}


@dataclass(frozen=True)
class Proxy:
    """One target per backend name: where to send, with which key and model name."""

    name: str
    targets: dict[str, Target]
    models: dict[str, str]


def ensure_nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx-light"],
                   check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("nginx") or "/usr/sbin/nginx"


def start_nginx(work: Path, backends: dict[str, str], procs: list[subprocess.Popen[bytes]]
                ) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    home = work / "nginx"
    home.mkdir()
    upstreams = "".join(f"  upstream {n} {{ server {u.removeprefix('http://')}; keepalive 512; }}\n"
                        for n, u in backends.items())
    locations = "".join(
        f"    location /{n}/ {{ proxy_pass http://{n}/; proxy_http_version 1.1; "
        f'proxy_set_header Connection ""; proxy_buffering off; proxy_request_buffering off; '
        f"proxy_read_timeout 300s; }}\n" for n in backends)
    temp = " ".join(f"{k}_temp_path {home}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                            "scgi"))
    conf = home / "nginx.conf"
    conf.write_text(f"worker_processes 1;\ndaemon off;\npid {home}/nginx.pid;\n"
                    f"error_log {home}/error.log warn;\nevents {{ worker_connections 8192; }}\n"
                    f"http {{\n  access_log off;\n  {temp}\n{upstreams}"
                    f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n{locations}  }}\n}}\n")
    proc = spawn([ensure_nginx(), "-p", str(home), "-c", str(conf)], work / "nginx.log")
    procs.append(proc)  # stopped by the caller even if it never answers
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/b0/health")
    return proc, url


def ensure_litellm() -> Path:
    binary = LITELLM_HOME / "bin" / "litellm"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_HOME)], check=True)
        subprocess.run([str(LITELLM_HOME / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)
    return binary


def start_litellm(work: Path, backends: dict[str, str], procs: list[subprocess.Popen[bytes]]
                  ) -> tuple[subprocess.Popen[bytes], str]:
    """One worker, a master key (it refuses to start without one, and ours checks keys too)."""
    port = free_port()
    lines = ["model_list:"]
    for name, url in backends.items():
        lines += [f"  - model_name: {name}", "    litellm_params:", f"      model: openai/{MODEL}",
                  f"      api_base: {url}/v1", f"      api_key: {KEY}"]
    lines += ["general_settings:", f"  master_key: {LITELLM_KEY}",
              "litellm_settings:", "  drop_params: true", "  telemetry: false"]
    config = work / "litellm.yaml"
    config.write_text("\n".join(lines) + "\n")
    # A closed network: the model cost map ships with the package; no telemetry, quiet logs.
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_TELEMETRY": "False"}
    proc = spawn([str(ensure_litellm()), "--config", str(config), "--host", "127.0.0.1", "--port",
                  str(port), "--num_workers", "1"], work / "litellm.log", env)
    procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health/liveliness", timeout_s=180)
    except TimeoutError:
        print((work / "litellm.log").read_text()[-3000:], file=sys.stderr)
        raise
    return proc, url


def start_gateway(work: Path, backends: dict[str, str], procs: list[subprocess.Popen[bytes]]
                  ) -> tuple[subprocess.Popen[bytes], str, str]:
    """Our gateway with one endpoint per backend; returns (process, URL, the org key)."""
    db = f"sqlite:///{work / 'registry.db'}"
    key = ""
    for name, url in backends.items():
        key = seed_registry(db, url, KEY, MODEL, name=name)
    port = free_port()
    env = {**os.environ, "IE_DATA_DIR": str(work), "IE_GATEWAY_PORT": str(port),
           "IE_GATEWAY_HOST": "127.0.0.1"}
    env.pop("DATABASE_URL", None)
    proc = spawn([sys.executable, "-m", "inference_endpoints.adapters.gateway.server", "--log-level",
                  "warning"], work / "gateway.log", env)
    procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/_gateway/health")
    return proc, url, key


async def level(client: aiohttp.ClientSession, proxies: list[Proxy], backend: str, series: Series,
                concurrency: int, total: int) -> dict[str, Run]:
    runs = {p.name: Run() for p in proxies}
    for _round in range(2):
        for p in proxies:
            fn = request_fn(client, p.targets[backend], p.models[backend], series)
            runs[p.name].add(await closed_loop(max(1, total // 2), concurrency, fn))
    return runs


def row(label: str, runs: dict[str, Run], ttft: bool = False) -> tuple[str, ...]:
    def values(r: Run) -> list[float]:
        return r.ttfts if ttft else r.latencies

    d = runs["direct"]
    cells = [label, f"{pct(values(d), 50) * 1e3:.2f} / {pct(values(d), 99) * 1e3:.2f}"]
    for name, r in runs.items():
        if name != "direct":
            cells.append(f"{(pct(values(r), 50) - pct(values(d), 50)) * 1e3:+.2f} / "
                         f"{(pct(values(r), 99) - pct(values(d), 99)) * 1e3:+.2f}")
    cells.append(" / ".join(f"{r.rps:.0f}" for r in runs.values()))
    cells.append(" / ".join(str(r.errors) for r in runs.values()))
    return tuple(cells)


async def hold(proxy: Proxy, streams: int) -> Run:
    series = Series("hold", "", True, 20)
    async with new_client(streams + 10) as client:
        run = Run()
        one = request_fn(client, proxy.targets["bhold"], proxy.models["bhold"], series)
        await asyncio.wait_for(asyncio.gather(*(one(run) for _ in range(streams))), 300)
    return run


async def measure(proxies: list[Proxy], args: argparse.Namespace) -> None:
    rows: list[tuple[str, ...]] = []
    async with new_client(512) as client:
        plain, slow = Series("0 ms", "", False, 1), Series("50 ms", "", False, 1)
        stream = Series("stream TTFT", "", True, 8)
        for p in proxies:  # warm-up
            await closed_loop(200, 8, request_fn(client, p.targets["b0"], p.models["b0"], plain))
        for c in args.concurrency:
            rows.append(row(f"0 ms c={c}", await level(client, proxies, "b0", plain, c, args.requests)))
        for c in args.concurrency:
            total = min(args.requests, max(200, c * 40))
            rows.append(row(f"50 ms c={c}", await level(client, proxies, "b50", slow, c, total)))
        for c in (1, 16):
            rows.append(row(f"stream TTFT c={c}",
                            await level(client, proxies, "bstream", stream, c, args.stream_requests),
                            ttft=True))
    names = [p.name for p in proxies if p.name != "direct"]
    print()
    print(table(("ms (added p50 / p99)", "direct p50 / p99", *names, "rps " + " / ".join(p.name for p in
                                                                                       proxies),
                 "errors"), rows))
    print()
    for p in proxies[1:]:
        run = await hold(p, args.hold)
        print(f"hold {args.hold} concurrent streams through {p.name}: {len(run.latencies)} completed, "
              f"{run.errors} errors (TTFT p50 {pct(run.ttfts, 50) * 1e3:.1f} ms)")


def run_peers(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="ie-bench-peers-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        backends: dict[str, str] = {}
        for name, (ttft, itl) in BACKENDS.items():
            port = free_port()
            procs.append(spawn([sys.executable, "-m", "bench.fake_upstream", "--port", str(port), "--api-key",
                                KEY, "--ttft-ms", str(ttft), "--itl-ms", str(itl)], work / f"{name}.log"))
            backends[name] = f"http://127.0.0.1:{port}"
            wait_http(f"{backends[name]}/health")
        gw, gw_url, org_key = start_gateway(work, backends, procs)
        nginx, nginx_url = start_nginx(work, backends, procs)
        litellm, litellm_url = start_litellm(work, backends, procs)
        auth = {"authorization": f"Bearer {KEY}"}
        same = dict.fromkeys(backends, MODEL)
        proxies = [
            Proxy("direct", {n: Target("direct", u, auth) for n, u in backends.items()}, same),
            Proxy("ours", {n: Target("ours", f"{gw_url}/e/default/{n}",
                                     {"authorization": f"Bearer {org_key}"}) for n in backends}, same),
            Proxy("litellm", {n: Target("litellm", litellm_url, {"authorization": f"Bearer {LITELLM_KEY}"})
                              for n in backends},
                  {n: n for n in backends}),
            Proxy("nginx", {n: Target("nginx", f"{nginx_url}/{n}", auth) for n in backends}, same),
        ]
        print(f"one process each: ours (pid {gw.pid}), LiteLLM (pid {litellm.pid}), nginx "
              f"(1 worker, pid {nginx.pid}); {len(os.sched_getaffinity(0))} CPUs shared; "
              f"load avg {os.getloadavg()[0]:.2f}")
        asyncio.run(asyncio.wait_for(measure(proxies, args), DEADLINE_S))
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)
