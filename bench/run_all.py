"""Every figure of the README in one run, each benchmark in its own process, with the targets.

Usage: make bench   (or: python bench/run_all.py)
Environment: BENCH_AMQP_URI (default local RabbitMQ), BENCH_DATABASE_URL (default the local
PostgreSQL database concierge_bench, created if missing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
AMQP = os.environ.get("BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
DATABASE = os.environ.get("BENCH_DATABASE_URL",
                          "postgresql://postgres@127.0.0.1:5432/concierge_bench")


def ensure_database(url: str) -> None:
    """A fresh benchmark database each run: schemas left by earlier runs (tens of thousands of
    events each) make PostgreSQL slower and the figures drift."""
    import psycopg

    admin, _, name = url.rpartition("/")
    with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def run(script: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_AMQP_URI": AMQP,
           "BENCH_DATABASE_URL": DATABASE}
    print(f"running bench/{script} {' '.join(args)}", file=sys.stderr, flush=True)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        raise SystemExit(f"bench/{script} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def main() -> None:
    ensure_database(DATABASE)
    raw = run("raw_pika.py", AMQP.replace("5672/", "5672/%2F") if AMQP.endswith("5672/")
              else AMQP)
    relay = run("relay_rate.py", "50000")
    latency = run("event_latency.py", "300")
    gateway = run("gateway_latency.py", "300")
    rebuild = run("rebuild_rate.py", "30000")
    half_raw = raw["pika_publish_per_s"] / 2
    lat = latency["event_latency_ms"]
    one = gateway["add_apartment_1_client"]
    twenty = gateway["add_apartment_20_clients"]
    replicas = gateway["add_apartment_20_clients_2_topology_replicas"]
    answers = replicas["statuses"]
    failures = sum(n for code, n in answers.items() if code != "201")
    share = replicas["per_s"] / twenty["per_s"]
    rows = [
        ("raw pika publish, no confirms (msg/s)", raw["pika_publish_per_s"], "baseline"),
        ("raw pika consume, prefetch 1000 (msg/s)", raw["pika_consume_per_s"], "baseline"),
        ("relay publish with confirms, 50k-event store (events/s)",
         relay["relay_confirmed_per_s"],
         f"{verdict(relay['relay_confirmed_per_s'] >= half_raw)} (>= {half_raw:.0f}, half raw)"),
        ("event latency commit -> subscriber effect p50 / p99 (ms)",
         f"{lat['p50']} / {lat['p99']}", verdict(lat["p50"] <= 10 and lat["p99"] <= 25)),
        ("add apartment, 1 client: p50 / p99 (ms)",
         f"{one['latency_ms']['p50']} / {one['latency_ms']['p99']}",
         verdict(one["latency_ms"]["p50"] <= 15)),
        ("add apartment, 20 clients: req/s (p50 / p99 ms)",
         f"{twenty['per_s']} ({twenty['latency_ms']['p50']} / {twenty['latency_ms']['p99']})",
         verdict(twenty["per_s"] >= 250)),
        ("  ... whole chain to the last activation email (req/s)", twenty["chain_per_s"],
         "no target; the emails finish after the answers"),
        ("add apartment, 20 clients, two topology replicas: req/s (share of one replica's)",
         f"{replicas['per_s']} ({share:.0%}), answers {answers}",
         f"{verdict(failures == 0)} (every answer 201: no 5xx, no false 409)"
         + ("" if share >= 0.85 else "; a drop of more than 15% is a finding to explain")),
        ("  ... CPU per request, all processes / RabbitMQ alone (ms)",
         f"{twenty['cpu_ms_per_request']['total']} / {twenty['cpu_ms_per_request']['rabbitmq']}",
         "no target; RabbitMQ runs none of our code, so its figure tracks the machine"),
        ("residents read model rebuild (events/s)", rebuild["rebuild_events_per_s"],
         verdict(rebuild["rebuild_events_per_s"] >= 30000)),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'figure'.ljust(width)}  value  verdict")
    for name, value, note in rows:
        print(f"{name.ljust(width)}  {value}  {note}")
    print(json.dumps({"raw": raw, "relay": relay, "latency": latency, "gateway": gateway,
                      "rebuild": rebuild}))


if __name__ == "__main__":
    main()
