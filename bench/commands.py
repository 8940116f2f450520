"""Command round trip: a remote operation from queued to succeeded, at 1,000 devices, beside a
raw pika round trip measured in the same run.

Five services run on RabbitMQ and PostgreSQL (accounts, topology, devices, notify, gateway);
DEVICES door phones are registered through the gateway (`concierge.devicesim.register_fleet`)
and answered by the device simulator (`concierge simulate devices`' `DeviceSimulator`, in a
thread of this process). COMMANDS reboots, one device after another, are queued through the
gateway at RATE per second. Each goes: devices records it (`CommandQueued`), its relay publishes
it, notify's policy records the push, the pusher sends it to the device's mailbox on
`devices.push`, the simulated device acknowledges it ("received", "succeeded") on
`devices.traffic`, and the ingest moves the command to succeeded (`CommandSucceeded`). The round
trip is the time between the two events as devices recorded them (their `occurred_at`, read
from devices' events on the bus); the client's view adds the gateway before and the relay after.

The baseline: the same number of raw pika round trips, one message to a queue, a consumer that
answers on another, at the same pace (two broker hops; the command takes four, and three
database commits).

Prints one JSON line. Usage: python bench/commands.py [COMMANDS] [DEVICES] [RATE]
Environment: BENCH_AMQP_URI, BENCH_DATABASE_URL, BENCH_PORT.
"""

from __future__ import annotations

import http.client
import itertools
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

from bench.cluster import Platform
from bench.stats import summary
from concierge.bus import exchange_name
from concierge.devicesim import DeviceSimulator, TrafficPublisher, message, register_fleet

TARGET_P50_MS, TARGET_P99_MS = 20.0, 100.0


def raw_round_trips(amqp: str, count: int, rate: float) -> dict[str, float]:
    """`count` messages to a queue, answered on another by a consumer thread: the time from
    publishing one to receiving its answer, at `rate` per second."""
    tag = uuid.uuid4().hex[:8]
    ask, answer = f"bench.ping.{tag}", f"bench.pong.{tag}"
    stop = threading.Event()
    ready = threading.Event()

    def echo() -> None:
        conn = pika.BlockingConnection(pika.URLParameters(amqp))
        channel = conn.channel()
        channel.queue_declare(ask, auto_delete=True)
        channel.queue_declare(answer, auto_delete=True)

        def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
            ch.basic_publish("", answer, body)
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(ask, on_message)
        ready.set()
        while not stop.is_set():
            conn.process_data_events(time_limit=0.05)
        conn.close()

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    ready.wait(10)
    conn = pika.BlockingConnection(pika.URLParameters(amqp))
    channel = conn.channel()
    samples: list[float] = []
    sent: dict[bytes, float] = {}

    def on_answer(ch: Any, method: Any, props: Any, body: bytes) -> None:
        samples.append((time.perf_counter() - sent.pop(body)) * 1000)
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(answer, on_answer)
    start = time.perf_counter()
    for n in range(count):
        wait = start + n / rate - time.perf_counter()
        if wait > 0:
            conn.process_data_events(time_limit=wait)
        body = str(n).encode()
        sent[body] = time.perf_counter()
        channel.basic_publish("", ask, body)
    deadline = time.monotonic() + 30
    while sent and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    stop.set()
    conn.close()
    thread.join(5)
    return summary(samples)


def online(platform: Platform, fleet: dict[str, Any]) -> int:
    """How many of the fleet's devices stand online in the building's list."""
    count, page = 0, 1
    while True:
        status, found = platform.call("GET", f"/api/v1/buildings/{fleet['building']}/devices"
                                             f"?per_page=100&page={page}", token=fleet["token"])
        if status != 200:
            return 0
        count += sum(1 for item in found["items"] if item["status"] == "online")
        if page * 100 >= found["total"]:
            return count
        page += 1


