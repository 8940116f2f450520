"""The relay's publish rate, with publisher confirms, from a store holding 50,000 events.

Prints one JSON line. Usage: python bench/relay_rate.py [EVENTS]
Environment: BENCH_AMQP_URI, BENCH_DATABASE_URL (PostgreSQL; empty = SQLite).
"""

from __future__ import annotations

from concierge import green

green.patch()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import kombu  # noqa: E402

from bench.cluster import infrastructure_cpu_seconds, pid_cpu_seconds  # noqa: E402
from concierge.bus import exchange_name  # noqa: E402
from concierge.config import Settings  # noqa: E402
from tests.support.toy import Counter, bootstrap_ledger  # noqa: E402


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 50000
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="bench-relay-")),
        amqp_uri=os.environ.get("BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/"),
        database_url=os.environ.get("BENCH_DATABASE_URL", ""),
        schema_prefix=f"bench{uuid.uuid4().hex[:6]}_",
    )
    # A ledger of its own: a queue a test left bound to `ledger.events` would take a copy of
    # every message and double the broker's work (it did: the relay looked half as fast).
    service = f"benchledger{uuid.uuid4().hex[:6]}"
    wiring = bootstrap_ledger(settings, service)
    app = wiring.app
    # Fill the store quickly: many events per save (one aggregate per 500 increments).
    written = 0
    while written < events:
        counter = Counter(f"c{written}")
        for _ in range(min(499, events - written - 1)):
            counter.increment(1)
        app.record(counter)
        written = app.max_position()
    # A queue bound to the exchange, so the broker really stores what the relay publishes.
    with kombu.Connection(settings.amqp_uri) as conn:
        queue = kombu.Queue("bench.relay-sink", kombu.Exchange(
            exchange_name(service), type="topic", durable=True), routing_key="#", durable=True)
        queue(conn.default_channel).declare()
        queue(conn.default_channel).purge()
    relay = wiring.relay
    assert relay.lock.acquire()
    before = {"relay": pid_cpu_seconds(os.getpid()), **infrastructure_cpu_seconds()}
    start = time.perf_counter()
    while relay.publish_pending():
        pass
    elapsed = time.perf_counter() - start
    after = {"relay": pid_cpu_seconds(os.getpid()), **infrastructure_cpu_seconds()}
    with kombu.Connection(settings.amqp_uri) as conn:
        bound = queue(conn.default_channel)
        stored = bound.queue_declare(passive=True).message_count
        bound.delete()
        conn.default_channel.exchange_delete(exchange_name(service))
    wiring.close()
    print(json.dumps({"relay_events": written, "relay_confirmed_per_s": round(written / elapsed),
                      "relay_seconds": round(elapsed, 2), "broker_stored": stored,
                      "store": "postgres" if settings.uses_postgres else "sqlite",
                      # Where the time went: CPU seconds of each part while publishing.
                      "relay_cpu_s": {k: round(after[k] - before[k], 2) for k in after}}))


if __name__ == "__main__":
    main()
