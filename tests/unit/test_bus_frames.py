"""The relay's hand-built publish frames are exactly what py-amqp itself would send."""

from __future__ import annotations

from types import SimpleNamespace

import amqp
from amqp.method_framing import frame_writer

from concierge.bus import publish_frames


def amqp_bytes(channel_id: int, exchange: str, key: str, body: bytes, message_id: str,
               type_: str) -> bytes:
    written: list[bytes] = []
    transport = SimpleNamespace(write=lambda data: written.append(bytes(data)))
    connection = SimpleNamespace(frame_max=131072, bytes_sent=0)
    write = frame_writer(connection, transport)
    message = amqp.Message(body, content_type="application/json", delivery_mode=2,
                           message_id=message_id, type=type_)
    args = amqp.serialization.dumps("Bssbb", (0, exchange, key, False, False))
    write(1, channel_id, (60, 40), args, message)
    return b"".join(written)


def test_publish_frames_match_py_amqp() -> None:
    body = b'{"type":"ApartmentReset","data":{"name":"\\u00e9t\\u00e9"}}'
    ours = publish_frames(3, "topology.events", "ApartmentReset", body,
                          "6f1c1a6e-0d5e-4c55-9b0e-2a7f4f4a5e10", "ApartmentReset")
    assert ours == amqp_bytes(3, "topology.events", "ApartmentReset", body,
                              "6f1c1a6e-0d5e-4c55-9b0e-2a7f4f4a5e10", "ApartmentReset")


def test_an_empty_body_and_unicode_names_are_framed_the_same() -> None:
    ours = publish_frames(1, "accounts.events", "Ré", b"", "id", "Ré")
    assert ours == amqp_bytes(1, "accounts.events", "Ré", b"", "id", "Ré")
