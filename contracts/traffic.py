"""Device traffic: what an intercom sends to the cloud all day (heartbeats, status, door
openings, calls, command acknowledgements, upgrade progress), version 1.

A device publishes to the topic exchange `<prefix>devices.traffic` with the routing key
`<MAC>.<kind>` (12 hex digits, then one of `KINDS`) and a JSON object body; `contracts/README.md`
is the device maker's guide. The marshmallow schemas below are the contract; `parse` is the
checker the ingest runs on every message, written out by hand because it runs tens of thousands
of times a second, and held to the schemas by `tests/unit/test_traffic_contract.py` (both accept
and refuse the same bodies).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from contracts.devices import ACCESS_METHODS, COMMAND_KINDS, CREDENTIAL_KINDS, DEADLINE_MAX

VERSION = 1
KINDS = ("heartbeat", "status", "door", "call", "ack", "upgrade")
# A body longer than this is refused whole ("oversized"): no kind needs more.
MAX_BODY_BYTES = 4096
DOOR_RESULTS = ("success", "failure")
# What a device tells about a command it was pushed (`ack`): it got it, it did it, or not.
ACK_OUTCOMES = ("received", "succeeded", "failed")
UPGRADE_STATES = ("downloading", "installing", "done", "failed")
# Door openings by a call or from the cloud have no credential.
DOOR_CREDENTIALS = (*CREDENTIAL_KINDS, "none")
DOOR_METHODS = (*ACCESS_METHODS, "call", "remote", "exit_button")

_MAC = re.compile(r"[0-9A-F]{12}")
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")
_TEXT_MAX = 64


class _Int(fields.Integer):
    """A JSON integer: not a float, a string or a boolean."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if type(value) is not int:
            raise ValidationError("An integer is required.")
        return super()._deserialize(value, attr, data, **kwargs)


