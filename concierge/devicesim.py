"""Synthetic device traffic for load tests and demos: `concierge load devices`.

Runs outside eventlet, on pika, as a fleet of real intercoms would talk to the broker: each
device sends a heartbeat every `interval` seconds, a status message when it starts, and door
openings and calls at the rates asked for, to `<prefix>devices.traffic` with the routing key
`<MAC>.<kind>` (contracts/traffic.py). Bounded in count and time, and it targets only the broker
it is given.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import pika

from contracts.traffic import VERSION

TRAFFIC = "devices.traffic"
MAX_DEVICES = 1_000_000
MAX_SECONDS = 24 * 3600


def synthetic_macs(count: int, prefix: str = "0E") -> list[str]:
    """`count` MACs that no real device has (a locally administered range by default)."""
    head = prefix.upper()
    return [f"{head}{n:0{12 - len(head)}X}" for n in range(count)]


def now_iso(at: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if at is None else at, UTC).isoformat()


def message(kind: str, rng: random.Random, at: float | None = None,
            **fields: Any) -> dict[str, Any]:
    """A message of `kind` as contracts/traffic.py describes it, with plausible values."""
    sent = now_iso(at)
    body: dict[str, Any] = {"v": VERSION, "id": uuid.uuid4().hex, "at": sent}
    if kind == "status":
        body.update(model="R29C", firmware="29.30.2.805",
                    ip=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                    uptime=rng.randrange(86_400))
    elif kind == "door":
        method = rng.choice(("pin", "rf_card", "face", "call", "smartplus_homepage"))
        credential = method if method in ("pin", "rf_card", "face") else "none"
        body.update(relay=1, access_method=method, credential_kind=credential,
                    result="success" if rng.random() < 0.95 else "failure", time=sent)
    elif kind == "call":
        body.update(caller=f"59{rng.randrange(10**8):08d}", callee=f"APT {rng.randrange(1, 500)}",
                    start=sent, duration=rng.randrange(0, 120), answered=rng.random() < 0.7)
    body.update(fields)
    return body


@dataclass
class Progress:
    sent: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def count(self, kind: str) -> None:
        self.sent += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def rate(self) -> float:
        return self.sent / max(time.monotonic() - self.started, 1e-9)


class TrafficPublisher:
    """Publishes device traffic to one broker's `<prefix>devices.traffic` exchange."""

    def __init__(self, amqp_uri: str, prefix: str = "") -> None:
        if amqp_uri.startswith("concierge-memory"):
            raise ValueError("the load generator needs a real broker (AMQP_URI)")
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
        self.channel = self.connection.channel()
        self.exchange = f"{prefix}{TRAFFIC}"
        self.queue = self.exchange
        self.channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
        self._transient = pika.BasicProperties(content_type="application/json",
                                               delivery_mode=1)
        self._persistent = pika.BasicProperties(content_type="application/json",
                                                delivery_mode=2)

    def publish(self, mac: str, kind: str, body: bytes | dict[str, Any]) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        # Heartbeats and status are soon stale: not worth the broker's disk.
        props = self._transient if kind in ("heartbeat", "status") else self._persistent
        self.channel.basic_publish(self.exchange, f"{mac}.{kind}", raw, props)

    def backlog(self) -> int | None:
        """Messages waiting in the ingest queue (None before the devices service declared it)."""
        try:
            return self.channel.queue_declare(self.queue, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            self.channel = self.connection.channel()
            return None

    def consumers(self) -> int:
        """How many consumers the ingest queue has (0 before the devices service took it)."""
        try:
            return int(self.channel.queue_declare(self.queue,
                                                  passive=True).method.consumer_count)
        except pika.exceptions.ChannelClosedByBroker:
            self.channel = self.connection.channel()
            return 0

    def dead_letters(self) -> int | None:
        try:
            return self.channel.queue_declare(f"{self.queue}.dead",
                                              passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            self.channel = self.connection.channel()
            return None

    def pump(self) -> None:
        self.connection.process_data_events(0)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


def schedule(macs: Sequence[str], interval: float, duration: float, door_rate: float,
             call_rate: float, rng: random.Random) -> Iterator[tuple[float, str, str]]:
    """(when, MAC, kind) in time order: each device's status at its first beat, a heartbeat
    every `interval` seconds from a random phase, door openings and calls at the fleet-wide
    rates per second (a Poisson process each)."""
    import heapq

    queue: list[tuple[float, int, str]] = []
    for index in range(len(macs)):
        heapq.heappush(queue, (rng.uniform(0, interval), index, "first"))
    for kind, rate in (("door", door_rate), ("call", call_rate)):
        if rate > 0:
            heapq.heappush(queue, (rng.expovariate(rate), -1, kind))
    while queue:
        when, index, kind = heapq.heappop(queue)
        if when >= duration:
            return
        if index >= 0:
            if kind == "first":
                yield when, macs[index], "status"
            yield when, macs[index], "heartbeat"
            heapq.heappush(queue, (when + interval, index, "beat"))
        else:
            yield when, rng.choice(macs), kind
            heapq.heappush(queue, (when + rng.expovariate(door_rate if kind == "door"
                                                          else call_rate), -1, kind))


def run_load(publisher: TrafficPublisher, macs: Sequence[str], interval: float,
             duration: float, door_rate: float = 0.0, call_rate: float = 0.0,
             out: TextIO | None = sys.stderr, seed: int = 1,
             on_tick: Callable[[Progress], None] | None = None) -> dict[str, Any]:
    """Send the fleet's traffic in real time for `duration` seconds; a summary."""
    if not 0 < len(macs) <= MAX_DEVICES:
        raise ValueError(f"between 1 and {MAX_DEVICES} devices")
    if not 0 < duration <= MAX_SECONDS:
        raise ValueError(f"a duration of at most {MAX_SECONDS} s")
    rng = random.Random(seed)
    progress = Progress()
    start = time.monotonic()
    next_line = start + 1
    max_backlog = 0
    behind = 0.0
    for when, mac, kind in schedule(macs, interval, duration, door_rate, call_rate, rng):
        wait = start + when - time.monotonic()
        if wait > 0.002:
            publisher.connection.sleep(wait)
        else:
            behind = max(behind, -wait)
        publisher.publish(mac, kind, message(kind, rng))
        progress.count(kind)
        now = time.monotonic()
        if now >= next_line:
            next_line = now + 1
            backlog = publisher.backlog() or 0
            max_backlog = max(max_backlog, backlog)
            if on_tick is not None:
                on_tick(progress)
            if out is not None:
                out.write(f"\rsent {progress.sent:>9}  {progress.rate():8.0f}/s  backlog "
                          f"{backlog:>7}  behind {behind * 1000:6.0f} ms  "
                          f"{now - start:6.0f}/{duration:.0f} s ")
                out.flush()
    publisher.pump()
    if out is not None:
        out.write("\n")
    return {"devices": len(macs), "sent": progress.sent, "by_kind": progress.by_kind,
            "seconds": round(time.monotonic() - start, 2), "rate": round(progress.rate(), 1),
            "max_backlog": max_backlog, "max_behind_ms": round(behind * 1000, 1),
            "dead_letters": publisher.dead_letters()}


# --- simulated devices that answer their pushes: `concierge simulate devices` -------------------

MAX_SIMULATED = 100_000  # one push queue each


@dataclass
class Answered:
    pushes: int = 0
    duplicates: int = 0
    acked: int = 0
    doors: int = 0
    calls: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


class DeviceSimulator:
    """Devices that consume their push queues (`<prefix>devices.push.<MAC>`, declared as the
    cloud declares them) and answer each push as a device would: an `ack` "received", then
    "succeeded" (or "failed", for `fail_ratio` of them); a command id seen before is
    acknowledged again and not carried out twice. They also open doors and place calls."""

    def __init__(self, amqp_uri: str, macs: Sequence[str], prefix: str = "",
                 fail_ratio: float = 0.0, seed: int = 1, prefetch: int = 500) -> None:
        from contracts.traffic import PUSH_EXCHANGE, PUSH_QUEUE_ARGUMENTS, push_queue_name

        if not 0 < len(macs) <= MAX_SIMULATED:
            raise ValueError(f"between 1 and {MAX_SIMULATED} devices")
        self.publisher = TrafficPublisher(amqp_uri, prefix)
        self.amqp_uri = amqp_uri
        self.prefix = prefix
        self.macs = list(macs)
        self.rng = random.Random(seed)
        self.fail_ratio = fail_ratio
        self.progress = Answered()
        self.done: set[str] = set()
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
        channel = self.connection.channel()
        channel.basic_qos(prefetch_count=prefetch)
        exchange = f"{prefix}{PUSH_EXCHANGE}"
        channel.exchange_declare(exchange, exchange_type="direct", durable=True)
        for mac in self.macs:
            queue = push_queue_name(mac, prefix)
            channel.queue_declare(queue, durable=True, arguments=PUSH_QUEUE_ARGUMENTS)
            channel.queue_bind(queue, exchange, routing_key=mac)
            channel.basic_consume(queue, self._answer(mac))
        self.channel = channel

    def _answer(self, mac: str) -> Callable[..., None]:
        def on_push(channel: Any, method: Any, _props: Any, body: bytes) -> None:
            self.progress.pushes += 1
            try:
                push = json.loads(body)
                command_id = str(push["command_id"])
                kind = str(push.get("kind"))
            except (ValueError, KeyError, TypeError):
                channel.basic_ack(method.delivery_tag)  # not a push: nothing to answer
                return
            self.progress.by_kind[kind] = self.progress.by_kind.get(kind, 0) + 1
            self.publisher.publish(mac, "ack", message("ack", self.rng, command_id=command_id,
                                                       outcome="received", detail=None))
            if command_id in self.done:
                self.progress.duplicates += 1
                outcome = "succeeded"
            else:
                self.done.add(command_id)
                outcome = "failed" if self.rng.random() < self.fail_ratio else "succeeded"
            self.publisher.publish(mac, "ack", message(
                "ack", self.rng, command_id=command_id, outcome=outcome,
                detail=None if outcome == "succeeded" else "simulated failure"))
            self.progress.acked += 1
            channel.basic_ack(method.delivery_tag)

        return on_push

    def run(self, duration: float, door_rate: float = 0.0, call_rate: float = 0.0,
            out: TextIO | None = sys.stderr, until: Callable[[], bool] | None = None,
            heartbeat: float | None = 30.0) -> dict[str, Any]:
        """Answer pushes, send a status then a heartbeat every `heartbeat` seconds from each
        device (None: none), and door openings and calls (fleet-wide rates per second), for
        `duration` seconds or until `until()` says so; a summary."""
        if not 0 < duration <= MAX_SECONDS:
            raise ValueError(f"a duration of at most {MAX_SECONDS} s")
        progress = self.progress
        start = time.monotonic()
        beats = iter(schedule(self.macs, heartbeat, duration, 0.0, 0.0, self.rng)
                     if heartbeat else ())
        beat = next(beats, None)
        next_line = start + 1
        next_door = start + (self.rng.expovariate(door_rate) if door_rate > 0 else duration + 1)
        next_call = start + (self.rng.expovariate(call_rate) if call_rate > 0 else duration + 1)
        while (now := time.monotonic()) < start + duration and not (until and until()):
            next_beat = start + beat[0] if beat is not None else next_line
            self.connection.process_data_events(time_limit=min(0.05, max(
                0.0, min(next_door, next_call, next_line, next_beat) - now)))
            now = time.monotonic()
            while beat is not None and start + beat[0] <= now:
                self.publisher.publish(beat[1], beat[2], message(beat[2], self.rng))
                beat = next(beats, None)
            while next_door <= now:
                self.publisher.publish(self.rng.choice(self.macs), "door",
                                       message("door", self.rng))
                progress.doors += 1
                next_door += self.rng.expovariate(door_rate)
            while next_call <= now:
                self.publisher.publish(self.rng.choice(self.macs), "call",
                                       message("call", self.rng))
                progress.calls += 1
                next_call += self.rng.expovariate(call_rate)
            if now >= next_line:
                next_line = now + 1
                backlog = self.publisher.backlog() or 0
                if out is not None:
                    rate = progress.acked / max(now - start, 1e-9)
                    out.write(f"\rpushes {progress.pushes:>7}  acked {progress.acked:>7}  "
                              f"{rate:7.1f}/s  doors {progress.doors:>6}  calls "
                              f"{progress.calls:>6}  ingest lag {backlog:>6}  "
                              f"{now - start:6.0f}/{duration:.0f} s ")
                    out.flush()
        self.publisher.pump()
        if out is not None:
            out.write("\n")
        seconds = time.monotonic() - start
        return {"devices": len(self.macs), "pushes": progress.pushes,
                "duplicates": progress.duplicates, "acked": progress.acked,
                "by_kind": progress.by_kind, "doors": progress.doors, "calls": progress.calls,
                "seconds": round(seconds, 2), "ack_rate": round(progress.acked / seconds, 1),
                "dead_letters": self.publisher.dead_letters()}

    def close(self, delete_queues: bool = False) -> None:
        """Disconnect; with `delete_queues`, also drop the devices' push queues (a test's or
        benchmark's devices, whose queues would otherwise wait on the broker for weeks)."""
        with contextlib.suppress(Exception):
            if self.connection.is_open:
                self.connection.close()
        self.publisher.close()
        if delete_queues:
            delete_push_queues(self.amqp_uri, self.macs, self.prefix)


def delete_push_queues(amqp_uri: str, macs: Sequence[str], prefix: str = "") -> None:
    """Drop the push queues of these devices (what they hold goes with them)."""
    from contracts.traffic import push_queue_name

    connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
    try:
        channel = connection.channel()
        for mac in macs:
            channel.queue_delete(push_queue_name(mac, prefix))
    finally:
        connection.close()


def register_fleet(base_url: str, distributor: str, password: str, count: int,
                   timeout: float = 600.0) -> dict[str, Any]:
    """`count` door phones registered through the gateway's public API, as an installer would
    have them: a new installer of `distributor` with their MACs in its library, a community
    with one building, the devices added with the template import (1,000 a call). Their MACs
    and ids, and the installer's token."""
    import urllib.error
    import urllib.request

    def call(method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        request = urllib.request.Request(base_url.rstrip("/") + path, method=method,
                                         data=None if body is None else json.dumps(body).encode())
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"{method} {path}: {err.code} {err.read()[:500]!r}") from err
        return json.loads(raw) if raw else None

    if not 0 < count <= MAX_SIMULATED:
        raise ValueError(f"between 1 and {MAX_SIMULATED} devices")
    tag = uuid.uuid4().hex[:8]
    macs = synthetic_macs(count, prefix=f"0E{tag[:4].upper()}")
    boss = call("POST", "/api/v1/auth/login", {"username": distributor, "password": password})
    name, secret = f"sim{tag}", f"sim-{uuid.uuid4().hex}"
    installer = call("POST", "/api/v1/installers", {"username": name, "password": secret,
                                                     "email": f"{name}@example.org"},
                     boss["token"])
    for start in range(0, count, 20_000):
        call("POST", f"/api/v1/installers/{installer['id']}/mac-library/import",
             {"csv": "\n".join(macs[start:start + 20_000])}, boss["token"])
    token = call("POST", "/api/v1/auth/login", {"username": name, "password": secret})["token"]
    community = call("POST", "/api/v1/communities", {
        "name": f"Simulated {tag}", "feature_plan": "premium", "time_zone": "UTC"}, token)
    building = call("POST", f"/api/v1/communities/{community['id']}/buildings", {"name": "A"},
                    token)
    devices: dict[str, str] = {}
    for start in range(0, count, 1000):
        part = macs[start:start + 1000]
        report = call("POST", f"/api/v1/buildings/{building['id']}/devices/import", {
            "devices": ";".join(f"Door {start + n},0,{mac}" for n, mac in enumerate(part))},
            token)
        for outcome in report["outcomes"]:
            if outcome.get("id"):
                devices[part[outcome["item"] - 1]] = outcome["id"]
    return {"installer_id": installer["id"], "token": token, "community": community["id"],
            "building": building["id"], "macs": macs, "devices": devices}
