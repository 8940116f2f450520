"""The in-process transport of the embedded default: kombu's memory transport, fixed for nameko.

Two fixes (see ARCHITECTURE.md): virtual messages lack `properties['content_type']`, which nameko's
RPC responder reads, and the virtual transport polls every second, which makes each RPC take a
second; we poll every few milliseconds instead. Importing this module registers the
`concierge-memory://` URI scheme.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, memory, virtual

SCHEME = "concierge-memory"
POLLING_INTERVAL = 0.002


class Channel(memory.Channel):
    # Our own broker state, apart from kombu's plain memory:// users in the same process.
    events: defaultdict[str, set[Any]] = defaultdict(set)
    queues: dict[str, Any] = {}

    def prepare_message(
        self,
        body: Any,
        priority: Any = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: dict[str, Any] | None = None,
        properties: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        message = super().prepare_message(
            body, priority, content_type, content_encoding, headers, properties
        )
        props = message.setdefault("properties", {})
        props.setdefault("content_type", content_type)
        props.setdefault("content_encoding", content_encoding)
        return message


class Transport(memory.Transport):
    Channel = Channel
    # Own broker state: an embedded platform is one process, one in-memory broker.
    state = virtual.BrokerState()
    polling_interval = POLLING_INTERVAL
    driver_type = SCHEME
    driver_name = SCHEME


def reset() -> None:
    """Forget every in-memory queue and binding (a fresh broker, for tests)."""
    Transport.state.clear()
    Channel.queues.clear()
    Channel.events.clear()


def register() -> None:
    TRANSPORT_ALIASES[SCHEME] = "concierge.transport:Transport"


register()



# Reading from RabbitMQ from a buffer (concierge.library.install_read_ahead), for every AMQP
# connection of the process: installed when the bus is imported.
from concierge import library  # noqa: E402

library.install_read_ahead()
