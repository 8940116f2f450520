"""Envelopes built from stored events carry the contract's fields and stable identities."""

from __future__ import annotations

import datetime as dt
import uuid

from concierge.envelope import build, event_id
from concierge.records import StoredRecord
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


def test_plain_decoding_gives_the_same_envelope_as_the_library_decoder() -> None:
    """The store decodes tagged values straight to text; the envelope must not change."""
    import decimal

    from eventsourcing.application import Application

    from concierge.decoding import PlainDecoder

    transcoder = Application().construct_transcoder()
    state = {
        "timestamp": dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC),
        "originator_topic": "services.topology.domain:Apartment",
        "__meta__": {"actor": "installer:luna", "correlation_id": "c-1"},
        "apartment_id": uuid.UUID("0f0e0d0c-0b0a-4908-8706-050403020100"),
        "ids": [uuid.uuid4(), uuid.uuid4()],
        "nested": {"when": dt.datetime(2025, 5, 6, tzinfo=dt.UTC), "price": decimal.Decimal("1.10"),
                   "floors": [1, "G0"], "none": None, "flag": True},
        "name": "Tower \u00e9",
    }
    stored = transcoder.encode(state)
    by_library = StoredRecord(7, str(uuid.UUID(int=5)), 2, record().topic,
                              transcoder.decode(stored))
    by_store = StoredRecord(7, str(uuid.UUID(int=5)), 2, record().topic,
                            PlainDecoder(transcoder).decode(stored))
    assert build("topology", by_store) == build("topology", by_library)
    assert by_store.state["apartment_id"] == "0f0e0d0c-0b0a-4908-8706-050403020100"


def test_event_id_is_the_uuid5_of_source_stream_and_version() -> None:
    from concierge.envelope import _EVENT_NAMESPACE

    for version in (1, 2, 999):
        stream = str(uuid.uuid4())
        expected = str(uuid.uuid5(_EVENT_NAMESPACE, f"topology:{stream}:{version}"))
        assert event_id("topology", stream, version) == expected


def test_plain_decoder_keeps_numbers_exact_where_orjson_would_not() -> None:
    """Integers beyond 64 bits, floats and NaN decode as the standard decoder reads them."""
    import json

    from eventsourcing.application import Application

    from concierge.decoding import PlainDecoder

    transcoder = Application().construct_transcoder()
    decoder = PlainDecoder(transcoder)
    for value in (2**64, -(2**63) - 1, 10**30, 1.5, 0.1, 1e300, [1, {"deep": 2.5}]):
        state = {"originator_topic": "x:Y", "value": value, "id": uuid.UUID(int=9)}
        decoded = decoder.decode(transcoder.encode(state))
        assert decoded["value"] == value and type(decoded["value"]) is type(value)
        assert decoded["id"] == str(uuid.UUID(int=9))
    nan = decoder.decode(b'{"value": NaN, "n": {"_type_": "uuid_hex", "_data_": "' +
                         uuid.UUID(int=3).hex.encode() + b'"}}')
    assert nan["value"] != nan["value"] and nan["n"] == str(uuid.UUID(int=3))
    exact = decoder.decode(b'{"a": 123456789012345678901234567890}')
    assert exact == json.loads(b'{"a": 123456789012345678901234567890}')
    assert type(exact["a"]) is int
    assert decoder.decode(b'[1, {"_type_": "decimal_str", "_data_": "2"}]') == [1, "2"]


def test_plain_decoder_replaces_tags_at_every_depth() -> None:
    import decimal

    from eventsourcing.application import Application

    from concierge.decoding import PlainDecoder

    transcoder = Application().construct_transcoder()
    ids = [uuid.UUID(int=i) for i in range(4)]
    state = {"originator_topic": "x:Y", "a": [[ids[0], {"b": ids[1]}]],
             "c": {"d": {"e": [ids[2]]}}, "f": ids[3], "price": decimal.Decimal("2.50")}
    decoded = PlainDecoder(transcoder).decode(transcoder.encode(state))
    assert decoded == {"originator_topic": "x:Y", "a": [[str(ids[0]), {"b": str(ids[1])}]],
                       "c": {"d": {"e": [str(ids[2])]}}, "f": str(ids[3]),
                       "price": "2.50"}