class _Bool(fields.Boolean):
    """JSON true or false, nothing that merely looks like one."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if type(value) is not bool:
            raise ValidationError("true or false is required.")
        return value


class _Time(fields.Field):
    """An ISO 8601 time with its offset (Python's `fromisoformat`), kept in UTC."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        try:
            parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            parsed = None
        if parsed is None or parsed.utcoffset() is None:
            raise ValidationError("An ISO 8601 time with its offset is required.")
        return parsed.astimezone(UTC)


class _Message(Schema):
    """Every message: the contract version, the device's own id for it, when it was sent."""

    v = _Int(required=True, validate=validate.Equal(VERSION))
    id = fields.String(required=True, validate=validate.Regexp(_ID))
    at = _Time(required=True)


class HeartbeatSchema(_Message):
    pass


class StatusSchema(_Message):
    model = fields.String(required=True, validate=validate.Length(1, _TEXT_MAX))
    firmware = fields.String(required=True, validate=validate.Length(1, _TEXT_MAX))
    ip = fields.IP(required=True)
    uptime = _Int(required=True, validate=validate.Range(min=0))


class DoorSchema(_Message):
    relay = _Int(required=True, validate=validate.Range(1, 8))
    access_method = fields.String(required=True, validate=validate.OneOf(DOOR_METHODS))
    credential_kind = fields.String(required=True, validate=validate.OneOf(DOOR_CREDENTIALS))
    result = fields.String(required=True, validate=validate.OneOf(DOOR_RESULTS))
    time = _Time(required=True)


class CallSchema(_Message):
    caller = fields.String(required=True, validate=validate.Length(1, _TEXT_MAX))
    callee = fields.String(required=True, validate=validate.Length(1, _TEXT_MAX))
    start = _Time(required=True)
    duration = _Int(required=True, validate=validate.Range(0, 86_400))
    answered = _Bool(required=True)


class AckSchema(_Message):
    command_id = fields.String(required=True, validate=validate.Regexp(_ID))
    outcome = fields.String(required=True, validate=validate.OneOf(ACK_OUTCOMES))
    detail = fields.String(load_default=None, allow_none=True,
                           validate=validate.Length(max=256))


class UpgradeSchema(_Message):
    command_id = fields.String(required=True, validate=validate.Regexp(_ID))
    version = fields.String(required=True, validate=validate.Length(1, _TEXT_MAX))
    state = fields.String(required=True, validate=validate.OneOf(UPGRADE_STATES))
    progress = _Int(required=True, validate=validate.Range(0, 100))


SCHEMAS: dict[str, type[Schema]] = {
    "heartbeat": HeartbeatSchema, "status": StatusSchema, "door": DoorSchema,
    "call": CallSchema, "ack": AckSchema, "upgrade": UpgradeSchema,
}


class Refused(Exception):
    """A message the ingest cannot take, with the dead-letter reason and what was wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# Dead-letter reasons, as operators see them counted.
MALFORMED, UNKNOWN_KIND, UNKNOWN_MAC, OVERSIZED, REPLAYED = (
    "malformed", "unknown_kind", "unknown_mac", "oversized", "replayed")
REASONS = (MALFORMED, UNKNOWN_KIND, UNKNOWN_MAC, OVERSIZED, REPLAYED)


def routing_key(mac: str, kind: str) -> str:
    return f"{mac}.{kind}"


def split_key(key: str) -> tuple[str, str]:
    """The MAC and kind of a routing key; Refused when either is not one."""
    mac, _, kind = key.partition(".")
    mac = mac.upper()
    if kind not in KINDS:
        raise Refused(UNKNOWN_KIND, f"{kind[:32]!r} is not one of {', '.join(KINDS)}")
    if not _MAC.fullmatch(mac):
        raise Refused(MALFORMED, "the routing key does not start with a MAC of 12 hex digits")
    return mac, kind


def parse(kind: str, body: bytes) -> dict[str, Any]:
    """The body of a message of `kind` as the ingest keeps it (times as aware datetimes), or
    Refused naming the first field that breaks the contract."""
    if len(body) > MAX_BODY_BYTES:
        raise Refused(OVERSIZED, f"{len(body)} bytes, at most {MAX_BODY_BYTES}")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise Refused(MALFORMED, f"not JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise Refused(MALFORMED, "the body is not a JSON object")
    check = _CHECKS.get(kind)
    if check is None:
        raise Refused(UNKNOWN_KIND, f"{kind[:32]!r} is not one of {', '.join(KINDS)}")
    unknown = data.keys() - _FIELDS[kind]
    if unknown:
        raise Refused(MALFORMED, f"{sorted(unknown)[0][:32]}: unknown field")
    _common(data)
    check(data)
    return data


def _fail(name: str, why: str) -> Refused:
    return Refused(MALFORMED, f"{name}: {why}")


def _int(data: dict[str, Any], name: str, low: int, high: int | None = None) -> None:
    value = data.get(name)
    if type(value) is not int:
        raise _fail(name, "an integer is required")
    if value < low or (high is not None and value > high):
        raise _fail(name, f"out of range {low}..{'' if high is None else high}")


def _text(data: dict[str, Any], name: str, most: int = _TEXT_MAX) -> None:
    value = data.get(name)
    if not isinstance(value, str) or not 1 <= len(value) <= most:
        raise _fail(name, f"a string of 1 to {most} characters is required")


def _one_of(data: dict[str, Any], name: str, choices: tuple[str, ...]) -> None:
    if data.get(name) not in choices or not isinstance(data.get(name), str):
        raise _fail(name, f"one of {', '.join(choices)} is required")


def _pattern(data: dict[str, Any], name: str, pattern: re.Pattern[str]) -> None:
    value = data.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _fail(name, "1 to 64 letters, digits and . _ : - are required")


def _time(data: dict[str, Any], name: str) -> None:
    value = data.get(name)
    if not isinstance(value, str):
        raise _fail(name, "an ISO 8601 time with its offset is required")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(name, "an ISO 8601 time with its offset is required") from None
    if parsed.utcoffset() is None:
        raise _fail(name, "an ISO 8601 time with its offset is required")
    data[name] = parsed.astimezone(UTC)


def _common(data: dict[str, Any]) -> None:
    if data.get("v") != VERSION or type(data.get("v")) is not int:
        raise _fail("v", f"this ingest takes version {VERSION}")
    _pattern(data, "id", _ID)
    _time(data, "at")


def _status(data: dict[str, Any]) -> None:
    _text(data, "model")
    _text(data, "firmware")
    ip = data.get("ip")
    try:
        fields.IP().deserialize(ip)
    except ValidationError:
        raise _fail("ip", "an IPv4 or IPv6 address is required") from None
    _int(data, "uptime", 0)


def _door(data: dict[str, Any]) -> None:
    _int(data, "relay", 1, 8)
    _one_of(data, "access_method", DOOR_METHODS)
    _one_of(data, "credential_kind", DOOR_CREDENTIALS)
    _one_of(data, "result", DOOR_RESULTS)
    _time(data, "time")


def _call(data: dict[str, Any]) -> None:
    _text(data, "caller")
    _text(data, "callee")
    _time(data, "start")
    _int(data, "duration", 0, 86_400)
    if type(data.get("answered")) is not bool:
        raise _fail("answered", "true or false is required")


def _ack(data: dict[str, Any]) -> None:
    _pattern(data, "command_id", _ID)
    _one_of(data, "outcome", ACK_OUTCOMES)
    detail = data.get("detail")
    if detail is not None and (not isinstance(detail, str) or len(detail) > 256):
        raise _fail("detail", "a string of at most 256 characters is required")
    data.setdefault("detail", None)


def _upgrade(data: dict[str, Any]) -> None:
    _pattern(data, "command_id", _ID)
    _text(data, "version")
    _one_of(data, "state", UPGRADE_STATES)
    _int(data, "progress", 0, 100)


_CHECKS = {"heartbeat": lambda data: None, "status": _status, "door": _door, "call": _call,
           "ack": _ack, "upgrade": _upgrade}
_FIELDS = {kind: frozenset(schema._declared_fields) for kind, schema in SCHEMAS.items()}


# --- pushes: what the cloud sends a device ------------------------------------------------------
#
# Notify pushes each command to the direct exchange `<prefix>devices.push` with the device's MAC
# as the routing key. The device's own durable queue `<prefix>devices.push.<MAC>` (declared by
# the cloud at the first push, with `PUSH_QUEUE_ARGUMENTS`; a device declares it with the same
# arguments, or passively) keeps pushes while the device is away, each until its deadline (the
# message's `expiration`). The device answers with `ack` traffic naming the push's `command_id`:
# "received" when it has it, then "succeeded" or "failed". A push may come twice (a cloud crash
# between sending and recording it): the second copy of a command id is acknowledged again and
# not carried out twice.

PUSH_EXCHANGE = "devices.push"
# A device's push queue is dropped once unused (no consumer, no push) for longer than a command
# may wait (contracts/devices.py DEADLINE_MAX) and a day: nothing in it could still be due.
PUSH_QUEUE_ARGUMENTS = {"x-expires": (DEADLINE_MAX + 86_400) * 1000}
PUSH_VERSION = 1


def push_queue_name(mac: str, prefix: str = "") -> str:
    return f"{prefix}{PUSH_EXCHANGE}.{mac}"


class PushSchema(Schema):
    """The body of one push: a command for the device (contracts/devices.py `COMMAND_KINDS`)."""

    v = fields.Integer(required=True, validate=validate.Equal(PUSH_VERSION))
    command_id = fields.String(required=True, validate=validate.Regexp(_ID))
    kind = fields.String(required=True, validate=validate.OneOf(COMMAND_KINDS))
    params = fields.Dict(required=True, metadata={
        "description": "connection_type: {connection_type}; autop: {commands, once}; else {}"})
    deadline = _Time(required=True)


def push_body(command_id: str, kind: str, params: dict[str, Any], deadline: str) -> bytes:
    return json.dumps({"v": PUSH_VERSION, "command_id": command_id, "kind": kind,
                       "params": params, "deadline": deadline}, separators=(",", ":")).encode()
