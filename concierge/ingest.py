"""Ingest of high-volume messages that are not events (device traffic): a batch consumer with a
dead-letter queue, and the counters of what it refused.

`IngestLoop` takes what the broker has buffered, up to `batch_limit` messages (waiting up to
`linger` seconds after the first for more, but only while traffic is busy: a quiet stream's lone
message, a command's acknowledgement, goes at once), and hands the batch to `handle(batch)`
(one call, which runs one transaction). `handle` answers which messages it refused and why; the
loop publishes those to the dead-letter exchange, then acknowledges the whole batch with one
frame. A batch whose `handle` raises (the database is away) goes back to the queue whole and the
loop pauses: no acknowledged message is lost, so `handle` must be idempotent for a redelivered
message.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import amqp
import kombu
from kombu import Exchange, Queue
from sqlalchemy import Column, Connection, Engine, Float, Integer, MetaData, String, Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from concierge.bus import CONNECTION_ERRORS

log = logging.getLogger(__name__)

# Dead letters kept at most, oldest dropped first: counters still count every one.
DEAD_LETTERS_KEPT = 100_000
DETAIL_MAX = 200


@dataclass(frozen=True)
class Incoming:
    routing_key: str
    body: bytes


@dataclass(frozen=True)
class Refusal:
    """Message `index` of a batch goes to the dead letters: why (a short reason) and what."""

    index: int
    reason: str
    detail: str


Handle = Callable[[list[Incoming]], list[Refusal]]


def ingest_exchange(name: str) -> Exchange:
    return Exchange(name, type="topic", durable=True, auto_delete=False, delivery_mode=2)


def ingest_queue(name: str) -> Queue:
    """The queue of an ingest, shared by the service's replicas (competing consumers: the
    ingest is idempotent, so order between replicas does not matter)."""
    return Queue(name, exchange=ingest_exchange(name), routing_key="#", durable=True,
                 auto_delete=False)


def dead_letter_exchange(name: str) -> Exchange:
    return Exchange(f"{name}.dead", type="fanout", durable=True, auto_delete=False,
                    delivery_mode=2)


def dead_letter_queue(name: str) -> Queue:
    return Queue(f"{name}.dead", exchange=dead_letter_exchange(name), durable=True,
                 auto_delete=False,
                 queue_arguments={"x-max-length": DEAD_LETTERS_KEPT,
                                  "x-overflow": "drop-head"})


class IngestLoop:
    def __init__(self, amqp_uri: str, name: str, handle: Handle, prefetch: int = 2000,
                 batch_limit: int = 500, linger: float = 0.005,
                 retry_pause: float = 0.5, linger_above: int = 50) -> None:
        self.amqp_uri = amqp_uri
        self.name = name
        self.queue = ingest_queue(name)
        self.dead_exchange = dead_letter_exchange(name)
        self.handle = handle
        self.prefetch = prefetch
        self.batch_limit = batch_limit
        self.linger = linger
        # The previous batch had more than this many messages: traffic is busy, and waiting a
        # little makes the next batch (its one transaction) fuller.
        self.linger_above = linger_above
        self._last_batch = 0
        self.retry_pause = retry_pause
        self.running = True
        self.ready = False
        self.taken = 0
        self.refused = 0
        self._pending: list[Any] = []

    def declare(self) -> None:
        with kombu.Connection(self.amqp_uri) as conn:
            channel = conn.channel()
            self.queue(channel).declare()
            dead_letter_queue(self.name)(channel).declare()

    def stop(self) -> None:
        self.running = False

    def run(self) -> None:
        from concierge import green

        while self.running:
            conn = None
            try:
                conn = kombu.Connection(self.amqp_uri, heartbeat=0)
                self._consume(conn)
            except CONNECTION_ERRORS as exc:
                self.ready = False
                log.warning("ingest %s lost the broker (%s); reconnecting", self.name, exc)
                green.sleep(self.retry_pause)
            finally:
                self._pending.clear()  # unacknowledged: the broker delivers them again
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.release()

    def _consume(self, conn: kombu.Connection) -> None:
        conn.ensure_connection(max_retries=1)
        channel = conn.channel()
        self.declare_on(channel)
        producer = kombu.Producer(conn.channel())
        raw = conn.connection
        drain: Callable[..., Any]
        if isinstance(raw, amqp.Connection):
            # py-amqp's messages as they come, without kombu's wrapper around each: on a busy
            # queue the wrapper cost as much as the rest of the per-message work.
            channel.basic_qos(0, self.prefetch, False)
            channel.basic_consume(self.queue.name, callback=self._on_message, no_ack=False)
            drain = raw.drain_events
        else:  # kombu's virtual transports (the in-process bus)
            consumer = kombu.Consumer(channel, queues=[self.queue], no_ack=False,
                                      on_message=self._on_message, accept=None)
            consumer.qos(prefetch_count=self.prefetch)
            consumer.consume()
            drain = conn.drain_events
        self.ready = True
        while self.running:
            try:
                drain(timeout=0.5)
            except TimeoutError:
                continue
            self._fill(drain)
            self._handle_pending(producer)

    def declare_on(self, channel: Any) -> None:
        self.queue(channel).declare()
        dead_letter_queue(self.name)(channel).declare()

    def _on_message(self, message: Any) -> None:
        self._pending.append(message)

    def _fill(self, drain: Callable[..., Any]) -> None:
        """Take what is buffered; then, when traffic is busy, wait up to `linger` for the
        batch to fill."""
        deadline = time.monotonic() + (self.linger if self._last_batch > self.linger_above
                                       else 0.0)
        while len(self._pending) < self.batch_limit:
            left = deadline - time.monotonic()
            try:
                drain(timeout=max(left, 0))
            except TimeoutError:
                if left <= 0:
                    break

    def _handle_pending(self, producer: kombu.Producer) -> None:
        from concierge import green

        batch, self._pending = self._pending, []
        self._last_batch = len(batch)
        if not batch:
            return
        incoming = [Incoming(m.delivery_info.get("routing_key", ""), _bytes(m.body))
                    for m in batch]
        try:
            refusals = self.handle(incoming)
            for refusal in refusals:
                self._dead_letter(producer, incoming[refusal.index], refusal)
        except CONNECTION_ERRORS:
            raise
        except Exception:
            log.exception("ingest %s: a batch of %d failed; it goes back to the queue",
                          self.name, len(batch))
            for message in reversed(batch):
                with contextlib.suppress(Exception):
                    if isinstance(message, amqp.Message):
                        message.channel.basic_reject(message.delivery_tag, requeue=True)
                    else:
                        message.requeue()
            green.sleep(self.retry_pause)
            return
        last = batch[-1]
        if isinstance(last, amqp.Message):  # one frame acknowledges the whole batch
            last.channel.basic_ack(last.delivery_tag, multiple=True)
        elif isinstance(last.channel, amqp.Channel):
            last.ack(multiple=True)
        else:  # kombu's virtual transports (the in-process bus) ignore `multiple`
            for message in batch:
                message.ack()
        self.taken += len(batch) - len(refusals)
        self.refused += len(refusals)
        green.sleep(0)  # RPC workers run between batches

    def _dead_letter(self, producer: kombu.Producer, message: Incoming, refusal: Refusal
                     ) -> None:
        producer.publish(message.body, exchange=self.dead_exchange, routing_key="",
                         serializer=None, content_type="application/octet-stream",
                         content_encoding="binary", delivery_mode=2,
                         headers={"x-reason": refusal.reason,
                                  "x-detail": refusal.detail[:DETAIL_MAX],
                                  "x-routing-key": message.routing_key[:255]},
                         retry=False)


def _bytes(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return bytes(body)


# --- the counters operators read ----------------------------------------------------------------

dead_letter_metadata = MetaData()
dead_letter_counts = Table(
    "concierge_dead_letters", dead_letter_metadata,
    Column("ingest", String(64), primary_key=True),
    Column("reason", String(32), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("last_at", Float, nullable=False),
    Column("last_detail", String(DETAIL_MAX), nullable=False),
)


def count_refusals(conn: Connection, ingest: str, refusals: Iterable[Refusal]) -> None:
    """Add a batch's refusals to the counters, in the batch's transaction."""
    counts: Counter[str] = Counter()
    details: dict[str, str] = {}
    for refusal in refusals:
        counts[refusal.reason] += 1
        details[refusal.reason] = refusal.detail[:DETAIL_MAX]
    if not counts:
        return
    table = dead_letter_counts
    now = time.time()
    module = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = module(table)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.ingest, table.c.reason],
        set_={"count": table.c["count"] + statement.excluded["count"],
              "last_at": statement.excluded.last_at,
              "last_detail": statement.excluded.last_detail})
    conn.execute(statement, [{"ingest": ingest, "reason": reason, "count": count,
                              "last_at": now, "last_detail": details[reason]}
                             for reason, count in sorted(counts.items())])


def refusal_counts(engine: Engine, ingest: str) -> list[dict[str, Any]]:
    table = dead_letter_counts
    with engine.connect() as conn:
        rows = conn.execute(select(table).where(table.c.ingest == ingest)
                            .order_by(table.c.reason)).all()
    return [{"reason": r.reason, "count": r.count, "last_at": r.last_at,
             "last_detail": r.last_detail} for r in rows]
