"""What a stored event looks like once read: the record, its type, its attributes as plain data.

The bottom of the chassis: it imports nothing of it, so the store, the envelopes and the unit of
work can all share these names without importing one another.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import uuid
from dataclasses import dataclass
from typing import Any

# The attribute of a stored event that holds its stamp (actor, correlation id, ...).
META_KEY = "__meta__"


@dataclass(frozen=True)
class StoredRecord:
    """One entry of a service's log, decoded to plain attributes."""

    position: int
    stream_id: str
    stream_version: int
    topic: str
    state: dict[str, Any]

    @property
    def type(self) -> str:
        return event_type(self.topic)


@functools.cache
def event_type(topic: str) -> str:
    """The event's class name, from its stored topic ("module:Class.Event")."""
    return topic.rsplit(".", 1)[-1].rsplit(":", 1)[-1]


# Types an attribute keeps as it is in plain data.
AS_IS = frozenset({str, int, float, bool, type(None)})


def plain(value: Any) -> Any:
    """JSON-safe copy of an event attribute."""
    if type(value) in AS_IS:  # most attributes: checked first, it is the hot path of rebuilds
        return value
    if isinstance(value, dict):
        return {str(k): v if type(v) in AS_IS else plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [v if type(v) in AS_IS else plain(v) for v in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value
