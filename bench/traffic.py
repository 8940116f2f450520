"""Device traffic ingest: messages per second through the devices service's batch consumer,
beside raw pika consuming the same messages in the same run.

Four services run on RabbitMQ and PostgreSQL (accounts, topology, devices, gateway); an installer
registers DEVICES door phones through the gateway. With devices stopped, MESSAGES messages (80%
heartbeats, 10% status, 10% door openings, spread over the fleet) are published to
`devices.traffic`, whose exchange also feeds a queue of the benchmark's own: raw pika consumes
that one (prefetch 2,000, one ack per 500, nothing else done), the baseline. Then devices starts
and drains its queue: the clock runs from its first message to the last door opening in the
door log (a marker published last; one consumer takes its queue in order).

Prints one JSON line. Usage: python bench/traffic.py [MESSAGES] [DEVICES]
Environment: BENCH_AMQP_URI, BENCH_DATABASE_URL, BENCH_PORT.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pika

from bench.cluster import Platform, pid_cpu_seconds
from concierge.devicesim import message

CLIENTS = 20
TARGET_RATIO = 0.8
# Short, so that the offline detection is measured in the same run: once the queue is drained
# the fleet falls silent, and each device must be offline within HEARTBEAT x TOLERANCE + 5 s.
HEARTBEAT, TOLERANCE = 2.0, 2.0
OFFLINE_SLACK = 5.0


def register_fleet(platform: Platform, count: int) -> dict[str, Any]:
    """A new installer with `count` door phones in one building, added by 20 clients."""
    macs = [f"0B{n:010X}" for n in range(count)]
    _, token = platform.installer_with_macs(macs)
    _, building = platform.community_with_building(token, f"Fleet {uuid.uuid4().hex[:6]}")
    errors: list[str] = []

    def add(client: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", platform.port, timeout=60)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        for mac in macs[client::CLIENTS]:
            conn.request("POST", f"/api/v1/buildings/{building}/devices",
                         json.dumps({"type": 0, "mac": mac, "name": f"Door {mac[-4:]}"}),
                         headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 201:
                errors.append(f"{response.status} {body[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=add, args=(c,)) for c in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(errors[0])
    return {"token": token, "building": building, "macs": macs}


def traffic(macs: list[str], count: int, rng: random.Random) -> list[tuple[str, str, bytes]]:
    kinds = ["heartbeat"] * 8 + ["status", "door"]
    out = []
    for n in range(count - 1):
        kind = kinds[n % len(kinds)]
        out.append((macs[rng.randrange(len(macs))], kind,
                    json.dumps(message(kind, rng)).encode()))
    out.append((macs[0], "door", json.dumps(message("door", rng, id="bench-marker")).encode()))
    return out


def depth(channel: Any, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def raw_consume(channel: Any, queue: str, count: int) -> float:
    """Raw pika: take `count` messages, one ack per 500; seconds."""
    channel.basic_qos(prefetch_count=2000)
    received = 0
    start = time.perf_counter()
    for method, _props, _body in channel.consume(queue, inactivity_timeout=10):
        if method is None:
            break
        received += 1
        if received % 500 == 0 or received == count:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if received == count:
            break
    seconds = time.perf_counter() - start
    channel.cancel()
    if received != count:
        raise RuntimeError(f"raw pika took {received} of {count} messages")
    return seconds


def offline_detection(platform: Platform, devices: int, timeout: float = 60
                      ) -> dict[str, Any]:
    """Seconds from each device's last message to its `DeviceWentOffline` (p50 / p99 / max),
    once every device that came online has gone offline (or the timeout passed)."""
    import subprocess

    from bench.stats import summary

    deadline = time.monotonic() + timeout
    delays: list[float] = []
    while time.monotonic() < deadline:
        out = subprocess.run([platform._concierge(), "events", "devices"], env=platform.env,
                             capture_output=True, text=True, timeout=120, check=True).stdout
        events = [json.loads(line) for line in out.splitlines()]
        gone = [e for e in events if e["type"] == "DeviceWentOffline"]
        delays = [(datetime.fromisoformat(e["occurred_at"]) -
                   datetime.fromisoformat(e["data"]["last_seen"])).total_seconds()
                  for e in gone]
        if len(gone) >= devices:
            break
        time.sleep(1)
    found = summary([d * 1000 for d in delays])
    return {"devices": len(delays), "p50": round(found["p50"] / 1000, 2),
            "p99": round(found["p99"] / 1000, 2), "max": round(found["max"] / 1000, 2)}


def marker_in(database: str, schema: str) -> bool:
    import psycopg

    with psycopg.connect(database, autocommit=True) as conn:
        return conn.execute(f'SELECT 1 FROM "{schema}".devices_door_log '
                            "WHERE message_id = 'bench-marker'").fetchone() is not None


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    devices = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000
    amqp = os.environ.get("BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
    database = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    port = int(os.environ.get("BENCH_PORT", "8814"))
    platform = Platform(amqp, database, Path(tempfile.mkdtemp(prefix="bench-traffic-")), port,
                        services=("accounts", "topology", "devices", "gateway"),
                        extra_env={"CONCIERGE_HEARTBEAT_SECONDS": str(HEARTBEAT),
                                   "CONCIERGE_OFFLINE_TOLERANCE": str(TOLERANCE)}).start()
    conn = pika.BlockingConnection(pika.URLParameters(amqp))
    channel = conn.channel()
    exchange = f"{platform.amqp_prefix}devices.traffic"
    raw_queue = f"{platform.amqp_prefix}bench.raw-traffic"
    try:
        start = time.perf_counter()
        fleet = register_fleet(platform, devices)
        register_s = time.perf_counter() - start
        platform.stop_service("devices")
        channel.queue_declare(raw_queue, durable=True)
        channel.queue_bind(raw_queue, exchange, "#")
        messages = traffic(fleet["macs"], count, random.Random(3))
        props = pika.BasicProperties(content_type="application/json", delivery_mode=1)
        start = time.perf_counter()
        for mac, kind, body in messages:
            channel.basic_publish(exchange, f"{mac}.{kind}", body, props)
        while min(depth(channel, exchange), depth(channel, raw_queue)) < count:
            conn.process_data_events(0.01)
        publish_s = time.perf_counter() - start

        raw_s = raw_consume(channel, raw_queue, count)

        platform.start_service("devices")
        process = platform.process("devices")
        profile = os.environ.get("BENCH_PROFILE")
        if profile:  # the whole drain, from the start of the process (bench/hotspots.py)
            Path(profile).mkdir(parents=True, exist_ok=True)
            import subprocess

            subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                              str(process.pid), "--format", "raw", "--rate", "200",
                              "--duration", "30", "--output",
                              f"{profile}/traffic-ingest-devices.txt", "--nonblocking"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while depth(channel, exchange) >= count:
            time.sleep(0.005)
        began = time.perf_counter()
        cpu_before = pid_cpu_seconds(process.pid)
        schema = f"{platform.deployment}_devices"
        while not marker_in(database, schema):
            time.sleep(0.01)
        ingest_s = time.perf_counter() - began
        cpu_s = pid_cpu_seconds(process.pid) - cpu_before
        ingest_rate, raw_rate = count / ingest_s, count / raw_s
        detection = offline_detection(platform, devices)
        print(json.dumps({
            "messages": count, "devices": devices,
            "register_devices_s": round(register_s, 1),
            "publish_per_s": round(count / publish_s),
            "raw_pika_consume_per_s": round(raw_rate),
            "ingest_per_s": round(ingest_rate),
            "ingest_vs_raw": round(ingest_rate / raw_rate, 2),
            "target_ratio": TARGET_RATIO,
            "devices_cpu_us_per_message": round(cpu_s * 1e6 / count, 1),
            "offline_detection_s": detection,
            "offline_target_s": HEARTBEAT * TOLERANCE + OFFLINE_SLACK,
        }))
    finally:
        try:
            channel.queue_delete(raw_queue)
        finally:
            conn.close()
            platform.stop()


if __name__ == "__main__":
    main()
