"""Devices contracts: the MAC library, intercom devices and their relays, and every event's data.

The one home of every rule about the shape of what arrives (types, lengths, patterns, choices,
the manual's defaults, and the normal form each value is stored in: a MAC as 12 upper-case hex
digits, text stripped). Devices' aggregates take what these schemas loaded and check only what
needs their state: the MAC's owner and use, the area's owner (services/devices/domain.py).

Command schemas refuse unknown fields; create schemas fill in the manual's defaults, edit
schemas are partial. Event schemas ignore unknown fields, as the envelope's version rule asks.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from contracts.fields import (
    NON_BLANK_PATTERN,
    Boolean,
    Integer,
    List,
    Text,
    documented,
    padded,
    stripped,
)
from contracts.topology import DEVICE_NAME_MAX, MAC_MESSAGE, MAC_REGEX, NETWORK_GROUP_MAX

__all__ = [
    "AREAS",
    "COMMAND_KINDS",
    "COMMAND_STATES",
    "DEVICE_SORTS",
    "DEVICE_TYPES",
    "EVENT_SCHEMAS",
    "EVENT_VERSION",
    "MAC_SORTS",
    "CommandCreate",
    "DeviceCreate",
    "DeviceEdit",
    "MacImport",
    "MacRegister",
    "normal_mac",
]

EVENT_VERSION = 1

# The manual's device types with the codes of its import template ("Device Setting Format").
DEVICE_TYPES: dict[int, str] = {
    0: "multi_tenant_door_phone",
    1: "single_tenant_door_phone",
    2: "indoor_monitor",
    3: "guard_phone",
    50: "access_control",
}
DOOR_PHONES = (0, 1)
INDOOR_MONITOR = 2
# Where a device is installed: a community's public area, a building's public area, an APT.
AREAS = ("community", "building", "apartment")
# Which types each area takes: an APT holds its own door phone, monitor or access control; the
# public areas hold the shared ones (a guard phone sits in the guard room of the community).
AREA_TYPES: dict[str, tuple[int, ...]] = {
    "community": (0, 2, 3, 50),
    "building": (0, 2, 3, 50),
    "apartment": (1, 2, 50),
}
# The manual's "Access Method" check boxes (all ticked on its edit screenshot).
ACCESS_METHODS = ("smartplus_homepage", "talking_page", "pin", "face", "rf_card", "bluetooth",
                  "nfc")
# "Add Relay" has no stated limit; a door phone drives relays A-D, so four (ours).
RELAYS_MAX = 4
DTMF_REGEX = r"^[0-9*#]{1,4}\Z"
DTMF_MESSAGE = "A DTMF code is 1 to 4 characters of digits, '*' and '#'."
DTMF_DEFAULT = "#"  # the form's preselected code
RELAY_NAME_DEFAULT = "Relay1"
BUILTIN_RELAYS_MAX = 2  # the Add APT table's "Relay1/2" of the indoor monitor
# External relay types with the most relays each drives, and the modes each offers (manual:
# "Akuvox-MK485-G2R-8J8C V3.0 supports up to 8 relays and HF-8000 up to 4").
EXTERNAL_RELAY_MODELS = {"MK485": 8, "HF-8000": 4}
EXTERNAL_RELAY_MODES: dict[str, tuple[str, ...]] = {
    "MK485": ("rs485", "rs485_input_non_latching", "rs485_input_latching"),
    "HF-8000": ("rs485", "ethernet"),
}
EXTERNAL_RELAY_FUNCTIONS = ("door", "light", "curtain", "alarm", "other")
# "Contact Display Settings" of a door phone: "Only APT numbers" / "APT numbers, indoor
# monitors and apps".
CONTACT_DISPLAYS = ("apt_numbers", "apt_numbers_monitors_and_apps")
ALL_BUILDINGS = "all"
PORT_MIN, PORT_MAX = 1, 65535
MAC_CSV_MAX_BYTES = 2_000_000  # about 100,000 rows of a MAC each
MAC_CSV_MAX_ROWS = 100_000

DEVICE_SORTS = ("name", "mac", "sip", "created_at")
THIRD_PARTY_SORTS = ("name", "created_at")
MAC_SORTS = ("mac", "created_at")

_MAC = re.compile(MAC_REGEX)
IP_MESSAGE = "Not a valid IPv4 address."
STATIC_IP_RULE = "required when the device has no internet access"


def normal_mac(value: str) -> str | None:
    """12 upper-case hex digits, or None when `value` is no MAC in any of the accepted forms."""
    text = value.strip()
    if not _MAC.match(text):
        return None
    return re.sub("[:-]", "", text).upper()


@documented(pattern=padded(MAC_REGEX))
def _mac_valid(value: str) -> None:
    if normal_mac(value) is None:
        raise ValidationError(MAC_MESSAGE)


def _mac(**kwargs: Any) -> Text:
    return Text(validate=_mac_valid, tidy=lambda text: normal_mac(text), **kwargs)


IPV4_REGEX = (r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
              r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\Z")


@documented(pattern=IPV4_REGEX.replace("\\Z", "$"))
def _ipv4(value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ValidationError(IP_MESSAGE) from None
    if not re.match(IPV4_REGEX, value):  # "01.2.3.4": the library takes no leading zeros
        raise ValidationError(IP_MESSAGE)


def _ip(**kwargs: Any) -> Text:
    return Text(validate=_ipv4, **kwargs)


@documented(pattern=NON_BLANK_PATTERN)
def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("This field may not be blank.")


def _name(**kwargs: Any) -> Text:
    return Text(validate=[validate.Length(max=DEVICE_NAME_MAX), _not_blank], tidy=stripped,
                **kwargs)


# --- MAC library -----------------------------------------------------------------------------


class MacRegister(Schema):
    """MAC Library >> Add: one MAC for one of the distributor's installers."""

    mac = _mac(required=True)


