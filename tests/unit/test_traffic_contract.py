"""The device traffic contract: the ingest's hand-written checker (`parse`) accepts exactly the
bodies the marshmallow schemas accept, and names why it refuses the others."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from contracts import checked, traffic
from contracts.devices import (
    AUTOP_LINE_MESSAGE,
    AUTOP_LINES_MAX,
    COMMAND_KINDS,
    CONNECTION_TYPES,
    DEADLINE_DEFAULT,
    DEADLINE_MAX,
    DEADLINE_MIN,
    REQUESTED_KINDS,
    CommandCreate,
    autop_lines,
)
from contracts.errors import Invalid
from contracts.traffic import (
    KINDS,
    PUSH_QUEUE_ARGUMENTS,
    SCHEMAS,
    PushSchema,
    Refused,
    parse,
    push_body,
    push_queue_name,
    split_key,
)
from services.gateway.openapi import schema_rules

GOOD: dict[str, dict[str, Any]] = {
    "heartbeat": {},
    "status": {"model": "R29C", "firmware": "29.30.2.805", "ip": "192.168.1.20",
               "uptime": 3600},
    "door": {"relay": 1, "access_method": "pin", "credential_kind": "pin",
             "result": "success", "time": "2026-12-07T18:00:00+01:00"},
    "call": {"caller": "5900000001", "callee": "APT 101", "start": "2026-12-07T18:00:00Z",
             "duration": 42, "answered": True},
    "ack": {"command_id": "c-1", "outcome": "succeeded", "detail": None},
    "upgrade": {"command_id": "c-2", "version": "29.30.2.805", "state": "installing",
                "progress": 40},
}


def body(kind: str, **changes: Any) -> dict[str, Any]:
    data = {"v": 1, "id": "m-1", "at": "2026-12-07T18:00:01Z", **GOOD[kind], **changes}
    return {k: v for k, v in data.items() if v is not _MISSING}


_MISSING = object()

ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 100_000), st.floats(allow_nan=False),
    st.text(max_size=70), st.sampled_from(["", "x" * 65, "2026-12-07T18:00:00",
                                           "2026-12-07T18:00:00Z", "10.0.0.1", "::1",
                                           "success", "pin", "call", "received", "done",
                                           "a b", "ok\n"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=1))


def schema_accepts(kind: str, data: dict[str, Any]) -> bool:
    try:
        SCHEMAS[kind]().load(data)
    except ValidationError:
        return False
    return True


def parse_accepts(kind: str, data: dict[str, Any]) -> bool:
    try:
        parse(kind, json.dumps(data).encode())
    except Refused as refused:
        assert refused.reason in traffic.REASONS and refused.detail
        return False
    return True


@pytest.mark.parametrize("kind", KINDS)
def test_a_good_message_of_each_kind_is_taken(kind: str) -> None:
    assert schema_accepts(kind, body(kind))
    parsed = parse(kind, json.dumps(body(kind)).encode())
    assert parsed["at"].utcoffset().total_seconds() == 0


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(KINDS), name=st.text(min_size=1, max_size=12), value=ODD_VALUES,
       drop=st.booleans())
def test_parse_and_the_schema_agree_on_every_body(kind: str, name: str, value: Any,
                                                  drop: bool) -> None:
    fields = ["v", "id", "at", *GOOD[kind]]
    target = fields[sum(map(ord, name)) % len(fields)] if not name.startswith("x") else name
    data = body(kind, **{target: _MISSING if drop else value})
    assert parse_accepts(kind, data) == schema_accepts(kind, data), data


@pytest.mark.parametrize(("kind", "change", "field"), [
    ("door", {"relay": 9}, "relay"), ("door", {"relay": True}, "relay"),
    ("door", {"result": "maybe"}, "result"), ("door", {"time": "2026-12-07T18:00:00"}, "time"),
    ("status", {"ip": "999.1.1.1"}, "ip"), ("status", {"uptime": -1}, "uptime"),
    ("call", {"answered": "yes"}, "answered"), ("call", {"duration": 86_401}, "duration"),
    ("ack", {"outcome": "maybe"}, "outcome"), ("heartbeat", {"v": 2}, "v"),
    ("heartbeat", {"id": "has space"}, "id"), ("heartbeat", {"extra": 1}, "extra"),
])
def test_a_refusal_names_the_field(kind: str, change: dict[str, Any], field: str) -> None:
    with pytest.raises(Refused) as refused:
        parse(kind, json.dumps(body(kind, **change)).encode())
    assert refused.value.reason == traffic.MALFORMED
    assert refused.value.detail.startswith(field)


def test_bodies_that_are_no_message_are_refused_with_their_reason() -> None:
    for raw, reason in [(b"not json", traffic.MALFORMED), (b"[1, 2]", traffic.MALFORMED),
                        (b"\xff\xfe", traffic.MALFORMED), (b"[" * 5000, traffic.OVERSIZED),
                        (b" " * 4097, traffic.OVERSIZED)]:
        with pytest.raises(Refused) as refused:
            parse("heartbeat", raw)
        assert refused.value.reason == reason


def test_routing_keys_name_a_mac_and_a_kind() -> None:
    assert split_key("0c11050b9814.door") == ("0C11050B9814", "door")
    for key, reason in [("0C11050B9814.dance", traffic.UNKNOWN_KIND),
                        ("0C11050B9814", traffic.UNKNOWN_KIND),
                        ("0C11.heartbeat", traffic.MALFORMED),
                        ("0C11050B98ZZ.heartbeat", traffic.MALFORMED)]:
        with pytest.raises(Refused) as refused:
            split_key(key)
        assert refused.value.reason == reason


# --- remote operations: what an installer may ask of a device (contracts.devices) -------------


def command_errors(**payload: Any) -> dict[str, Any]:
    with pytest.raises(Invalid) as refused:
        checked(CommandCreate, payload)
    return refused.value.errors


def test_a_command_is_once_false_and_waits_an_hour_unless_asked_otherwise() -> None:
    loaded = checked(CommandCreate, {"kind": "reboot"})
    assert DEADLINE_DEFAULT == 3600
    assert loaded == {"kind": "reboot", "connection_type": None, "commands": None,
                      "once": False, "deadline_seconds": 3600}
    assert checked(CommandCreate, {"kind": "reset", "deadline_seconds": 5,
                                   "once": True})["deadline_seconds"] == 5


@pytest.mark.parametrize("chosen", ["TCP", "UDP", "TLS"])
def test_a_connection_type_command_takes_tcp_udp_or_tls(chosen: str) -> None:
    assert CONNECTION_TYPES == ("TCP", "UDP", "TLS")
    assert checked(CommandCreate, {"kind": "connection_type",
                                   "connection_type": chosen})["connection_type"] == chosen


def test_a_connection_type_command_needs_one_of_the_three() -> None:
    assert list(command_errors(kind="connection_type")) == ["connection_type"]
    assert list(command_errors(kind="connection_type", connection_type=None)) == [
        "connection_type"]
    assert list(command_errors(kind="connection_type", connection_type="tcp")) == [
        "connection_type"]
    assert list(command_errors(kind="connection_type", connection_type="HTTP")) == [
        "connection_type"]


def test_autop_needs_its_commands_each_key_equals_value() -> None:
    assert list(command_errors(kind="autop")) == ["commands"]
    assert list(command_errors(kind="autop", commands=[])) == ["commands"]
    assert command_errors(kind="autop", commands=["A = 1", "no equals sign"]) == {
        "commands": {1: [AUTOP_LINE_MESSAGE]}}
    assert list(command_errors(kind="autop", commands=["bad key = 1"])) == ["commands"]
    assert list(command_errors(kind="autop", commands=["= 1"])) == ["commands"]


def test_autop_commands_keep_one_value_per_key_the_last_given() -> None:
    loaded = checked(CommandCreate, {"kind": "autop", "once": True, "commands": [
        "Config.Settings.GENERAL.Volume = 8", "  B_x-1=  on ",
        "Config.Settings.GENERAL.Volume=3"]})
    assert loaded["commands"] == ["Config.Settings.GENERAL.Volume = 3", "B_x-1 = on"]
    assert loaded["once"] is True
    assert autop_lines(["A = 1", "B = 2", "A = 3", "not a line"]) == ["A = 3", "B = 2"]


@pytest.mark.parametrize("kind", ["config_sync", "upgrade", ""])
def test_only_the_requested_kinds_are_asked_for(kind: str) -> None:
    assert "config_sync" in COMMAND_KINDS and "config_sync" not in REQUESTED_KINDS
    assert list(command_errors(kind=kind)) == ["kind"]


@pytest.mark.parametrize("seconds", [4, 604_801, 0, -1])
def test_a_deadline_is_five_seconds_to_a_week(seconds: int) -> None:
    assert (DEADLINE_MIN, DEADLINE_MAX) == (5, 604_800)
    assert checked(CommandCreate, {"kind": "reboot",
                                   "deadline_seconds": 604_800})["deadline_seconds"] == 604_800
    assert list(command_errors(kind="reboot", deadline_seconds=seconds)) == [
        "deadline_seconds"]


def test_a_command_refuses_unknown_fields_and_needs_a_kind() -> None:
    assert list(command_errors(kind="reboot", force=True)) == ["force"]
    assert list(command_errors()) == ["kind"]


def test_a_command_may_send_null_for_what_its_kind_does_not_use() -> None:
    assert checked(CommandCreate, {"kind": "reboot", "connection_type": None,
                                   "commands": None}) == checked(CommandCreate,
                                                                 {"kind": "reboot"})


def test_autop_takes_one_to_two_hundred_lines() -> None:
    assert AUTOP_LINES_MAX == 200
    assert checked(CommandCreate, {"kind": "autop", "commands": ["A = 1"]})["commands"] == [
        "A = 1"]
    most = [f"K{i} = {i}" for i in range(200)]
    assert checked(CommandCreate, {"kind": "autop", "commands": most})["commands"] == most
    assert list(command_errors(kind="autop", commands=[*most, "K200 = 200"])) == ["commands"]


def test_an_autop_line_is_at_most_512_characters() -> None:
    longest = "K" * 128 + " = " + "v" * 381
    assert len(longest) == 512
    assert checked(CommandCreate, {"kind": "autop", "commands": [longest]})["commands"] == [
        longest]
    assert command_errors(kind="autop", commands=[longest + "v"]) == {
        "commands": {0: ["Length must be between 1 and 512."]}}
    # A short line is judged by its form, not its length.
    assert command_errors(kind="autop", commands=["x"]) == {
        "commands": {0: [AUTOP_LINE_MESSAGE]}}


@pytest.mark.parametrize("commands", [[], [""]])
def test_commands_sent_with_any_kind_are_no_empty_list_and_no_empty_line(
        commands: list[str]) -> None:
    assert list(command_errors(kind="reboot", commands=commands)) == ["commands"]


def test_the_document_states_what_each_kind_needs() -> None:
    [rule] = schema_rules(CommandCreate)
    document = jsonschema_rs.Draft202012Validator(rule)
    assert document.is_valid({"kind": "reboot"})
    assert document.is_valid({"kind": "connection_type", "connection_type": "TLS"})
    assert not document.is_valid({"kind": "connection_type"})
    assert document.is_valid({"kind": "autop", "commands": ["A.b = 1"]})
    assert not document.is_valid({"kind": "autop"})
    assert not document.is_valid({"kind": "autop", "commands": ["no equals sign"]})


# --- pushes: what the cloud sends a device (contracts.traffic) --------------------------------

PUSH = {"v": 1, "command_id": "c-1", "kind": "connection_type",
        "params": {"connection_type": "TLS"}, "deadline": "2026-12-07T19:00:00+01:00"}


def test_a_device_s_push_queue_is_named_by_its_mac_and_outlives_a_command_by_a_day() -> None:
    assert push_queue_name("0C11050B9814") == "devices.push.0C11050B9814"
    assert push_queue_name("0C11050B9814", "t1.") == "t1.devices.push.0C11050B9814"
    assert PUSH_QUEUE_ARGUMENTS == {"x-expires": 8 * 86_400 * 1000}  # a week and a day, in ms


def test_a_push_body_is_compact_json_of_version_one_and_loads() -> None:
    sent = push_body("c-1", "connection_type", {"connection_type": "TLS"},
                     "2026-12-07T19:00:00+01:00")
    assert sent == (b'{"v":1,"command_id":"c-1","kind":"connection_type",'
                    b'"params":{"connection_type":"TLS"},"deadline":"2026-12-07T19:00:00+01:00"}')
    loaded = PushSchema().load(json.loads(sent))
    assert loaded == {**PUSH, "deadline": datetime(2026, 12, 7, 18, tzinfo=UTC)}


@pytest.mark.parametrize("kind", COMMAND_KINDS)
def test_a_push_carries_any_command_kind(kind: str) -> None:
    assert PushSchema().load({**PUSH, "kind": kind, "params": {}})["kind"] == kind


@pytest.mark.parametrize(("field", "value"), [
    ("v", 2), ("command_id", "has space"), ("command_id", "x" * 65), ("kind", "dance"),
    ("params", "TLS"), ("deadline", "2026-12-07T19:00:00"), ("extra", 1),
])
def test_a_push_refuses_each_bad_field_by_name(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as refused:
        PushSchema().load({**PUSH, field: value})
    assert list(refused.value.messages) == [field]


@pytest.mark.parametrize("field", list(PUSH))
def test_a_push_needs_every_field(field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        PushSchema().load({k: v for k, v in PUSH.items() if k != field})
    assert list(refused.value.messages) == [field]
