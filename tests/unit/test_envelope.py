"""Envelopes built from stored events carry the contract's fields and stable identities."""

from __future__ import annotations

import datetime as dt
import uuid

from concierge.envelope import build, event_id
from concierge.store import StoredRecord
from contracts.envelope import validate_envelope


def record(position: int = 7) -> StoredRecord:
    return StoredRecord(
        position=position,
        stream_id=str(uuid.UUID(int=5)),
        stream_version=2,
        topic="services.topology.domain:Apartment.ApartmentReset",
        state={
            "timestamp": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            "originator_topic": "services.topology.domain:Apartment",
            "__meta__": {"actor": "installer:luna", "correlation_id": "c-1"},
            "apartment_id": uuid.UUID(int=5),
            "kept": ["a", "b"],
        },
    )


def test_envelope_has_every_contract_field_and_valid_shape() -> None:
    message = build("topology", record())
    assert validate_envelope(message) == {}
    assert message["type"] == "ApartmentReset"
    assert message["source"] == "topology"
    assert message["position"] == 7
    assert message["stream_version"] == 2
    assert message["actor"] == "installer:luna"
    assert message["correlation_id"] == "c-1"
    assert message["occurred_at"].startswith("2026-01-02T03:04:05")
    assert message["data"] == {"apartment_id": str(uuid.UUID(int=5)), "kept": ["a", "b"]}


def test_event_id_is_the_same_when_replayed() -> None:
    assert build("topology", record(7))["event_id"] == build("topology", record(9))["event_id"]
    assert event_id("a", "s", 1) != event_id("a", "s", 2)


def test_a_malformed_envelope_names_its_bad_fields() -> None:
    message = build("topology", record())
    message["position"] = 0
    del message["type"]
    errors = validate_envelope(message)
    assert set(errors) == {"position", "type"}


def test_only_what_the_contract_declares_leaves_the_service() -> None:
    from marshmallow import Schema, fields

    from concierge.envelope import Publishable

    class ApartmentResetSchema(Schema):
        apartment_id = fields.String()
        kept = fields.List(fields.String())

    rec = record()
    rec.state["password_hash"] = "$argon2id$secret"
    message = build("topology", rec, publishable=Publishable({"ApartmentReset":
                                                               ApartmentResetSchema}))
    assert "password_hash" not in message["data"]
    assert message["data"] == {"apartment_id": str(uuid.UUID(int=5)), "kept": ["a", "b"]}