class MacImport(Schema):
    """MAC Library >> Import: many MACs at once, one per line of a CSV (the first column; a
    header line and blank lines are skipped). Each row's outcome is reported."""

    csv = Text(required=True, validate=validate.Length(min=1, max=MAC_CSV_MAX_BYTES))


# "Add Devices Using a Template": at most this many devices in one request.
DEVICE_IMPORT_MAX = 1000


class DeviceImport(Schema):
    """Add Devices Using a Template, the Device Setting Format: "Device name, Device type,
    Device MAC" items separated by ";" (`Gate2,0,0C11050B9814; Living Room,2,0C11050893C6`).
    Each item's outcome is reported; the items that can be added are, together."""

    devices = Text(required=True, validate=validate.Length(min=1, max=DEVICE_IMPORT_MAX * 120),
                   metadata={"description": "name,type,MAC items separated by ';' (the "
                                            "manual's Device Setting Format)"})


def device_items(text: str) -> list[tuple[int, str]]:
    """(item number from 1, its text) of each non-blank item of a Device Setting Format."""
    items = [part.strip() for part in text.replace("\n", ";").split(";")]
    return [(number, item) for number, item in enumerate(
        (item for item in items if item), start=1)]


def mac_rows(csv_text: str) -> list[tuple[int, str]]:
    """(line number, first cell) of each non-blank line; a first line that holds no MAC is a
    header (the manual's template starts with one) and is skipped."""
    rows = []
    for number, line in enumerate(csv_text.splitlines(), start=1):
        cell = line.split(",", 1)[0].split(";", 1)[0].strip().strip('"').strip()
        if not cell:
            continue
        if number == 1 and normal_mac(cell) is None and not any(c.isdigit() for c in cell):
            continue  # a header such as "MAC"
        rows.append((number, cell))
    return rows


# --- devices ---------------------------------------------------------------------------------


class Relay(Schema):
    """One relay of a door phone or access control: name, DTMF code, how residents open it
    (a PIN typed at the door triggers only the relays that list "pin")."""

    name = _name(load_default=RELAY_NAME_DEFAULT)
    dtmf = Text(load_default=DTMF_DEFAULT,
                validate=validate.Regexp(DTMF_REGEX, error=DTMF_MESSAGE))
    access_methods = List(Text(validate=validate.OneOf(ACCESS_METHODS)),
                          load_default=lambda: list(ACCESS_METHODS),
                          validate=validate.Length(max=len(ACCESS_METHODS)),
                          tidy=lambda methods: list(dict.fromkeys(methods)))
    enabled = Boolean(load_default=True)


class ExternalRelayOutput(Schema):
    name = _name(required=True)
    function = Text(validate=validate.OneOf(EXTERNAL_RELAY_FUNCTIONS), load_default="door")


