"""End-to-end event latency: from the commit in one service to the committed effect in another.

The ledger commits an event; its relay publishes it; the tally service applies it and commits its
own event with the tracking position. Measured one event at a time on an idle system. Both
services run in this process (they share one core, the harder case). Prints one JSON line.
Environment: BENCH_AMQP_URI, BENCH_DATABASE_URL (PostgreSQL; empty = SQLite). Usage:
python bench/event_latency.py [EVENTS]
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
from typing import Any  # noqa: E402

from nameko.runners import ServiceRunner  # noqa: E402

from bench.stats import summary  # noqa: E402
from concierge.config import Settings  # noqa: E402
from tests.support.harness import reset_bus  # noqa: E402
from tests.support.toy import LedgerService, TallyService  # noqa: E402


def runtime_of(runner: ServiceRunner) -> Any:
    container = next(iter(runner.containers))
    return next(d for d in container.dependencies if hasattr(d, "runner")).wiring


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="bench-latency-")),
        amqp_uri=os.environ.get("BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/"),
        database_url=os.environ.get("BENCH_DATABASE_URL", ""),
        schema_prefix=f"bench{uuid.uuid4().hex[:6]}_",
    )
    reset_bus(settings.amqp_uri, ["ledger", "tally"])
    config = {**settings.nameko_config(), "CONCIERGE_SETTINGS": settings}
    runners = []
    for cls in (LedgerService, TallyService):
        runner = ServiceRunner(config)
        runner.add_service(cls)
        runner.start()
        runners.append(runner)
    ledger, tally = runtime_of(runners[0]), runtime_of(runners[1])
    committed: dict[int, float] = {}
    applied: dict[int, float] = {}
    ledger.app._listeners.insert(
        0, lambda records: committed.__setitem__(records[-1].position, time.perf_counter()))
    tracked = tally.subscriptions["ledger"][0]
    original = tracked.handler.apply

    def timed_apply(envelope: dict[str, Any]) -> bool:
        result = original(envelope)
        applied[int(envelope["position"])] = time.perf_counter()
        return result

    tracked.handler.apply = timed_apply
    counter = ledger.app.create("latency")
    green.sleep(1.0)
    samples = []
    for _ in range(count):
        ledger.app.increment(counter, 1)
        position = ledger.app.max_position()
        deadline = time.perf_counter() + 5
        while position not in applied and time.perf_counter() < deadline:
            green.sleep(0.0005)
        if position in applied:
            samples.append((applied[position] - committed[position]) * 1000)
        green.sleep(0.02)  # idle between events
    for runner in runners:
        runner.stop()
    reset_bus(settings.amqp_uri, ["ledger", "tally"])  # no durable queue left to fill up
    print(json.dumps({"event_latency_ms": summary(samples), "events": count,
                      "store": "postgres" if settings.uses_postgres else "sqlite"}))


if __name__ == "__main__":
    main()
