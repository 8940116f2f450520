"""Turning stored events into envelopes (contracts/envelope.py) and back into plain data."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Any

from concierge.records import AS_IS, META_KEY, StoredRecord, plain

# Attributes the eventsourcing library keeps on every event; they travel as envelope fields.
_LIBRARY_KEYS = {"timestamp", "originator_topic", META_KEY, "class_version"}
_EVENT_NAMESPACE = uuid.UUID("6f1c1a6e-0d5e-4c55-9b0e-2a7f4f4a5e10")
_NAMESPACE_BYTES = _EVENT_NAMESPACE.bytes


def event_id(source: str, stream_id: str, stream_version: int) -> str:
    """Deterministic, so a replayed or re-published event keeps its identity: the uuid5 of the
    name, formatted directly (uuid.uuid5 costs a third of building a local envelope)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{source}:{stream_id}:{stream_version}"
                                    .encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Publishable:
    """What of each event type may leave the service: the fields its contract schema declares.

    Attributes the contract does not declare (password hashes, token digests) never reach the
    bus; a type without a schema goes as it is. Values are already JSON-safe here, so they are
    filtered, not re-serialised.
    """

    def __init__(self, schemas: dict[str, Any] | None = None, version: int = 1) -> None:
        self.declared: dict[str, frozenset[str]] = {}
        for name, schema in (schemas or {}).items():
            instance = schema() if isinstance(schema, type) else schema
            self.declared[name] = frozenset(instance.fields)
        self.version = version

    def data(self, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
        declared = self.declared.get(event_type)
        if declared is None:
            return data
        return {k: v for k, v in data.items() if k in declared}


EVERYTHING = Publishable()


def build(source: str, record: StoredRecord, version: int = 1,
          publishable: Publishable = EVERYTHING, store: str | None = None) -> dict[str, Any]:
    state = record.state
    meta = state.get(META_KEY) or {}
    occurred = state.get("timestamp")
    message = {
        "event_id": event_id(source, record.stream_id, record.stream_version),
        "type": record.type,
        "version": int(state.get("class_version", version) or version),
        "source": source,
        "stream_id": record.stream_id,
        "stream_version": record.stream_version,
        "position": record.position,
        "occurred_at": occurred.isoformat() if isinstance(occurred, dt.datetime) else occurred,
        "actor": meta.get("actor", "system"),
        "correlation_id": meta.get("correlation_id", ""),
        "data": publishable.data(
            record.type,
            {k: v if type(v) in AS_IS else plain(v)
             for k, v in state.items() if k not in _LIBRARY_KEYS}
        ),
    }
    if store is not None:
        message["store"] = store
    return message