class ExternalRelay(Schema):
    """An indoor monitor's external relay: MK485 (up to 8 relays) or HF-8000 (up to 4), over
    RS485 or Ethernet (then with the relay box's IP and port)."""

    model = Text(required=True, validate=validate.OneOf(tuple(EXTERNAL_RELAY_MODELS)))
    mode = Text(validate=validate.OneOf(sorted({m for modes in EXTERNAL_RELAY_MODES.values()
                                                for m in modes})), load_default="rs485")
    ip = _ip(load_default=None, allow_none=True)
    port = Integer(validate=validate.Range(PORT_MIN, PORT_MAX), load_default=None,
                   allow_none=True)
    relays = List(fields.Nested(ExternalRelayOutput), required=True,
                  validate=validate.Length(min=1, max=max(EXTERNAL_RELAY_MODELS.values())))

    @validates_schema
    @documented(**{"allOf": [
        {"if": {"properties": {"model": {"const": model}}, "required": ["model"]},
         "then": {"properties": {"relays": {"maxItems": most}}}}
        for model, most in EXTERNAL_RELAY_MODELS.items()] + [
        {"if": {"properties": {"model": {"const": model}}, "required": ["model"]},
         "then": {"properties": {"mode": {"enum": list(modes)}}}}
        for model, modes in EXTERNAL_RELAY_MODES.items()] + [
        {"if": {"properties": {"mode": {"const": "ethernet"}}, "required": ["mode"]},
         "then": {"required": ["ip", "port"],
                  "properties": {"ip": {"type": "string"}, "port": {"type": "integer"}}}}]})
    def _fits(self, data: dict[str, Any], **_: Any) -> None:
        model = data.get("model", "")
        most = EXTERNAL_RELAY_MODELS.get(model, 0)
        if len(data.get("relays") or []) > most:
            raise ValidationError(f"A {model} drives at most {most} relays.", "relays")
        if data.get("mode") not in EXTERNAL_RELAY_MODES.get(model, ()):
            modes = ", ".join(EXTERNAL_RELAY_MODES.get(model, ()))
            raise ValidationError(f"A {model} works in these modes: {modes}.", "mode")
        if data.get("mode") == "ethernet":
            errors = {name: ["Required over Ethernet."] for name in ("ip", "port")
                      if data.get(name) is None}
            if errors:
                raise ValidationError(errors)


def _builtin_relays(**kwargs: Any) -> List:
    """The indoor monitor's built-in relays (Relay1/2), by name; empty names are dropped."""
    return List(Text(validate=validate.Length(max=DEVICE_NAME_MAX), tidy=lambda t: t.strip()
                     or None),
                validate=validate.Length(max=BUILTIN_RELAYS_MAX),
                tidy=lambda names: [n for n in names if n is not None], **kwargs)


def _buildings(**kwargs: Any) -> fields.Field:
    """Community public devices: the buildings whose residents may use it, "all" or ids."""
    return fields.Raw(metadata={"json_schema": {
        "description": 'The buildings whose residents may use a community public device: '
                       '"all", or the chosen buildings\' ids.',
        "oneOf": [{"const": ALL_BUILDINGS},
                  {"type": "array", "minItems": 1,
                   "items": {"type": "string", "pattern": UUID_PATTERN}}]}}, **kwargs)


UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


def _check_buildings(value: Any) -> list[str] | str:
    if value == ALL_BUILDINGS:
        return ALL_BUILDINGS
    if not isinstance(value, list):
        raise ValidationError('Must be "all" or a list of building ids.', "buildings")
    out = []
    for item in value:
        if not isinstance(item, str) or not re.match(UUID_PATTERN, item):
            raise ValidationError(f"Not a building id: {str(item)[:40]!r}.", "buildings")
        out.append(str(uuid.UUID(item)))
    if not out:
        raise ValidationError('Choose at least one building, or "all".', "buildings")
    return list(dict.fromkeys(out))


class _DeviceFields(Schema):
    name = _name()
    network_group = Integer(validate=validate.Range(1, NETWORK_GROUP_MAX))
    allow_monitor = Boolean()
    internet_access = Boolean()
    static_ip = _ip(allow_none=True)
    buildings = _buildings()
    relays = List(fields.Nested(Relay), validate=validate.Length(max=RELAYS_MAX))
    security_relay = Boolean()
    door_hold_open = Boolean()
    arming = Boolean()
    builtin_relays = _builtin_relays()
    external_relay = fields.Nested(ExternalRelay, allow_none=True)
    directory = Boolean()
    contact_display = Text(validate=validate.OneOf(CONTACT_DISPLAYS))


