"""Synthetic device traffic for load tests and demos: `concierge load devices`.

Runs outside eventlet, on pika, as a fleet of real intercoms would talk to the broker: each
device sends a heartbeat every `interval` seconds, a status message when it starts, and door
openings and calls at the rates asked for, to `<prefix>devices.traffic` with the routing key
`<MAC>.<kind>` (contracts/traffic.py). Bounded in count and time, and it targets only the broker
it is given.
"""

from __future__ import annotations

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
