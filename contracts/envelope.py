"""The envelope every event travels in, on the bus and in `read_log` answers.

Version rule: an event type's `version` goes up only for a change a subscriber could misread
(a field removed, renamed or given a new meaning). Adding an optional field keeps the version;
subscribers must ignore fields they do not know. The envelope itself is version 1.
"""

from __future__ import annotations

from typing import Any

from marshmallow import INCLUDE, Schema, fields, validate

ENVELOPE_VERSION = 1


class EnvelopeSchema(Schema):
    event_id = fields.UUID(required=True)
    type = fields.String(required=True, validate=validate.Length(min=1, max=100))
    version = fields.Integer(required=True, validate=validate.Range(min=1))
    source = fields.String(required=True, validate=validate.Length(min=1, max=50))
    stream_id = fields.String(required=True)
    stream_version = fields.Integer(required=True, validate=validate.Range(min=1))
    position = fields.Integer(required=True, validate=validate.Range(min=1))
    occurred_at = fields.AwareDateTime(required=True, default_timezone=None)
    actor = fields.String(required=True)
    correlation_id = fields.String(required=True)
    data = fields.Dict(keys=fields.String(), required=True)
    # Which incarnation of the source's store wrote it (derived from its first event): a
    # message left in a queue by a store that was since wiped and recreated has another one.
    store = fields.String(load_default=None, allow_none=True,
                          validate=validate.Length(max=64))

    class Meta:
        # Newer producers may add envelope fields; old subscribers keep working.
        unknown = INCLUDE


def validate_envelope(message: dict[str, Any]) -> dict[str, list[str]]:
    """Field errors of a received envelope (empty when it is well formed)."""
    return EnvelopeSchema().validate(message)