class DeviceCreate(_DeviceFields):
    """Add Device (community public area, building public area or APT)."""

    type = Integer(required=True, validate=validate.OneOf(tuple(DEVICE_TYPES)),
                   metadata={"description": "; ".join(f"{k}={v}"
                                                      for k, v in DEVICE_TYPES.items())})
    mac = _mac(required=True)
    name = _name(required=True)
    network_group = Integer(validate=validate.Range(1, NETWORK_GROUP_MAX), load_default=1)
    allow_monitor = Boolean(load_default=True)
    internet_access = Boolean(load_default=True)
    static_ip = _ip(allow_none=True, load_default=None)
    buildings = _buildings(load_default=ALL_BUILDINGS)
    relays = List(fields.Nested(Relay), validate=validate.Length(max=RELAYS_MAX),
                  load_default=None, metadata={
                      "description": "default: one relay (Relay1, DTMF #, every access "
                                     "method) on a door phone or access control, none on an "
                                     "indoor monitor"})
    security_relay = Boolean(load_default=False)
    door_hold_open = Boolean(load_default=False)
    arming = Boolean(load_default=False)
    builtin_relays = _builtin_relays(load_default=list)
    external_relay = fields.Nested(ExternalRelay, allow_none=True, load_default=None)
    directory = Boolean(load_default=True)
    contact_display = Text(validate=validate.OneOf(CONTACT_DISPLAYS),
                           load_default="apt_numbers_monitors_and_apps")

    state_rules = {"mac": "in the installer's MAC library and used by no other device",
                   "buildings": "buildings of the device's community (community area only)",
                   "type": "one the area takes: an APT its door phone, indoor monitor or "
                           "access control; a public area the others",
                   "door_hold_open": "only for a device in an APT"}

    @validates_schema
    @documented(**{"allOf": [
        {"if": {"properties": {"internet_access": {"const": False}},
                "required": ["internet_access"]},
         "then": {"required": ["static_ip"], "properties": {"static_ip": {"type": "string"}}}},
        {"if": {"properties": {"type": {"not": {"const": INDOOR_MONITOR}}}},
         "then": {"properties": {"arming": {"const": False},
                                 "builtin_relays": {"maxItems": 0},
                                 "external_relay": {"type": "null"}}}},
        {"if": {"properties": {"type": {"const": INDOOR_MONITOR}}, "required": ["type"]},
         "then": {"properties": {"relays": {"maxItems": 0}, "security_relay": {"const": False},
                                 "door_hold_open": {"const": False}}}},
    ]})
    def _fits(self, data: dict[str, Any], **_: Any) -> None:
        errors = _device_rules(data)
        if errors:
            raise ValidationError(errors)


class DeviceEdit(_DeviceFields):
    """Edit Device: any subset of the settings (type and MAC stay: a new device is another)."""

    state_rules = {"static_ip": STATIC_IP_RULE,
                   "buildings": "buildings of the device's community (community area only)",
                   "door_hold_open": "only for a device in an APT",
                   "arming": "only an indoor monitor's", "builtin_relays":
                   "only an indoor monitor's", "external_relay": "only an indoor monitor's",
                   "relays": "not an indoor monitor's", "security_relay":
                   "not an indoor monitor's"}

    @validates_schema
    def _fits(self, data: dict[str, Any], **_: Any) -> None:
        if "buildings" in data:
            data["buildings"] = _check_buildings(data["buildings"])


def schema_default_relay() -> dict[str, Any]:
    return {"name": RELAY_NAME_DEFAULT, "dtmf": DTMF_DEFAULT,
            "access_methods": list(ACCESS_METHODS), "enabled": True}


def type_rules(kind: Any, data: dict[str, Any]) -> dict[str, list[str]]:
    """Settings that only some types have: an indoor monitor arms and has built-in and
    external relays; door phones and access controls have relays, SR01 and door hold open."""
    errors: dict[str, list[str]] = {}
    if kind == INDOOR_MONITOR:
        for name in ("relays", "security_relay", "door_hold_open"):
            if data.get(name):
                errors[name] = ["An indoor monitor has built-in and external relays instead."]
    else:
        for name in ("arming", "builtin_relays"):
            if data.get(name):
                errors[name] = ["Only an indoor monitor has this setting."]
        if data.get("external_relay") is not None:
            errors["external_relay"] = ["Only an indoor monitor drives an external relay."]
    return errors


