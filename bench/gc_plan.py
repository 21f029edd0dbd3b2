"""Garbage collection at scale: time to load facts and plan at 100,000 checkpoints and 1,000,000 leases.

    .venv/bin/python -m bench.gc_plan                 # SQLite and PostgreSQL; 1, 10 and 100 % deleted
    .venv/bin/python -m bench.gc_plan --db sqlite --checkpoints 10000 --leases 100000

Rows are bulk-inserted straight through the driver (executemany on SQLite, COPY on
PostgreSQL) after the real migrations. Each checkpoint has 10 leases on average:
90 % released with a run, 5 % open with a run, 5 % open without a run yet; one
endpoint in ten still has a record (with a backend address), the rest were removed.
"Load facts" is the collector's registry reads (candidates, their leases, and the
backend addresses of the endpoints that matter); "plan" is choosing what to ask and
`gc.plan`, fed evidence that every run ended and no backend answers (the most work:
nothing is held early). Prefect's answers and the probes themselves are not timed.
Page "all" looks at every deleted checkpoint at once; a scheduled collection looks
at a page of at most 20,000 (`max_checkpoints`) and leaves the rest for the next.
Target: under 5 s in total per database.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from inference_endpoints.core.gc import (
    Action,
    Evidence,
    RunFact,
    RunState,
    checkpoints_to_locate,
    endpoints_of,
    plan,
    runs_to_read,
)
from inference_endpoints.persistence import checkpoint_lifecycle as lifecycle
from inference_endpoints.persistence.db import get_engine, scratch_postgres
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.services.collector import DEFAULT_MAX_CANDIDATES

PG_ADMIN_URL = os.environ.get("IE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
CKPT_COLS = ("id", "org_id", "name", "kind", "base_model", "location", "size_bytes", "digest",
             "architecture", "facts_json", "status", "created_at")
LEASE_COLS = ("id", "checkpoint_id", "endpoint_id", "endpoint_name", "flow_run_id", "created_at",
              "released_at")
EP_COLS = ("id", "org_id", "name", "checkpoint_id", "instance", "max_context", "precision",
           "quantization", "status", "backend_url", "served_model_name", "serving_config_json",
           "created_at", "updated_at")


@dataclass
class Data:
    checkpoints: list[tuple[Any, ...]]
    leases: list[tuple[Any, ...]]
    endpoints: list[tuple[Any, ...]]


def make_data(org_id: str, n_ckpt: int, n_lease: int, seed: int = 7) -> Data:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    ckpts = [(f"ckpt_{i:08d}", org_id, f"c{i}", "full", "LlamaForCausalLM", f"{org_id}/ckpt_{i:08d}",
              1000, "sha256:x", "LlamaForCausalLM", "{}", "available", now) for i in range(n_ckpt)]
    leases, endpoints = [], []
    for i in range(n_lease):
        ckpt_id = f"ckpt_{rng.randrange(n_ckpt):08d}"
        ep_id, roll = f"ep_{i:08d}", rng.random()
        run = None if roll < 0.05 else str(uuid.UUID(int=rng.getrandbits(128)))
        released = now - timedelta(hours=1) if roll >= 0.10 else None
        leases.append((f"lease_{i:08d}", ckpt_id, ep_id, f"ep-{i}", run, now - timedelta(hours=2),
                       released))
        if i % 10 == 0:
            url = f"http://10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:8000"  # one per endpoint
            endpoints.append((ep_id, org_id, f"ep-{i}", ckpt_id, "cpu-dev", 1024, "auto", "none",
                              "stopped" if released else "healthy", url, f"ep-{i}", "{}", now, now))
    return Data(ckpts, leases, endpoints)


def _insert_sql(table: str, cols: tuple[str, ...], mark: str) -> str:
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join([mark] * len(cols))})"


def load_sqlite(path: Path, data: Data) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(_insert_sql("checkpoints", CKPT_COLS, "?"),
                         [_sqlite_row(r) for r in data.checkpoints])
        conn.executemany(_insert_sql("checkpoint_leases", LEASE_COLS, "?"),
                         [_sqlite_row(r) for r in data.leases])
        conn.executemany(_insert_sql("endpoints", EP_COLS, "?"), [_sqlite_row(r) for r in data.endpoints])
    conn.execute("ANALYZE")
    conn.close()


def _sqlite_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # The format SQLAlchemy writes for DateTime on SQLite.
    return tuple(v.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, datetime) else v for v in row)


def load_postgres(url: str, data: Data) -> None:
    import psycopg

    with psycopg.connect(url) as conn, conn.cursor() as cur:
        for table, cols, rows in (("checkpoints", CKPT_COLS, data.checkpoints),
                                  ("checkpoint_leases", LEASE_COLS, data.leases),
                                  ("endpoints", EP_COLS, data.endpoints)):
            with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE")


def set_deleted(url: str, fraction: float, n_ckpt: int) -> None:
    """Mark the first `fraction` of checkpoints deleted (plain SQL: this is setup, not measured)."""
    from sqlalchemy import text

    cutoff = f"ckpt_{int(n_ckpt * fraction):08d}"
    with get_engine(url).begin() as conn:
        conn.execute(text("UPDATE checkpoints SET status = 'available'"))
        conn.execute(text("UPDATE checkpoints SET status = 'deleted' WHERE id < :c"), {"c": cutoff})


def measure(registry: Registry, limit: int | None, grace_s: float = 1800.0) -> dict[str, float | int]:
    """The collector's registry reads and planning; Prefect's answer and the probes are given."""
    t0 = time.perf_counter()
    facts = lifecycle.load_facts(registry, limit=limit)
    t1 = time.perf_counter()
    with lifecycle.gc_paused():  # as the collector does
        run_ids = runs_to_read(facts)
        ended = RunFact(RunState.ENDED, "Completed")
        runs = dict.fromkeys(run_ids, ended)  # Prefect's answer (not timed)
        t2 = time.perf_counter()
        located = checkpoints_to_locate(facts, runs, lease_grace_s=grace_s)
        endpoint_ids = endpoints_of(facts, located)
    backend_urls = lifecycle.load_backend_urls(registry, endpoint_ids)
    t3 = time.perf_counter()
    urls = set(backend_urls.values())
    with lifecycle.gc_paused():
        t4 = time.perf_counter()
        evidence = Evidence(runs, frozenset(located), backend_urls, dict.fromkeys(urls, False))
        decisions = plan(facts, evidence, lease_grace_s=grace_s)
        t5 = time.perf_counter()
    load, plan_s = (t1 - t0) + (t3 - t2), (t2 - t1) + (t5 - t4)
    return {"candidates": len(facts.checkpoints), "leases": sum(len(v) for v in facts.leases.values()),
            "runs": len(run_ids), "probes": len(urls),
            "reclaim": sum(1 for d in decisions if d.action == Action.RECLAIM),
            "load_s": load, "plan_s": plan_s, "total_s": load + plan_s}


def bench_db(kind: str, url: str, fractions: list[float], n_ckpt: int, n_lease: int) -> list[dict[str, Any]]:
    registry = Registry(url)
    registry.init(default_org="default")
    org = registry.get_org_by_name("default")
    assert org is not None
    data = make_data(org.id, n_ckpt, n_lease)
    t0 = time.perf_counter()
    if kind == "sqlite":
        load_sqlite(Path(url.removeprefix("sqlite:///")), data)
    else:
        load_postgres(url, data)
    print(f"[{kind}] inserted {len(data.checkpoints):,} checkpoints, {len(data.leases):,} leases, "
          f"{len(data.endpoints):,} endpoints in {time.perf_counter() - t0:.1f} s")
    rows = []
    for fraction in fractions:
        set_deleted(url, fraction, n_ckpt)
        measure(registry, None)  # warm the caches once, as a scheduled collector would find them
        rows.append({"db": kind, "deleted": f"{fraction:.0%}", "page": "all", **measure(registry, None)})
        if n_ckpt * fraction > DEFAULT_MAX_CANDIDATES:
            rows.append({"db": kind, "deleted": f"{fraction:.0%}", "page": f"{DEFAULT_MAX_CANDIDATES:,}",
                         **measure(registry, DEFAULT_MAX_CANDIDATES)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--checkpoints", type=int, default=100_000)
    parser.add_argument("--leases", type=int, default=1_000_000)
    parser.add_argument("--deleted", type=float, nargs="+", default=[0.01, 0.1, 1.0],
                        help="fractions of checkpoints marked deleted")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    if args.db in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/registry.db"
            rows += bench_db("sqlite", url, args.deleted, args.checkpoints, args.leases)
            get_engine(url).dispose()
    if args.db in ("postgres", "both"):
        with scratch_postgres(PG_ADMIN_URL, "ie_bench") as url:
            rows += bench_db("postgres", url, args.deleted, args.checkpoints, args.leases)
    header = f"{'db':9} {'deleted':>7} {'page':>7} {'candidates':>10} {'leases':>9} {'runs':>8} " \
             f"{'probes':>7} {'load facts':>10} {'plan':>7} {'total':>7}"
    print(f"\n{args.checkpoints:,} checkpoints, {args.leases:,} leases\n{header}\n{'-' * len(header)}")
    for r in rows:
        print(f"{r['db']:9} {r['deleted']:>7} {r['page']:>7} {r['candidates']:>10,} {r['leases']:>9,} "
              f"{r['runs']:>8,} "
              f"{r['probes']:>7,} {r['load_s']:>9.2f}s {r['plan_s']:>6.2f}s {r['total_s']:>6.2f}s")


if __name__ == "__main__":
    main()
