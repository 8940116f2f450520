"""A large installer base heartbeating: DEVICES devices each send a heartbeat every 30 s (and
their status when they start) for SECONDS seconds, through `concierge load devices`' publisher,
to four services on RabbitMQ and PostgreSQL.

The devices are real: an installer registers their MACs by CSV and adds them with the template
(`POST .../devices/import`, 1,000 a request, spread over communities of 5,000); then the devices
service restarts, as after a rollout, so that its memory is the traffic's and not what adding
the devices left behind (reported too). Every second the benchmark reads the ingest queue's
backlog and the devices process's resident memory. Targets: no
lag growth (the backlog of the last minute no higher than of the first), devices' RSS at most
200 MB. The raw baseline is the publisher's own rate (what the fleet asks of the broker).

Prints one JSON line. Usage: python bench/fleet.py [DEVICES] [SECONDS]
Environment: BENCH_AMQP_URI, BENCH_DATABASE_URL, BENCH_PORT.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.cluster import Platform
from concierge.devicesim import Progress, TrafficPublisher, run_load

INTERVAL = 30.0
PER_COMMUNITY = 5_000
PER_REQUEST = 1_000
RSS_TARGET_MB = 200


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def register(platform: Platform, count: int) -> list[str]:
    """`count` door phones of a new installer, added with the template; their MACs."""
    macs = [f"0D{n:010X}" for n in range(count)]
    _, token = platform.installer_with_macs(macs)
    building = ""
    for start in range(0, count, PER_REQUEST):
        if start % PER_COMMUNITY == 0:
            _, building = platform.community_with_building(token, f"Fleet {start}")
        items = ";".join(f"Door {n},0,{macs[n]}"
                         for n in range(start, min(start + PER_REQUEST, count)))
        status, report = platform.call("POST", f"/api/v1/buildings/{building}/devices/import",
                                       {"devices": items}, token, timeout=600)
        assert status == 200 and report["refused"] == 0, str(report)[:300]
    return macs


def main() -> None:
    devices = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 150.0
    amqp = os.environ.get("BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
    database = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    port = int(os.environ.get("BENCH_PORT", "8815"))
    platform = Platform(amqp, database, Path(tempfile.mkdtemp(prefix="bench-fleet-")), port,
                        services=("accounts", "topology", "devices", "gateway")).start()
    try:
        start = time.perf_counter()
        macs = register(platform, devices)
        register_s = time.perf_counter() - start
        rss_registering = rss_mb(platform.process("devices").pid)
        # A fresh devices process, as after a rollout: what the fleet's traffic costs, apart
        # from what adding 100,000 devices left behind (the units' peaks).
        platform.stop_service("devices")
        platform.start_service("devices")
        pid = platform.process("devices").pid
        publisher = TrafficPublisher(amqp, platform.amqp_prefix)
        while publisher.consumers() < 1:
            time.sleep(0.2)
        rss_before = rss_mb(pid)
        samples: list[tuple[float, int, float]] = []  # (seconds, backlog, RSS MB)
        began = time.monotonic()

        def tick(_progress: Progress) -> None:
            samples.append((time.monotonic() - began, publisher.backlog() or 0, rss_mb(pid)))

        try:
            load = run_load(publisher, macs, INTERVAL, seconds, out=None, on_tick=tick)
        finally:
            publisher.close()
        first = [b for t, b, _ in samples if t <= 60]
        last = [b for t, b, _ in samples if t >= seconds - 60]
        steady = [b for t, b, _ in samples if t >= INTERVAL]
        peak_rss = max(r for _, _, r in samples)
        print(json.dumps({
            "devices": devices, "seconds": seconds, "interval_s": INTERVAL,
            "register_devices_s": round(register_s, 1),
            "sent": load["sent"], "publish_per_s": load["rate"],
            "backlog_max": max(b for _, b, _ in samples),
            "backlog_first_minute_max": max(first), "backlog_last_minute_max": max(last),
            "backlog_after_start_max": max(steady) if steady else None,
            "lag_grows": max(last) > max(first),
            "devices_rss_mb_after_adding_them": round(rss_registering, 1),
            "devices_rss_mb_before": round(rss_before, 1), "devices_rss_mb_max": round(peak_rss, 1),
            "rss_target_mb": RSS_TARGET_MB,
            "publisher_behind_max_ms": load["max_behind_ms"],
            "dead_letters": load["dead_letters"],
        }))
    finally:
        platform.stop()


if __name__ == "__main__":
    main()