def _device_rules(data: dict[str, Any]) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if not data.get("internet_access", True) and not data.get("static_ip"):
        errors["static_ip"] = ["A device without internet access needs a static IP."]
    if data.get("relays") is None:
        data["relays"] = ([] if data.get("type") == INDOOR_MONITOR
                          else [schema_default_relay()])
    errors.update(type_rules(data.get("type"), data))
    try:
        data["buildings"] = _check_buildings(data.get("buildings", ALL_BUILDINGS))
    except ValidationError as exc:
        errors["buildings"] = [str(exc.messages[0]) if isinstance(exc.messages, list)
                               else str(exc.messages)]
    return errors


# --- resident credentials ----------------------------------------------------------------------

# What a resident opens doors with (manual: the relays' access methods). The manual gives no
# formats; these are the usual ones: a PIN of 4 to 8 digits, card and tag numbers in hex (an RF
# card's as printed, an NFC tag's UID), a phone's Bluetooth address (a MAC), and a face as the
# id of the template a device or the app enrolled.
CREDENTIAL_KINDS = ("pin", "rf_card", "face", "nfc", "bluetooth")
# Unique within a community (a PIN typed at a shared door, a card held to it, opens one APT's
# doors); the others are unique within the APT.
COMMUNITY_UNIQUE = ("pin", "rf_card", "nfc")
# The manual's Reset removes "PIN, face data, NFC, Bluetooth, and QR Codes"; RF cards are in
# neither of its lists, and are kept (a card is a thing handed over with the keys).
RESET_WIPES = ("pin", "face", "nfc", "bluetooth")
CREDENTIALS_PER_APARTMENT = 50
CREDENTIAL_PATTERNS = {
    "pin": (r"^[0-9]{4,8}\Z", "A PIN is 4 to 8 digits."),
    "rf_card": (r"^[0-9A-Fa-f]{4,20}\Z", "An RF card number is 4 to 20 hex digits."),
    "face": (r"^[A-Za-z0-9._-]{1,128}\Z",
             "A face template id is 1 to 128 letters, digits, '.', '_' or '-'."),
    "nfc": (r"^[0-9A-Fa-f]{8,20}\Z", "An NFC tag UID is 8 to 20 hex digits."),
    "bluetooth": (MAC_REGEX, MAC_MESSAGE),
}
HOLDER_MAX = 64


def normal_credential(kind: str, value: str) -> str:
    """The one stored form: hex upper-case, a Bluetooth address as 12 hex digits."""
    if kind == "bluetooth":
        return normal_mac(value) or value
    return value.upper() if kind in ("rf_card", "nfc") else value


class CredentialCreate(Schema):
    """Add a credential to an APT: its kind, its value, and whose it is."""

    kind = Text(required=True, validate=validate.OneOf(CREDENTIAL_KINDS))
    value = Text(required=True, validate=validate.Length(min=1, max=128))
    holder = Text(load_default=None, allow_none=True, validate=validate.Length(max=HOLDER_MAX),
                  tidy=lambda text: text.strip() or None,
                  metadata={"description": "whose it is (a resident's or family member's name)"})

    state_rules = {"value": "unique within the community (PIN, RF card, NFC) or the APT"}

    @validates_schema
    @documented(allOf=[
        {"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
         "then": {"properties": {"value": {"pattern": pattern.replace("\\Z", "$")}}}}
        for kind, (pattern, _) in CREDENTIAL_PATTERNS.items()])
    def _fits(self, data: dict[str, Any], **_: Any) -> None:
        kind, value = data.get("kind"), data.get("value")
        if kind not in CREDENTIAL_PATTERNS or not isinstance(value, str):
            return
        pattern, message = CREDENTIAL_PATTERNS[kind]
        if not re.match(pattern, value):
            raise ValidationError(message, "value")
        data["value"] = normal_credential(kind, value)


# --- third-party devices ----------------------------------------------------------------------

# Manual, Third Party Devices: "rtsp://ip:port or rtsp://domain:port" (a manufacturer's path may
# follow); the password "cannot contain @ :/".
RTSP_REGEX = (r"^rtsp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)"
              r"(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|"
              r"6553[0-5]))?(/[^\s]*)?\Z")
RTSP_MESSAGE = "An RTSP address is rtsp://ip:port or rtsp://domain:port (a path may follow)."
CAMERA_PASSWORD_REGEX = r"^[^@:/]{1,64}\Z"
CAMERA_PASSWORD_MESSAGE = "The password cannot contain @ : /."
MONITORING_TERMINALS = ("smartplus_and_indoor_monitors", "smartplus_only",
                        "indoor_monitors_only")
LOCK_BRANDS = ("dormakaba", "salto", "itec")
LOCK_ID_MAX = 64
THIRD_PARTY_KINDS = ("camera", "lock")


