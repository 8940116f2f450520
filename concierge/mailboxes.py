"""Per-recipient mailboxes on the broker: a direct exchange, and one durable queue per recipient
(a device's MAC) that keeps what was sent to it while it is away, each message until its
time to live.

The sender declares a recipient's queue at its first message (so nothing sent before the
recipient ever connected is dropped as unroutable) and publishes with confirms: `deliver`
returns once the broker has the message. Notify's pusher sends device pushes through it
(services/notify/pusher.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import kombu
from kombu import Exchange, Queue

# Declared queues are remembered this long: a queue the broker dropped since (its x-expires
# passed) is declared again after it.
DECLARED_SECONDS = 3600.0


class Mailboxes:
    def __init__(self, amqp_uri: str, exchange: str, queue_name: Callable[[str], str],
                 queue_arguments: dict[str, Any] | None = None) -> None:
        self.amqp_uri = amqp_uri
        self.exchange = Exchange(exchange, type="direct", durable=True, auto_delete=False,
                                 delivery_mode=2)
        self.queue_name = queue_name
        self.queue_arguments = dict(queue_arguments or {})
        self._conn: kombu.Connection | None = None
        self._producer: kombu.Producer | None = None
        self._declared: dict[str, float] = {}

    def queue(self, recipient: str) -> Queue:
        return Queue(self.queue_name(recipient), exchange=self.exchange, routing_key=recipient,
                     durable=True, auto_delete=False, queue_arguments=self.queue_arguments)

    def _connect(self) -> kombu.Producer:
        if self._producer is None:
            conn = kombu.Connection(self.amqp_uri, heartbeat=0,
                                    transport_options={"confirm_publish": True})
            channel = conn.channel()
            self.exchange(channel).declare()
            self._conn, self._producer = conn, kombu.Producer(channel, exchange=self.exchange)
            self._declared.clear()
        return self._producer

    def deliver(self, recipient: str, body: bytes, message_id: str, ttl_seconds: float) -> None:
        """Put one message in the recipient's queue, kept at most `ttl_seconds`; returns once
        the broker confirmed it. A broker error closes the connection and is raised."""
        try:
            producer = self._connect()
            now = time.monotonic()
            if self._declared.get(recipient, 0.0) < now:
                # Without waiting for the broker's answer: the publish below follows it on
                # the same channel, so the broker has the queue and its binding by then (a
                # refused declaration closes the channel, and the publish fails).
                self.queue(recipient)(producer.channel).declare(nowait=True)
                self._declared[recipient] = now + DECLARED_SECONDS
            producer.publish(body, routing_key=recipient, serializer=None,
                             content_type="application/json", content_encoding="binary",
                             delivery_mode=2, message_id=message_id,
                             expiration=max(ttl_seconds, 0.001))
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        conn, self._conn, self._producer = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.release()