def _instant(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def main() -> None:
    commands = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000
    devices = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000
    rate = float(sys.argv[3]) if len(sys.argv) > 3 else 100.0
    amqp = os.environ.get("BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
    database = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    port = int(os.environ.get("BENCH_PORT", "8815"))
    data = Path(tempfile.mkdtemp(prefix="bench-commands-"))
    platform = Platform(amqp, database, data, port,
                        services=("accounts", "topology", "devices", "notify", "gateway"),
                        log_dir=data / "logs" if os.environ.get("BENCH_LOGS") else None).start()
    listener = pika.BlockingConnection(pika.URLParameters(amqp))
    events = listener.channel()
    watch = f"{platform.amqp_prefix}bench.commands.{uuid.uuid4().hex[:8]}"
    simulator: DeviceSimulator | None = None
    stop = threading.Event()
    try:
        start = time.perf_counter()
        fleet = register_fleet(platform.base, "bench-distributor", "bench-distributor-pw",
                               devices)
        register_s = time.perf_counter() - start
        assert len(fleet["devices"]) == devices, len(fleet["devices"])
        source = exchange_name("devices", platform.amqp_prefix)
        events.queue_declare(watch, auto_delete=True)
        for kind in ("CommandQueued", "CommandSucceeded"):
            events.queue_bind(watch, source, kind)
        for kind in ("PushQueued", "PushSent"):
            events.queue_bind(watch, exchange_name("notify", platform.amqp_prefix), kind)
        # The fleet is online first, as real devices are: one status each, then heartbeats
        # every 30 s from the simulator.
        hello = TrafficPublisher(amqp, platform.amqp_prefix)
        for mac in fleet["macs"]:
            hello.publish(mac, "status", message("status", random.Random(1)))
        hello.close()
        online_deadline = time.monotonic() + 60
        while time.monotonic() < online_deadline and online(platform, fleet) < devices:
            time.sleep(0.5)
        simulator = DeviceSimulator(amqp, fleet["macs"], platform.amqp_prefix)
        answering = threading.Thread(target=simulator.run, args=(3600,),
                                     kwargs={"out": None, "until": stop.is_set}, daemon=True)
        answering.start()

        queued: dict[str, float] = {}
        succeeded: dict[str, float] = {}
        seen: dict[str, float] = {}
        # Where the time goes, per command: notify's push recorded and sent, the device's ack.
        stages: dict[str, dict[str, float]] = {}

        def on_event(ch: Any, method: Any, props: Any, body: bytes) -> None:
            envelope = json.loads(body)
            kind, data = envelope["type"], envelope["data"]
            at = _instant(envelope["occurred_at"])
            if kind == "CommandQueued":
                queued[envelope["stream_id"]] = at
            elif kind == "CommandSucceeded":
                succeeded[envelope["stream_id"]] = at
                seen[envelope["stream_id"]] = time.time()
                stages.setdefault(envelope["stream_id"], {})["acked"] = _instant(data["at"])
            else:
                stages.setdefault(data["command_id"], {})[kind] = at
            ch.basic_ack(method.delivery_tag)

        events.basic_consume(watch, on_event)
        client = http.client.HTTPConnection("127.0.0.1", platform.port, timeout=60)
        headers = {"Content-Type": "application/json",
                   "Authorization": f"Bearer {fleet['token']}"}
        profile = os.environ.get("BENCH_PROFILE")
        if profile:  # the command phase of devices and notify (bench/hotspots.py)
            import subprocess

            Path(profile).mkdir(parents=True, exist_ok=True)
            for name in ("devices", "notify"):
                subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record",
                                  "--pid", str(platform.process(name).pid), "--format", "raw",
                                  "--rate", "500", "--duration", str(int(commands / rate) + 2),
                                  "--output", f"{profile}/commands-{name}.txt", "--nonblocking"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        asked: dict[str, float] = {}
        targets = list(fleet["devices"].values())
        began = time.perf_counter()
        for n in range(commands):
            while (wait := began + n / rate - time.perf_counter()) > 0:
                listener.process_data_events(time_limit=wait)
            at = time.time()
            client.request("POST", f"/api/v1/devices/{targets[n % len(targets)]}/commands",
                           json.dumps({"kind": "reboot"}), headers)
            response = client.getresponse()
            body = json.loads(response.read())
            if response.status != 201:
                raise RuntimeError(f"{response.status} {body}")
            asked[body["id"]] = at
            listener.process_data_events(time_limit=0)
        queue_s = time.perf_counter() - began
        deadline = time.monotonic() + 120
        while len(succeeded) < commands and time.monotonic() < deadline:
            listener.process_data_events(time_limit=0.1)
        trips = [(succeeded[c] - queued[c]) * 1000 for c in succeeded if c in queued]
        clients = [(seen[c] - asked[c]) * 1000 for c in seen if c in asked]
        steps: dict[str, list[float]] = {"relay_and_policy": [], "pusher": [],
                                          "to_the_device_and_back": [], "ingest": []}
        for c, at in queued.items():
            stage = stages.get(c, {})
            if c not in succeeded or len(stage) < 3:
                continue
            marks = [at, stage["PushQueued"], stage["PushSent"], stage["acked"], succeeded[c]]
            for name, (a, b) in zip(steps, itertools.pairwise(marks), strict=True):
                steps[name].append((b - a) * 1000)
        raw = raw_round_trips(amqp, commands, rate)
        trip = summary(trips)
        if os.environ.get("BENCH_LOGS"):
            print(f"logs: {data / 'logs'}", file=sys.stderr)
            for c in list(succeeded)[:5]:
                print(c, queued.get(c), stages.get(c), succeeded[c], file=sys.stderr)
        print(json.dumps({
            "commands": commands, "devices": devices, "rate_per_s": rate,
            "register_devices_s": round(register_s, 1),
            "queued_per_s": round(commands / queue_s, 1),
            "succeeded": len(trips),
            "round_trip_ms": trip, "client_round_trip_ms": summary(clients),
            "raw_pika_round_trip_ms": raw,
            "stages_p50_ms": {name: summary(values)["p50"] for name, values in steps.items()},
            "pushes": simulator.progress.pushes, "duplicates": simulator.progress.duplicates,
            "target_p50_ms": TARGET_P50_MS, "target_p99_ms": TARGET_P99_MS,
        }))
    finally:
        stop.set()
        time.sleep(0.3)
        if simulator is not None:
            simulator.close(delete_queues=True)
        listener.close()
        platform.stop()


if __name__ == "__main__":
    main()