class CameraCreate(Schema):
    """Add Camera (a public area or an APT): name, RTSP address, login, who may watch it."""

    name = _name(required=True)
    rtsp_url = Text(required=True, validate=[validate.Length(max=512),
                                             validate.Regexp(RTSP_REGEX, error=RTSP_MESSAGE)])
    username = Text(required=True, validate=[validate.Length(min=1, max=64), _not_blank])
    password = Text(required=True, load_only=True, validate=validate.Regexp(
        CAMERA_PASSWORD_REGEX, error=CAMERA_PASSWORD_MESSAGE))
    allow_monitor = Boolean(load_default=True)
    monitoring_terminal = Text(validate=validate.OneOf(MONITORING_TERMINALS),
                               load_default="smartplus_and_indoor_monitors")
    linked_device_id = fields.UUID(load_default=None, allow_none=True)

    state_rules = {"linked_device_id": "an intercom device of the same community"}


class CameraEdit(Schema):
    """Edit Camera: any subset."""

    name = _name()
    rtsp_url = Text(validate=[validate.Length(max=512),
                              validate.Regexp(RTSP_REGEX, error=RTSP_MESSAGE)])
    username = Text(validate=[validate.Length(min=1, max=64), _not_blank])
    password = Text(load_only=True, validate=validate.Regexp(
        CAMERA_PASSWORD_REGEX, error=CAMERA_PASSWORD_MESSAGE))
    allow_monitor = Boolean()
    monitoring_terminal = Text(validate=validate.OneOf(MONITORING_TERMINALS))
    linked_device_id = fields.UUID(allow_none=True)

    state_rules = {"linked_device_id": "an intercom device of the same community"}


class LockCreate(Schema):
    """Assign a third-party lock (Dormakaba, Salto, iTec) to an area or an APT."""

    brand = Text(required=True, validate=validate.OneOf(LOCK_BRANDS))
    lock_id = Text(required=True, validate=[validate.Length(max=LOCK_ID_MAX), _not_blank],
                   tidy=stripped, metadata={"description": "the lock's device ID"})
    name = _name(required=True)
    linked_device_id = fields.UUID(load_default=None, allow_none=True)

    state_rules = {"lock_id": "assigned to no other area (per brand)",
                   "linked_device_id": "an intercom device of the same community"}


class LockEdit(Schema):
    name = _name()
    linked_device_id = fields.UUID(allow_none=True)

    state_rules = {"linked_device_id": "an intercom device of the same community"}


# --- remote operations (manual: "Remote Configuration and Maintenance") -----------------------

# What an installer asks of a device; `config_sync` is the platform's own (after a change to the
# APT's residents or credentials, for example its reset) and is not asked for by hand.
COMMAND_KINDS = ("reboot", "reset", "connection_type", "autop", "config_sync")
REQUESTED_KINDS = ("reboot", "reset", "connection_type", "autop")
# A command's life: queued (recorded), sent (notify pushed it), delivered (the device said it
# got it), then succeeded, failed, or expired (its deadline passed first). The last three end it.
COMMAND_STATES = ("queued", "sent", "delivered", "succeeded", "failed", "expired")
FINAL_STATES = ("succeeded", "failed", "expired")
CONNECTION_TYPES = ("TCP", "UDP", "TLS")
# How long a command waits for its device: an hour unless asked otherwise, a week at most.
DEADLINE_DEFAULT = 3600
DEADLINE_MIN = 5
DEADLINE_MAX = 7 * 86_400
# An Autop command line is "key = value" (the device's own configuration keys, such as
# "Config.Settings.GENERAL.Volume = 8"); the manual keeps no duplicates: one value per key.
AUTOP_LINE_REGEX = r"^\s*([A-Za-z0-9_.-]{1,128})\s*=\s*(.{0,384}?)\s*\Z"
AUTOP_LINE_MESSAGE = "An Autop command is \"key = value\" (key: letters, digits, '.', '_', '-')."
AUTOP_LINES_MAX = 200
_AUTOP_LINE = re.compile(AUTOP_LINE_REGEX)


def autop_lines(lines: list[str]) -> list[str]:
    """The normal form of Autop commands: "key = value", one per key (the last given wins), in
    the order the keys first came."""
    kept: dict[str, str] = {}
    for line in lines:
        found = _AUTOP_LINE.match(line)
        if found is not None:
            kept[found.group(1)] = found.group(2)
    return [f"{key} = {value}" for key, value in kept.items()]


