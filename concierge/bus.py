"""RabbitMQ (or the in-process bus) as the chassis uses it: publishing and consuming envelopes.

Events go to the topic exchange `<service>.events` with the event type as routing key, exactly as
nameko's own event dispatcher does, so a plain `@event_handler("topology", "ApartmentReset")` in
any nameko service, or any AMQP client, can subscribe with the contracts alone. A named deployment
(`Settings.deployment`) puts its prefix before every name: `<deployment>.topology.events`, which
nameko knows as the events of a service called `<deployment>.topology`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import amqp
import kombu
from kombu import Exchange, Queue

import concierge.transport

log = logging.getLogger(__name__)

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    socket.error,
    amqp.exceptions.ConnectionError,
    amqp.exceptions.ChannelError,
    kombu.exceptions.OperationalError,
    ConnectionError,
)


def exchange_name(service: str, prefix: str = "") -> str:
    """`prefix`: the deployment's (`Settings.amqp_prefix`), before every name it declares."""
    return f"{prefix}{service}.events"


def events_exchange(service: str, prefix: str = "") -> Exchange:
    # Same declaration as nameko's get_event_exchange, or RabbitMQ refuses the redeclare.
    return Exchange(exchange_name(service, prefix), type="topic", durable=True,
                    auto_delete=False, delivery_mode=2)


def subscription_queue_name(subscriber: str, source: str, prefix: str = "") -> str:
    return f"{prefix}concierge.{subscriber}--{source}"


def subscription_queue(subscriber: str, source: str, prefix: str = "") -> Queue:
    """The queue of one service's subscription to another's events, shared by its replicas.

    One consumer at a time (RabbitMQ's single active consumer): a subscription applies the
    source's events in log order, so replicas sharing the queue round-robin would each see
    every other event as a gap and read the source's log over RPC to fill it (two topology
    replicas spent twice the CPU per request that way). The others stand by and take over
    when it goes.
    """
    return Queue(
        subscription_queue_name(subscriber, source, prefix),
        exchange=events_exchange(source, prefix),
        routing_key="#",
        durable=True,
        auto_delete=False,
        queue_arguments={"x-single-active-consumer": True},
    )


_FRAME_END = b"\xce"
# basic.publish properties we send: content_type, delivery_mode, message_id, type.
_PROPERTY_FLAGS = (1 << 15) | (1 << 12) | (1 << 7) | (1 << 5)
_METHOD_HEAD = struct.pack(">HHH", 60, 40, 0)  # class basic, method publish, reserved


def _shortstr(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">B", len(data)) + data


def publish_frames(channel_id: int, exchange: str, routing_key: str, body: bytes,
                   message_id: str, type_: str, content_type: str = "application/json") -> bytes:
    """The three AMQP frames of one persistent basic.publish, byte for byte what py-amqp
    writes (tests/unit/test_bus_frames.py), built without its per-message overhead."""
    method = b"".join([_METHOD_HEAD, _shortstr(exchange), _shortstr(routing_key), b"\x00"])
    properties = b"".join([_shortstr(content_type), b"\x02", _shortstr(message_id),
                           _shortstr(type_)])
    header = struct.pack(">HHQH", 60, 0, len(body), _PROPERTY_FLAGS) + properties
    frames = [
        struct.pack(">BHI", 1, channel_id, len(method)), method, _FRAME_END,
        struct.pack(">BHI", 2, channel_id, len(header)), header, _FRAME_END,
    ]
    if body:  # an empty body has no body frame at all
        frames += [struct.pack(">BHI", 3, channel_id, len(body)), body, _FRAME_END]
    return b"".join(frames)


class PublishFailed(Exception):
    """The broker refused (nacked) or never confirmed a message; the batch must be retried."""


class Publisher(Protocol):
    def send(self, messages: Sequence[dict[str, Any]]) -> int:
        """Publish without waiting; return a ticket for `wait`."""
        ...

    def wait(self, ticket: int) -> None:
        """Return once everything sent up to `ticket` is confirmed; raise PublishFailed."""
        ...

    def publish_batch(self, messages: Sequence[dict[str, Any]]) -> None: ...
    def close(self) -> None: ...


def encode(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope, separators=(",", ":")).encode()