class CommandCreate(Schema):
    """A remote operation on one device: reboot, reset, a connection type, or Autop commands
    (once, or kept by the device)."""

    kind = Text(required=True, validate=validate.OneOf(REQUESTED_KINDS))
    connection_type = Text(load_default=None, allow_none=True,
                           validate=validate.OneOf(CONNECTION_TYPES),
                           metadata={"description": "required for connection_type"})
    commands = List(Text(validate=validate.Length(min=1, max=512)), load_default=None,
                    allow_none=True, validate=validate.Length(min=1, max=AUTOP_LINES_MAX),
                    metadata={"description": "the Autop commands, one \"key = value\" each; "
                                             "required for autop"})
    once = Boolean(load_default=False, metadata={
        "description": "One-Time Autop: the device applies them once and does not keep them"})
    deadline_seconds = Integer(load_default=DEADLINE_DEFAULT,
                               validate=validate.Range(DEADLINE_MIN, DEADLINE_MAX), metadata={
                                   "description": "how long the command waits for its device "
                                                  "before it expires"})

    @validates_schema
    @documented(allOf=[
        {"if": {"properties": {"kind": {"const": "connection_type"}}, "required": ["kind"]},
         "then": {"required": ["connection_type"],
                  "properties": {"connection_type": {"type": "string"}}}},
        {"if": {"properties": {"kind": {"const": "autop"}}, "required": ["kind"]},
         "then": {"required": ["commands"], "properties": {"commands": {
             "type": "array", "items": {"pattern": AUTOP_LINE_REGEX.replace("\\Z", "$")}}}}},
    ])
    def _fits(self, data: dict[str, Any], **_: Any) -> None:
        kind = data.get("kind")
        if kind == "connection_type" and not data.get("connection_type"):
            raise ValidationError("Choose TCP, UDP or TLS.", "connection_type")
        if kind != "autop":
            return
        lines = data.get("commands")
        if not lines:
            raise ValidationError("Enter the Autop commands.", "commands")
        bad = {i: [AUTOP_LINE_MESSAGE] for i, line in enumerate(lines)
               if not _AUTOP_LINE.match(line)}
        if bad:
            raise ValidationError(bad, "commands")
        data["commands"] = autop_lines(lines)


# --- event data ------------------------------------------------------------------------------


class _EventData(Schema):
    class Meta:
        unknown = EXCLUDE


class MacRegisteredSchema(_EventData):
    mac = fields.String(required=True)
    installer_id = fields.String(required=True)
    distributor_id = fields.String(allow_none=True)


class MacReleasedSchema(_EventData):
    mac = fields.String(required=True)
    installer_id = fields.String(required=True)


class _DeviceIds(_EventData):
    installer_id = fields.String(required=True)
    community_id = fields.String(required=True)
    building_id = fields.String(allow_none=True)
    apartment_id = fields.String(allow_none=True)
    area = fields.String(required=True)
    mac = fields.String(required=True)


class DeviceAddedSchema(_DeviceIds):
    type = fields.Integer(required=True)
    name = fields.String(required=True)
    sip = fields.String(required=True)
    network_group = fields.Integer()
    allow_monitor = fields.Boolean()
    internet_access = fields.Boolean()
    static_ip = fields.String(allow_none=True)
    buildings = fields.Raw()
    relays = fields.List(fields.Dict())
    security_relay = fields.Boolean()
    arming = fields.Boolean()
    door_hold_open = fields.Boolean()
    builtin_relays = fields.List(fields.String())
    external_relay = fields.Dict(allow_none=True)
    directory = fields.Boolean()
    contact_display = fields.String()


class DeviceEditedSchema(_DeviceIds):
    changes = fields.Dict(required=True)


class DeviceRemovedSchema(_DeviceIds):
    pass


class DeviceCameOnlineSchema(_EventData):
    """Heard from while it stood offline (device traffic): `at`, when it was heard."""

    mac = fields.String(required=True)
    installer_id = fields.String(required=True)
    community_id = fields.String(required=True)
    at = fields.String(required=True)


class DeviceWentOfflineSchema(_EventData):
    """Silent for longer than the heartbeat interval times the tolerance."""

    mac = fields.String(required=True)
    installer_id = fields.String(required=True)
    community_id = fields.String(required=True)
    last_seen = fields.String(required=True)


class MacAssignedSchema(_EventData):
    mac = fields.String(required=True)
    device_id = fields.String(required=True)


class MacFreedSchema(MacAssignedSchema):
    pass


class CredentialAddedSchema(_EventData):
    apartment_id = fields.String(required=True)
    community_id = fields.String(required=True)
    credential_id = fields.String(required=True)
    kind = fields.String(required=True)
    holder = fields.String(allow_none=True)
    # The value itself (a PIN) is not published: devices read it from devices' own API.


class CredentialRemovedSchema(_EventData):
    apartment_id = fields.String(required=True)
    credential_id = fields.String(required=True)


class CredentialsWipedSchema(_EventData):
    """An APT's reset wiped these credentials (manual: Reset)."""

    apartment_id = fields.String(required=True)
    community_id = fields.String(required=True)
    kinds = fields.List(fields.String(), required=True)
    removed = fields.Integer(required=True)


class _ThirdPartyIds(_EventData):
    installer_id = fields.String(required=True)
    community_id = fields.String(required=True)
    building_id = fields.String(allow_none=True)
    apartment_id = fields.String(allow_none=True)
    area = fields.String(required=True)
    kind = fields.String(required=True)


class ThirdPartyDeviceAddedSchema(_ThirdPartyIds):
    name = fields.String(required=True)
    brand = fields.String(allow_none=True)
    lock_id = fields.String(allow_none=True)
    linked_device_id = fields.String(allow_none=True)
    # A camera's address and login are devices' own: apps get them from devices' API.


class ThirdPartyDeviceEditedSchema(_ThirdPartyIds):
    changes = fields.Dict(required=True)


class ThirdPartyDeviceRemovedSchema(_ThirdPartyIds):
    pass


class CameraLoginChangedSchema(_EventData):
    """A camera's address or login changed (which, is devices' own)."""

    kind = fields.String(required=True)


class CredentialClaimedSchema(_EventData):
    """A PIN, card or tag taken in a community (which one is devices' own)."""

    kind = fields.String(required=True)
    apartment_id = fields.String(required=True)


class CommandQueuedSchema(_EventData):
    """A remote operation waits for its device; the stream id is the command id. Notify pushes
    it to the device (per MAC) until `deadline`."""

    device_id = fields.String(required=True)
    mac = fields.String(required=True)
    installer_id = fields.String(required=True)
    community_id = fields.String(required=True)
    kind = fields.String(required=True)
    params = fields.Dict(required=True)
    deadline = fields.String(required=True)


class _CommandMoved(_EventData):
    device_id = fields.String(required=True)
    at = fields.String(required=True)


class CommandSentSchema(_CommandMoved):
    pass


class CommandDeliveredSchema(_CommandMoved):
    pass


class CommandSucceededSchema(_CommandMoved):
    detail = fields.String(allow_none=True)


class CommandFailedSchema(_CommandMoved):
    detail = fields.String(allow_none=True)


class CommandExpiredSchema(_CommandMoved):
    pass


class AutopKeptSchema(_EventData):
    """The Autop commands a device keeps (applied at each of its provisionings)."""

    commands = fields.List(fields.String(), required=True)


EVENT_SCHEMAS: dict[str, type[Schema]] = {
    "MacRegistered": MacRegisteredSchema,
    "MacRegisteredAgain": MacRegisteredSchema,
    "MacReleased": MacReleasedSchema,
    "MacAssigned": MacAssignedSchema,
    "MacFreed": MacFreedSchema,
    "DeviceAdded": DeviceAddedSchema,
    "DeviceEdited": DeviceEditedSchema,
    "DeviceRemoved": DeviceRemovedSchema,
    "DeviceCameOnline": DeviceCameOnlineSchema,
    "DeviceWentOffline": DeviceWentOfflineSchema,
    "CredentialAdded": CredentialAddedSchema,
    "CredentialRemoved": CredentialRemovedSchema,
    "CredentialsWiped": CredentialsWipedSchema,
    "ThirdPartyDeviceAdded": ThirdPartyDeviceAddedSchema,
    "ThirdPartyDeviceEdited": ThirdPartyDeviceEditedSchema,
    "ThirdPartyDeviceRemoved": ThirdPartyDeviceRemovedSchema,
    "CameraLoginChanged": CameraLoginChangedSchema,
    "CredentialClaimed": CredentialClaimedSchema,
    "CommandQueued": CommandQueuedSchema,
    "CommandSent": CommandSentSchema,
    "CommandDelivered": CommandDeliveredSchema,
    "CommandSucceeded": CommandSucceededSchema,
    "CommandFailed": CommandFailedSchema,
    "CommandExpired": CommandExpiredSchema,
    "AutopKept": AutopKeptSchema,
}