class ConfirmingPublisher:
    """Publishes a whole batch, then waits once for all its confirms.

    Waiting per message caps a publisher near 0.7-0.85k msg/s on this machine; pipelining a
    batch and collecting the (usually `multiple`) acks keeps most of the raw publish rate.
    """

    def __init__(self, amqp_uri: str, service: str, confirm_timeout: float = 10.0,
                 prefix: str = "") -> None:
        self.amqp_uri = amqp_uri
        self.exchange = exchange_name(service, prefix)
        self._service = service
        self._prefix = prefix
        self.confirm_timeout = confirm_timeout
        self._conn: kombu.Connection | None = None
        self._channel: Any = None
        self._next_tag = 0
        # Every tag up to `_settled` is acked or nacked; `_settled_above` holds single acks that
        # came ahead of it. Counting, not a set of pending tags: a window of a few thousand
        # messages and one `multiple` ack every few of them made set rebuilding quadratic.
        self._settled = 0
        self._settled_above: set[int] = set()
        self._nacked = False

    def _connect(self) -> None:
        conn = kombu.Connection(self.amqp_uri, heartbeat=0)
        conn.connect()
        channel = conn.channel()
        events_exchange(self._service, self._prefix)(channel).declare()
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        self._conn, self._channel = conn, channel
        self._next_tag = 0
        self._settled = 0
        self._settled_above.clear()
        self._nacked = False

    def _on_ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            if tag > self._settled:
                self._settled = tag
                if self._settled_above:
                    self._settled_above = {t for t in self._settled_above if t > tag}
        elif tag > self._settled:
            self._settled_above.add(tag)
        while self._settled_above and self._settled + 1 in self._settled_above:
            self._settled += 1
            self._settled_above.discard(self._settled)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._nacked = True
        self._on_ack(tag, multiple)

    def publish_batch(self, messages: Sequence[dict[str, Any]]) -> None:
        self.wait(self.send(messages))

    def send(self, messages: Sequence[dict[str, Any]]) -> int:
        if not messages:
            return self._next_tag
        try:
            if self._conn is None:
                self._connect()
            channel = self._channel
            # A whole batch goes out in one socket write; confirms are collected afterwards.
            frame_limit = self._conn.connection.frame_max - 64
            chunks: list[bytes] = []
            for envelope in messages:
                body = encode(envelope)
                if len(body) > frame_limit:  # rare: let py-amqp split it into body frames
                    self._flush(chunks)
                    channel.basic_publish(
                        amqp.Message(body, content_type="application/json", delivery_mode=2,
                                     message_id=envelope["event_id"], type=envelope["type"]),
                        exchange=self.exchange, routing_key=envelope["type"])
                else:
                    chunks.append(publish_frames(channel.channel_id, self.exchange,
                                                 envelope["type"], body, envelope["event_id"],
                                                 envelope["type"]))
                self._next_tag += 1
            self._flush(chunks)
        except CONNECTION_ERRORS as exc:
            self.close()
            raise PublishFailed(f"broker connection lost while publishing: {exc}") from exc
        return self._next_tag

    def wait(self, ticket: int) -> None:
        try:
            self._await_confirms(ticket)
        except CONNECTION_ERRORS as exc:
            self.close()
            raise PublishFailed(f"broker connection lost before confirming: {exc}") from exc
        if self._nacked:
            self._nacked = False
            self.close()  # tags restart on a new channel; the relay resends from its position
            raise PublishFailed("broker nacked part of the batch")

    def _flush(self, chunks: list[bytes]) -> None:
        if chunks:
            assert self._conn is not None
            connection = self._conn.connection
            connection.transport.write(b"".join(chunks))
            connection.bytes_sent += len(chunks)  # py-amqp's heartbeat bookkeeping
            chunks.clear()

    def _await_confirms(self, ticket: int) -> None:
        if self._conn is None:
            raise PublishFailed("connection was reset; unconfirmed messages must be resent")
        while self._settled < ticket:
            try:
                self._conn.drain_events(timeout=self.confirm_timeout)
            except TimeoutError as exc:
                self.close()
                raise PublishFailed("no confirm from the broker in time") from exc

    def close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing more to release
                conn.release()


class InProcessPublisher:
    """The embedded transport has no confirms; a publish is a synchronous in-memory put."""

    def __init__(self, amqp_uri: str, service: str, prefix: str = "") -> None:
        self.conn = kombu.Connection(amqp_uri)
        self.exchange = events_exchange(service, prefix)
        self.producer = kombu.Producer(self.conn.channel(), exchange=self.exchange)
        self.exchange(self.producer.channel).declare()

    def send(self, messages: Sequence[dict[str, Any]]) -> int:
        self.publish_batch(messages)
        return 0

    def wait(self, ticket: int) -> None:
        return None

    def publish_batch(self, messages: Sequence[dict[str, Any]]) -> None:
        for envelope in messages:
            self.producer.publish(
                encode(envelope),
                routing_key=envelope["type"],
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                message_id=envelope["event_id"],
            )

    def close(self) -> None:
        self.conn.release()


def make_publisher(amqp_uri: str, service: str, prefix: str = "") -> Publisher:
    if amqp_uri.startswith(concierge.transport.SCHEME):
        return InProcessPublisher(amqp_uri, service, prefix)
    return ConfirmingPublisher(amqp_uri, service, prefix=prefix)


class ConsumerLoop:
    """Consumes one subscription queue in order, reconnecting forever.

    Messages already buffered on the connection are handled together: `handle(envelopes)` runs
    before the ack (one ack for the whole batch); if it raises, every message of the batch goes
    back to the queue and the loop pauses, so a subscriber never skips an event and never acks
    one it did not apply. A batch is whatever arrived, at most `batch_limit`: the loop never
    waits to fill one, so a lone event is handled at once.
    """

    def __init__(
        self,
        amqp_uri: str,
        queue: Queue,
        handle: Callable[[list[dict[str, Any]]], None],
        prefetch: int = 200,
        retry_pause: float = 0.5,
        batch_limit: int = 100,
    ) -> None:
        self.amqp_uri = amqp_uri
        self.queue = queue
        self.handle = handle
        self.prefetch = prefetch
        self.retry_pause = retry_pause
        self.batch_limit = batch_limit
        self.running = True
        self.ready = False
        self._conn: kombu.Connection | None = None
        self._pending: list[tuple[dict[str, Any], Any]] = []

    def declare(self) -> None:
        """Create the queue and its binding now, so events published from here on are kept.

        A queue declared by an earlier release with other arguments is refused by the broker
        (PRECONDITION_FAILED): it is deleted and declared anew. Nothing is lost: what it held
        is in the source's log, which the subscription reads from its position at start.
        """
        with kombu.Connection(self.amqp_uri) as conn:
            try:
                self.queue(conn.channel()).declare()
            except amqp.exceptions.PreconditionFailed as exc:
                log.warning("%s was declared with other arguments (%s); declaring it anew",
                            self.queue.name, exc)
                channel = conn.channel()
                channel.queue_delete(self.queue.name)
                self.queue(channel).declare()

    def stop(self) -> None:
        self.running = False

    def run(self) -> None:
        from concierge import green

        while self.running:
            try:
                self._consume()
            except CONNECTION_ERRORS as exc:
                self.ready = False
                log.warning("consumer of %s lost the broker (%s); reconnecting", self.queue.name,
                            exc)
                green.sleep(self.retry_pause)
            finally:
                self._pending.clear()  # unacked: the broker delivers them again
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.release()
                    self._conn = None

    def _on_message(self, message: Any) -> None:
        """Decode the body with the json module directly: kombu's decoder calls a Python hook
        for every JSON object, which made decoding most of a subscriber's per-message cost.

        A body that is not a JSON object cannot be an envelope (the relay publishes nothing
        else): it is rejected, not requeued, so it cannot stop the queue. Were it ever a real
        event, the next event's position shows the gap and the log is read.
        """
        body = message.body
        try:
            envelope = json.loads(body) if isinstance(body, bytes | str) else body
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            envelope = exc
        if not isinstance(envelope, dict):
            log.error("%s: dropped a message that is not an event envelope (%s)",
                      self.queue.name, envelope if isinstance(envelope, Exception)
                      else type(envelope).__name__)
            message.reject()
            return
        self._pending.append((envelope, message))

    def _handle_pending(self) -> None:
        from concierge import green

        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self.handle([envelope for envelope, _message in batch])
        except CONNECTION_ERRORS:
            raise
        except Exception:
            log.exception("handling %d events from %s (first %s at %s) failed; will retry",
                          len(batch), self.queue.name, batch[0][0].get("type"),
                          batch[0][0].get("position"))
            for _envelope, message in reversed(batch):
                message.requeue()
            green.sleep(self.retry_pause)
            return
        last = batch[-1][1]
        if isinstance(last.channel, amqp.Channel):
            last.ack(multiple=True)  # one frame acknowledges the whole batch
        else:  # kombu's virtual transports (the in-process bus) ignore `multiple`
            for _envelope, message in batch:
                message.ack()
        # Let RPC workers run between batches; a busy consumer must not starve them.
        green.sleep(0)

    def _consume(self) -> None:
        conn = kombu.Connection(self.amqp_uri, heartbeat=0)
        self._conn = conn
        conn.ensure_connection(max_retries=1)
        channel = conn.channel()
        consumer = kombu.Consumer(channel, queues=[self.queue], on_message=self._on_message,
                                  no_ack=False)
        consumer.qos(prefetch_count=self.prefetch)
        consumer.consume()
        self.ready = True
        while self.running:
            try:
                conn.drain_events(timeout=0.5)
            except TimeoutError:  # socket.timeout is TimeoutError on 3.10+
                continue
            # Take what is already buffered without waiting, then handle it as one batch.
            while len(self._pending) < self.batch_limit:
                try:
                    conn.drain_events(timeout=0)
                except TimeoutError:
                    break
            self._handle_pending()
