"""Topology contracts: community, building and apartment (APT) commands, and every event's data.

The one home of every rule about the shape of what arrives: types, lengths, patterns, choices,
the manual's defaults, and the one normal form each value is stored in (text stripped, empty
optional text as None, MAC addresses as 12 upper-case hex digits). Topology's aggregates take
what these schemas loaded and check only the rules that need their state (services/topology/
domain.py, whose docstring gives the manual's rules and our interpretations).

Command schemas refuse unknown fields (a typo is an error, not a silent no-op); create schemas
fill in the manual's defaults, edit schemas are partial and fill in nothing. Event schemas ignore
unknown fields, as the envelope's version rule asks of subscribers. Command integers and booleans
are strict and command text refuses NUL (`contracts/fields.py`); events reuse the edit schemas,
which is harmless since a service only records what its commands loaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Any
from zoneinfo import available_timezones

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from contracts.fields import (
    EMAIL_PATTERN,
    NON_BLANK_PATTERN,
    Boolean,
    Integer,
    List,
    Text,
    documented,
    optional,
    padded,
    stripped,
    stripped_or_none,
)

__all__ = [
    "APARTMENT_FIELDS",
    "BUILDING_FIELDS",
    "COMMUNITY_FIELDS",
    "EVENT_SCHEMAS",
    "EVENT_VERSION",
    "RESIDENT_FIELDS",
    "Address",
    "AddressData",
    "ApartmentAddedSchema",
    "ApartmentChanges",
    "ApartmentCreate",
    "ApartmentCredentialsWipedSchema",
    "ApartmentDeletedSchema",
    "ApartmentEdit",
    "ApartmentEditedSchema",
    "ApartmentNumberChangedSchema",
    "ApartmentNumberReleasedSchema",
    "ApartmentNumberReservedSchema",
    "ApartmentResetSchema",
    "BuildingAddedSchema",
    "BuildingChanges",
    "BuildingCreate",
    "BuildingDeletedSchema",
    "BuildingEdit",
    "BuildingEditedSchema",
    "BuildingNameChangedSchema",
    "BuildingNameReleasedSchema",
    "BuildingNameReservedSchema",
    "CommunityChanges",
    "CommunityCreate",
    "CommunityCreatedSchema",
    "CommunityDeletedSchema",
    "CommunityEdit",
    "CommunityEditedSchema",
    "Floor",
    "ResidentAddedSchema",
    "ResidentChanges",
    "ResidentEditFields",
    "ResidentEditedSchema",
    "ResidentFields",
    "ValidationError",
]

EVENT_VERSION = 1

FEATURE_PLANS = ("basic", "premium")
DATE_FORMATS = ("year_month_day", "month_day_year", "day_month_year")
TIME_FORMATS = ("24_hour", "12_hour")
ACCESS_CONTROL_PERMISSIONS = ("public_and_private_area", "public_area_only")
CONTACT_DISPLAY_ORDERS = ("first_name_last_name", "last_name_first_name")
PIN_ACCESS_MODES = ("pin", "apt_pin")
EXPIRATION_EMAIL_OPTIONS = ("end_user_and_pm", "pm_only", "off")
ADDRESS_PARTS = ("country", "state_province", "city", "post_code", "street")
GROUND_FLOORS = ("G0", "G1", "G2")
FLOOR_MIN = -10
FLOOR_MAX = 128
ALL_FLOORS = "all"
CONTACT_PREFERENCES = ("group_call", "sequence_call")
CALL_SEQUENCE_TARGETS = ("master_and_family_accounts", "indoor_monitors", "landlines")
SIP_OR_IP_CALL = ("ip_call", "sip_call")
# Codes of the manual's import template, 0..5.
CALL_TYPES = {
    0: "smartplus_and_indoor_monitors",
    1: "phone_and_indoor_monitors",
    2: "smartplus_and_indoor_monitors_with_phone_backup",
    3: "indoor_monitors_with_smartplus_backup",
    4: "indoor_monitors_with_phone_backup",
    5: "indoor_monitors_with_smartplus_backup_then_phone",
}

COMMUNITY_NAME_MAX = 128
BUILDING_NAME_MAX = 128
APARTMENT_NAME_MAX = 64
ADDRESS_PART_MAX = 128
POST_CODE_MAX = 32
# The manual's later import template: "should not be more than 64 characters" (an earlier one
# said bytes, which no JSON Schema can state; accounts counts the same way).
RESIDENT_NAME_MAX = 64
REMARK_MAX = 255
EMAIL_MAX = 254
PHONE_MAX_DIGITS = 20
LANDLINES_MAX = 3
CALL_SEQUENCE_MAX = 3
DEVICE_NAME_MAX = 64
INDOOR_MONITOR_RELAYS_MAX = 2
WEB_RELAY_ID_MAX = 50
NETWORK_GROUP_MAX = 99

# Defaults of the manual's New Community forms: its preselected radio buttons (24-hour time,
# PIN mode), "enabled by default" for the QR code registration, the first option where a choice
# shows none, and off for the other switches.
COMMUNITY_DEFAULTS: dict[str, Any] = {
    "time_zone": "UTC",
    "address": dict.fromkeys(ADDRESS_PARTS),
    "date_format": "year_month_day",
    "time_format": "24_hour",
    "landline_service": False,
    "video_storage": False,
    "community_calls": False,
    "access_control_permission": "public_and_private_area",
    "contact_display_order": "first_name_last_name",
    "pin_access_mode": "pin",
    "pay_by_pm": False,
    "send_expiration_email": "end_user_and_pm",
    "send_renew_email": False,
    "akubela_smart_home": False,
    "scan_indoor_monitor_qr_code": True,
    "dormakaba_integration": False,
}
# None is the manual's "Configure On the Device", preselected in the Add Building form.
BUILDING_DEFAULTS: dict[str, Any] = {"ground_floor": None, "floor_start": None}
# The Add APT form's preselections: web relay 0, Group Call, "SmartPlus and indoor monitors"
# (code 0), IP call; the device form's "Network 1".
APARTMENT_DEFAULTS: dict[str, Any] = {
    "floor": None,
    "name": None,
    "web_relay_id": 0,
    "contact_preference": "group_call",
    "call_sequence": [],
    "call_type": 0,
    "sip_or_ip_call": "ip_call",
    "accessible_floors": [],
    "remark": None,
    "indoor_monitor_mac": None,
    "indoor_monitor_name": None,
    "indoor_monitor_arming_function": False,
    "indoor_monitor_network_group": 1,
    "indoor_monitor_relays": [],
}
RESIDENT_DEFAULTS: dict[str, Any] = {
    "email": None,
    "language": "en",
    "country": None,
    "mobile": None,
    "landlines": [],
}
# Every field of each command, as the create schemas and the aggregates name them.
COMMUNITY_FIELDS = ("name", "feature_plan", *COMMUNITY_DEFAULTS)
BUILDING_FIELDS = ("name", *BUILDING_DEFAULTS)
APARTMENT_FIELDS = ("number", *APARTMENT_DEFAULTS)
RESIDENT_FIELDS = ("first_name", "last_name", *RESIDENT_DEFAULTS)

# The keys the portal's lists sort by (prefix '-' to reverse); the Residents list sorts by APT,
# APT Name, Resident and Created Time (manual, User Management).
COMMUNITY_SORTS = ("name", "created_at")
BUILDING_SORTS = ("name", "created_at")
RESIDENT_SORTS = ("number", "name", "resident", "created_at")

# The manual's "Reset" list of removed data, as far as the apartment's own stream holds it.
RESET_CLEARS = ("email", "mobile", "country", "landlines")

# \Z rather than $: "$" would let a trailing newline through.
APARTMENT_NUMBER_REGEX = r"^[0-9][0-9#]{0,5}\Z"
EMAIL_REGEX = rf"^{EMAIL_PATTERN.pattern}\Z"
PHONE_REGEX = rf"^[0-9]{{1,{PHONE_MAX_DIGITS}}}\Z"
COUNTRY_REGEX = r"^[A-Za-z]{2}\Z"
LANGUAGE_REGEX = r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*\Z"
_HEX2 = "[0-9A-Fa-f]{2}"
MAC_REGEX = rf"^([0-9A-Fa-f]{{12}}|({_HEX2}:){{5}}{_HEX2}|({_HEX2}-){{5}}{_HEX2})\Z"
FLOOR_MESSAGE = f"Must be a floor from {FLOOR_MIN} to {FLOOR_MAX}, G0, G1 or G2."
# What each rule says when it is broken, here and in the domain alike.
TIME_ZONE_MESSAGE = "Not a valid IANA time zone name."
APARTMENT_NUMBER_HASH_MESSAGE = "An APT number must not start with '#'."
APARTMENT_NUMBER_MESSAGE = "An APT number is 1 to 6 characters of digits and '#'."
MAC_MESSAGE = "Not a valid MAC address (12 hex digits, optionally ':' or '-' separated)."
PHONE_MESSAGE = f"A phone number is 1 to {PHONE_MAX_DIGITS} digits."
COUNTRY_MESSAGE = "Not an ISO 3166 alpha-2 country/region code."
EMAIL_MESSAGE = "Not a valid email address."


# --- validators and fields -------------------------------------------------------------------


@cache
def _time_zones() -> frozenset[str]:
    return frozenset(available_timezones())


@documented(enum=sorted(available_timezones()))
def _time_zone(value: str) -> None:
    if value not in _time_zones():
        raise ValidationError(TIME_ZONE_MESSAGE)


def _optional_pattern(regex: str, message: str) -> Callable[[str], None]:
    """The pattern (around white space), or empty text, which is stored as None."""
    pattern = re.compile(regex)

    @documented(pattern=optional(regex))
    def check(value: str) -> None:
        if value and not pattern.match(value.strip()):
            raise ValidationError(message)

    return check


@documented(pattern=padded(APARTMENT_NUMBER_REGEX))
def _apartment_number(value: str) -> None:
    if value.strip().startswith("#"):
        # Door phones in APT#+PIN mode cannot tell such a number from the PIN.
        raise ValidationError(APARTMENT_NUMBER_HASH_MESSAGE)
    if not re.match(APARTMENT_NUMBER_REGEX, value.strip()):
        raise ValidationError(APARTMENT_NUMBER_MESSAGE)


@documented(uniqueItems=True)
def _unique(values: list[Any]) -> None:
    if len(set(values)) != len(values):
        raise ValidationError("Each item may appear once.")


@documented(**{"if": {"contains": {"const": ALL_FLOORS}}, "then": {"maxItems": 1}})
def _floors(values: list[int | str]) -> None:
    if ALL_FLOORS in values and len(values) > 1:
        raise ValidationError("All Floors cannot be combined with single floors.")


def _each_once(values: list[Any]) -> list[Any]:
    """The items in their order, each once (floor 3 and "3" are one floor)."""
    return list(dict.fromkeys(values))


def _without_empty(values: list[Any]) -> list[Any]:
    return [value for value in values if value is not None]


def _mac_normal(value: str) -> str | None:
    """12 upper-case hex digits without separators; None for no MAC."""
    return re.sub("[:-]", "", value.strip()).upper() or None


def _country_normal(value: str) -> str | None:
    return value.strip().upper() or None


class Floor(fields.Field):
    """A floor: an integer -10..128 (numeric text accepted) or a ground floor G0, G1, G2.

    With `allow_all`, also "all" (the manual's "All Floors" of accessible floors).
    """

    default_error_messages = {"invalid": FLOOR_MESSAGE}

    def __init__(self, *, allow_all: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.allow_all = allow_all

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int | str:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        if isinstance(value, str):
            text = value.strip().upper()
            if text in GROUND_FLOORS:
                return text
            if self.allow_all and text.lower() == ALL_FLOORS:
                return ALL_FLOORS
            try:
                value = int(text)
            except ValueError:
                raise self.make_error("invalid") from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 7.0 is the integer 7, as JSON Schema counts it
        if not isinstance(value, int) or not FLOOR_MIN <= value <= FLOOR_MAX:
            raise self.make_error("invalid")
        return value


def _text(max_chars: int, **kwargs: Any) -> Text:
    """Optional text, stripped; stored as None when nothing is left."""
    return Text(validate=validate.Length(max=max_chars), tidy=stripped_or_none, **kwargs)


def _choice(options: tuple[str, ...], **kwargs: Any) -> Text:
    return Text(validate=validate.OneOf(options), **kwargs)


def _name(max_chars: int, **kwargs: Any) -> Text:
    return Text(
        validate=[validate.Length(max=max_chars), _not_blank], allow_none=False, tidy=stripped,
        **kwargs,
    )


@documented(pattern=NON_BLANK_PATTERN)
def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("This field may not be blank.")


def _email(**kwargs: Any) -> Text:
    return Text(
        allow_none=True,
        validate=[
            validate.Length(max=EMAIL_MAX),
            _optional_pattern(EMAIL_REGEX, EMAIL_MESSAGE),
        ],
        tidy=stripped_or_none,
        **kwargs,
    )


def _phone(**kwargs: Any) -> Text:
    return Text(
        allow_none=True,
        validate=_optional_pattern(PHONE_REGEX, PHONE_MESSAGE),
        tidy=stripped_or_none,
        **kwargs,
    )


# The one phone and time zone rules, for the other contexts' contracts too (a sub-installer's
# phone, an installer's time zone).
phone_field = _phone
time_zone_rule = _time_zone


def _mac(**kwargs: Any) -> Text:
    return Text(
        allow_none=True,
        validate=_optional_pattern(MAC_REGEX, MAC_MESSAGE),
        tidy=_mac_normal,
        **kwargs,
    )


def _call_sequence(**kwargs: Any) -> List:
    """Up to three sequence call sets, each calling one kind of target."""
    return List(
        _choice(CALL_SEQUENCE_TARGETS),
        validate=[validate.Length(max=CALL_SEQUENCE_MAX), _unique],
        **kwargs,
    )


def _call_type(**kwargs: Any) -> Integer:
    return Integer(
        validate=validate.OneOf(tuple(CALL_TYPES)),
        metadata={"description": "; ".join(f"{k}={v}" for k, v in CALL_TYPES.items())},
        **kwargs,
    )


def _accessible_floors(**kwargs: Any) -> List:
    return List(Floor(allow_all=True), validate=_floors, tidy=_each_once, **kwargs)


def _network_group(**kwargs: Any) -> Integer:
    return Integer(validate=validate.Range(1, NETWORK_GROUP_MAX), **kwargs)


def _relays(**kwargs: Any) -> List:
    """Relay1/2 names of the indoor monitor (empty names are dropped once counted)."""
    return List(
        Text(validate=validate.Length(max=DEVICE_NAME_MAX), tidy=stripped_or_none),
        validate=validate.Length(max=INDOOR_MONITOR_RELAYS_MAX),
        tidy=_without_empty,
        **kwargs,
    )


def _landlines(**kwargs: Any) -> List:
    """Up to three landline numbers (empty ones are dropped once counted)."""
    return List(
        Text(validate=_optional_pattern(PHONE_REGEX, PHONE_MESSAGE), tidy=stripped_or_none),
        validate=validate.Length(max=LANDLINES_MAX, error="At most {max} landline numbers."),
        tidy=_without_empty,
        **kwargs,
    )


def _country(**kwargs: Any) -> Text:
    """An ISO 3166 alpha-2 code in any case, stored upper-case."""
    return Text(
        allow_none=True,
        validate=_optional_pattern(COUNTRY_REGEX, COUNTRY_MESSAGE),
        tidy=_country_normal,
        **kwargs,
    )


# --- commands: community ---------------------------------------------------------------------


class Address(Schema):
    """Community address; every part optional (SmartPlus 7.1.1). Used for the weather display."""

    country = _text(ADDRESS_PART_MAX, allow_none=True)
    state_province = _text(ADDRESS_PART_MAX, allow_none=True)
    city = _text(ADDRESS_PART_MAX, allow_none=True)
    post_code = _text(POST_CODE_MAX, allow_none=True)
    street = _text(ADDRESS_PART_MAX, allow_none=True)


# The rule in JSON Schema: landline service on, with a plan in the same payload, is premium.
LANDLINE_NEEDS_PREMIUM = {
    "if": {"required": ["landline_service", "feature_plan"],
           "properties": {"landline_service": {"const": True}}},
    "then": {"properties": {"feature_plan": {"const": "premium"}}},
}


def _landline_needs_premium(data: dict[str, Any]) -> None:
    if data.get("landline_service") and data.get("feature_plan") == "basic":
        raise ValidationError(
            "Landline service is a premium feature: choose premium.", "landline_service"
        )


class CommunityCreate(Schema):
    """New Community: the basic table (name .. landline service) and the advanced table."""

    name = _name(COMMUNITY_NAME_MAX, required=True)
    feature_plan = _choice(FEATURE_PLANS, required=True)
    time_zone = Text(validate=_time_zone, load_default=COMMUNITY_DEFAULTS["time_zone"])
    address = fields.Nested(Address, load_default=lambda: dict.fromkeys(ADDRESS_PARTS))
    date_format = _choice(DATE_FORMATS, load_default=COMMUNITY_DEFAULTS["date_format"])
    time_format = _choice(TIME_FORMATS, load_default=COMMUNITY_DEFAULTS["time_format"])
    landline_service = Boolean(load_default=False)
    video_storage = Boolean(load_default=False)
    community_calls = Boolean(load_default=False)
    access_control_permission = _choice(
        ACCESS_CONTROL_PERMISSIONS, load_default=COMMUNITY_DEFAULTS["access_control_permission"]
    )
    contact_display_order = _choice(
        CONTACT_DISPLAY_ORDERS, load_default=COMMUNITY_DEFAULTS["contact_display_order"]
    )
    pin_access_mode = _choice(PIN_ACCESS_MODES, load_default=COMMUNITY_DEFAULTS["pin_access_mode"])
    pay_by_pm = Boolean(load_default=False)
    send_expiration_email = _choice(
        EXPIRATION_EMAIL_OPTIONS, load_default=COMMUNITY_DEFAULTS["send_expiration_email"]
    )
    send_renew_email = Boolean(load_default=False)
    akubela_smart_home = Boolean(load_default=False)
    scan_indoor_monitor_qr_code = Boolean(load_default=True)
    dormakaba_integration = Boolean(load_default=False)

    @validates_schema
    @documented(**LANDLINE_NEEDS_PREMIUM)
    def _check_landline_service(self, data: dict[str, Any], **_: Any) -> None:
        _landline_needs_premium(data)

    @post_load
    def _whole_address(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        """Address parts not given are None; an edit's parts merge over the stored ones."""
        data["address"] = dict.fromkeys(ADDRESS_PARTS) | data["address"]
        return data


class CommunityEdit(Schema):
    """Edit Community: any subset of CommunityCreate; address parts merge over the stored ones."""

    name = _name(COMMUNITY_NAME_MAX)
    feature_plan = _choice(FEATURE_PLANS)
    time_zone = Text(validate=_time_zone)
    address = fields.Nested(Address)
    date_format = _choice(DATE_FORMATS)
    time_format = _choice(TIME_FORMATS)
    landline_service = Boolean()
    video_storage = Boolean()
    community_calls = Boolean()
    access_control_permission = _choice(ACCESS_CONTROL_PERMISSIONS)
    contact_display_order = _choice(CONTACT_DISPLAY_ORDERS)
    pin_access_mode = _choice(PIN_ACCESS_MODES)
    pay_by_pm = Boolean()
    send_expiration_email = _choice(EXPIRATION_EMAIL_OPTIONS)
    send_renew_email = Boolean()
    akubela_smart_home = Boolean()
    scan_indoor_monitor_qr_code = Boolean()
    dormakaba_integration = Boolean()

    state_rules = {"landline_service": "needs the premium plan, the stored one when the edit "
                                       "chooses none."}

    @validates_schema
    @documented(**LANDLINE_NEEDS_PREMIUM)
    def _check_landline_service(self, data: dict[str, Any], **_: Any) -> None:
        # Only when both are in the edit; the domain checks against the stored plan.
        _landline_needs_premium(data)


# --- commands: building ----------------------------------------------------------------------


class BuildingCreate(Schema):
    """Add Building. Ground floor and floor start: null is "Configure On the Device"."""

    name = _name(BUILDING_NAME_MAX, required=True)
    ground_floor = _choice(GROUND_FLOORS, allow_none=True, load_default=None)
    floor_start = Integer(
        allow_none=True, validate=validate.Range(FLOOR_MIN, FLOOR_MAX), load_default=None
    )


class BuildingEdit(Schema):
    """Rename a building or change its floors; any subset of BuildingCreate."""

    name = _name(BUILDING_NAME_MAX)
    ground_floor = _choice(GROUND_FLOORS, allow_none=True)
    floor_start = Integer(allow_none=True, validate=validate.Range(FLOOR_MIN, FLOOR_MAX))


# --- commands: apartment and resident --------------------------------------------------------


class ResidentFields(Schema):
    """The resident part of Add APT: first and last name required."""

    first_name = _name(RESIDENT_NAME_MAX, required=True)
    last_name = _name(RESIDENT_NAME_MAX, required=True)
    email = _email(load_default=None)
    language = Text(
        validate=validate.Regexp(LANGUAGE_REGEX, error="Not a language tag such as 'en'."),
        load_default=RESIDENT_DEFAULTS["language"],
    )
    country = _country(load_default=None)
    mobile = _phone(load_default=None)
    landlines = _landlines(load_default=list)


class ResidentEditFields(Schema):
    """The resident part of Edit APT: any subset of ResidentFields."""

    first_name = _name(RESIDENT_NAME_MAX)
    last_name = _name(RESIDENT_NAME_MAX)
    email = _email()
    language = Text(
        validate=validate.Regexp(LANGUAGE_REGEX, error="Not a language tag such as 'en'.")
    )
    country = _country()
    mobile = _phone()
    landlines = _landlines()


def _when(field: str, value: Any, then: dict[str, Any], *, also: str | None = None
          ) -> dict[str, Any]:
    """JSON Schema: when `field` is `value` (and `also` is present), the payload is `then`."""
    return {"if": {"required": [field, *([also] if also else [])],
                   "properties": {field: {"const": value}}}, "then": then}


def _has(field: str, rule: dict[str, Any]) -> dict[str, Any]:
    return {"required": [field], "properties": {field: rule}}


# A call sequence, in one payload: only with Sequence Call, and Sequence Call needs one. A new
# APT's preference is group_call unless it says otherwise; an edit's applies when both are sent.
CALL_SEQUENCE_ON_CREATE = {"allOf": [
    {"if": _has("call_sequence", {"minItems": 1}),
     "then": _has("contact_preference", {"const": "sequence_call"})},
    _when("contact_preference", "sequence_call", _has("call_sequence", {"minItems": 1})),
]}
CALL_SEQUENCE_ON_EDIT = {"allOf": [
    _when("contact_preference", "group_call", _has("call_sequence", {"maxItems": 0}),
          also="call_sequence"),
    _when("contact_preference", "sequence_call", _has("call_sequence", {"minItems": 1}),
          also="call_sequence"),
]}


MONITOR_RULE = ("required while the community is on the basic plan, unless akubela smart home "
                "is on; a MAC in the installer's MAC library that no other device uses (the "
                "monitor becomes a device of the APT).")


def _call_sequence_fits(data: dict[str, Any]) -> None:
    preference = data.get("contact_preference")
    sequence = data.get("call_sequence")
    if preference == "sequence_call" and sequence == []:
        raise ValidationError("Sequence Call needs at least one call set.", "call_sequence")
    if preference == "group_call" and sequence:
        raise ValidationError("A call sequence applies only to Sequence Call.", "call_sequence")


class ApartmentCreate(Schema):
    """Add APT: the apartment, its indoor monitor (required on the basic plan), the resident."""

    number = Text(required=True, validate=_apartment_number, tidy=stripped)
    floor = Floor(allow_none=True, load_default=None)
    name = _text(APARTMENT_NAME_MAX, allow_none=True, load_default=None)
    web_relay_id = Integer(validate=validate.Range(0, WEB_RELAY_ID_MAX), load_default=0)
    contact_preference = _choice(CONTACT_PREFERENCES, load_default="group_call")
    call_sequence = _call_sequence(load_default=list)
    call_type = _call_type(load_default=0)
    sip_or_ip_call = _choice(SIP_OR_IP_CALL, load_default="ip_call")
    accessible_floors = _accessible_floors(load_default=list)
    remark = _text(REMARK_MAX, allow_none=True, load_default=None)
    indoor_monitor_mac = _mac(load_default=None)
    indoor_monitor_name = _text(DEVICE_NAME_MAX, allow_none=True, load_default=None)
    indoor_monitor_arming_function = Boolean(load_default=False)
    indoor_monitor_network_group = _network_group(load_default=1)
    indoor_monitor_relays = _relays(load_default=list)
    resident = fields.Nested(ResidentFields, required=True)

    state_rules = {"indoor_monitor_mac": MONITOR_RULE}

    @validates_schema
    @documented(**CALL_SEQUENCE_ON_CREATE)
    def _check_call_sequence(self, data: dict[str, Any], **_: Any) -> None:
        _call_sequence_fits(data)


class _ApartmentFields(Schema):
    """The apartment's own fields, all optional and without defaults."""

    number = Text(validate=_apartment_number, tidy=stripped)
    floor = Floor(allow_none=True)
    name = _text(APARTMENT_NAME_MAX, allow_none=True)
    web_relay_id = Integer(validate=validate.Range(0, WEB_RELAY_ID_MAX))
    contact_preference = _choice(CONTACT_PREFERENCES)
    call_sequence = _call_sequence()
    call_type = _call_type()
    sip_or_ip_call = _choice(SIP_OR_IP_CALL)
    accessible_floors = _accessible_floors()
    remark = _text(REMARK_MAX, allow_none=True)
    indoor_monitor_mac = _mac()
    indoor_monitor_name = _text(DEVICE_NAME_MAX, allow_none=True)
    indoor_monitor_arming_function = Boolean()
    indoor_monitor_network_group = _network_group()
    indoor_monitor_relays = _relays()


class ApartmentEdit(_ApartmentFields):
    """Edit APT: any subset of ApartmentCreate, the resident's part nested and partial too.

    Choosing group_call clears the call sequence.
    """

    resident = fields.Nested(ResidentEditFields)

    state_rules = {
        "indoor_monitor_mac": MONITOR_RULE,
        "call_sequence": "fits the contact preference, the stored one when the edit sends "
                         "none, and the stored sequence when it sends Sequence Call alone.",
    }

    @validates_schema
    @documented(**CALL_SEQUENCE_ON_EDIT)
    def _check_call_sequence(self, data: dict[str, Any], **_: Any) -> None:
        _call_sequence_fits(data)


# --- event data ------------------------------------------------------------------------------


class _EventData(Schema):
    class Meta:
        unknown = EXCLUDE


class AddressData(Address, _EventData):
    """The full address as events carry it (every part present, None when not given)."""


class CommunityChanges(CommunityEdit, _EventData):
    """The settings an edit changed, each with its new value; address is the whole address."""

    address = fields.Nested(AddressData)


class BuildingChanges(BuildingEdit, _EventData):
    """The building fields an edit changed, each with its new value."""


class ApartmentChanges(_ApartmentFields, _EventData):
    """The apartment fields an edit changed, each with its new value."""


class ResidentChanges(ResidentEditFields, _EventData):
    """The resident fields an edit changed, each with its new value."""


class _CommunityIds(_EventData):
    community_id = fields.UUID(required=True)
    installer_id = fields.UUID(required=True)


class _BuildingIds(_CommunityIds):
    building_id = fields.UUID(required=True)


class _ApartmentIds(_BuildingIds):
    apartment_id = fields.UUID(required=True)


class CommunityCreatedSchema(_CommunityIds):
    """Every setting of both New Community tables, defaults filled in."""

    name = fields.String(required=True)
    feature_plan = fields.String(required=True, validate=validate.OneOf(FEATURE_PLANS))
    time_zone = fields.String(required=True)
    address = fields.Nested(AddressData, required=True)
    date_format = fields.String(required=True)
    time_format = fields.String(required=True)
    landline_service = fields.Boolean(required=True)
    video_storage = fields.Boolean(required=True)
    community_calls = fields.Boolean(required=True)
    access_control_permission = fields.String(required=True)
    contact_display_order = fields.String(required=True)
    pin_access_mode = fields.String(required=True)
    pay_by_pm = fields.Boolean(required=True)
    send_expiration_email = fields.String(required=True)
    send_renew_email = fields.Boolean(required=True)
    akubela_smart_home = fields.Boolean(required=True)
    scan_indoor_monitor_qr_code = fields.Boolean(required=True)
    dormakaba_integration = fields.Boolean(required=True)


class CommunityEditedSchema(_CommunityIds):
    changes = fields.Nested(CommunityChanges, required=True)


class CommunityDeletedSchema(_CommunityIds):
    name = fields.String(required=True)


class BuildingNameReservedSchema(_EventData):
    """On the community's stream: the name is taken in the community (uniqueness)."""

    community_id = fields.UUID(required=True)
    building_id = fields.UUID(required=True)
    name = fields.String(required=True)


class BuildingNameChangedSchema(BuildingNameReservedSchema):
    previous_name = fields.String(required=True)


class BuildingNameReleasedSchema(BuildingNameReservedSchema):
    """On the community's stream: the building was deleted, its name is free again."""


class BuildingAddedSchema(_BuildingIds):
    name = fields.String(required=True)
    ground_floor = fields.String(required=True, allow_none=True)
    floor_start = fields.Integer(required=True, allow_none=True)


class BuildingEditedSchema(_BuildingIds):
    changes = fields.Nested(BuildingChanges, required=True)


class BuildingDeletedSchema(_BuildingIds):
    name = fields.String(required=True)


class ApartmentNumberReservedSchema(_EventData):
    """On the building's stream: the APT number is taken in the building (uniqueness)."""

    building_id = fields.UUID(required=True)
    community_id = fields.UUID(required=True)
    apartment_id = fields.UUID(required=True)
    number = fields.String(required=True)


class ApartmentNumberChangedSchema(ApartmentNumberReservedSchema):
    previous_number = fields.String(required=True)


class ApartmentNumberReleasedSchema(ApartmentNumberReservedSchema):
    """On the building's stream: the APT was deleted, its number is free again."""


class ApartmentAddedSchema(_ApartmentIds):
    number = fields.String(required=True)
    floor = Floor(required=True, allow_none=True)
    name = fields.String(required=True, allow_none=True)
    web_relay_id = fields.Integer(required=True)
    contact_preference = fields.String(required=True)
    call_sequence = fields.List(fields.String(), required=True)
    call_type = fields.Integer(required=True)
    sip_or_ip_call = fields.String(required=True)
    accessible_floors = fields.List(Floor(allow_all=True), required=True)
    remark = fields.String(required=True, allow_none=True)
    indoor_monitor_mac = fields.String(required=True, allow_none=True)
    indoor_monitor_name = fields.String(required=True, allow_none=True)
    indoor_monitor_arming_function = fields.Boolean(required=True)
    indoor_monitor_network_group = fields.Integer(required=True)
    indoor_monitor_relays = fields.List(fields.String(), required=True)


class ResidentAddedSchema(_ApartmentIds):
    """The family master's details: accounts creates the master account, notify emails it.

    Personal fields are None when read after the tenancy ended (a reset or delete destroyed
    the tenant's key): a replay or a rebuild never brings them back."""

    first_name = fields.String(required=True, allow_none=True)
    last_name = fields.String(required=True, allow_none=True)
    email = fields.String(required=True, allow_none=True)
    language = fields.String(required=True)
    country = fields.String(required=True, allow_none=True)
    mobile = fields.String(required=True, allow_none=True)
    landlines = fields.List(fields.String(), required=True, allow_none=True)
    # Which tenant of the APT (each reset starts the next); added later, older events: 0.
    tenancy = fields.Integer(load_default=0)


class ApartmentEditedSchema(_ApartmentIds):
    changes = fields.Nested(ApartmentChanges, required=True)


class ResidentEditedSchema(_ApartmentIds):
    changes = fields.Nested(ResidentChanges, required=True)
    tenancy = fields.Integer(load_default=0)


class ApartmentResetSchema(_ApartmentIds):
    """Manual "Reset": subscribers remove family members, logs, messages and access credentials,
    unregister the app and reset the login *without* emailing the resident."""

    cleared_fields = fields.List(
        fields.String(validate=validate.OneOf(RESET_CLEARS)), required=True
    )
    # The next tenancy, and the names it keeps (manual: a reset keeps them); added later:
    # older resets carry 0 and None.
    tenancy = fields.Integer(load_default=0)
    first_name = fields.String(load_default=None, allow_none=True)
    last_name = fields.String(load_default=None, allow_none=True)


class ApartmentCredentialsWipedSchema(_ApartmentIds):
    """Devices wiped the APT's credentials for its reset (PIN, face, NFC, Bluetooth)."""

    kinds = fields.List(fields.String(), required=True)
    removed = fields.Integer(required=True)


class ApartmentDeletedSchema(_ApartmentIds):
    number = fields.String(required=True)
    tenancy = fields.Integer(load_default=0)  # the tenant whose key goes with it


EVENT_SCHEMAS: dict[str, type[Schema]] = {
    "CommunityCreated": CommunityCreatedSchema,
    "CommunityEdited": CommunityEditedSchema,
    "CommunityDeleted": CommunityDeletedSchema,
    "BuildingNameReserved": BuildingNameReservedSchema,
    "BuildingNameChanged": BuildingNameChangedSchema,
    "BuildingNameReleased": BuildingNameReleasedSchema,
    "BuildingAdded": BuildingAddedSchema,
    "BuildingEdited": BuildingEditedSchema,
    "BuildingDeleted": BuildingDeletedSchema,
    "ApartmentNumberReserved": ApartmentNumberReservedSchema,
    "ApartmentNumberChanged": ApartmentNumberChangedSchema,
    "ApartmentNumberReleased": ApartmentNumberReleasedSchema,
    "ApartmentAdded": ApartmentAddedSchema,
    "ResidentAdded": ResidentAddedSchema,
    "ApartmentEdited": ApartmentEditedSchema,
    "ResidentEdited": ResidentEditedSchema,
    "ApartmentReset": ApartmentResetSchema,
    "ApartmentCredentialsWiped": ApartmentCredentialsWipedSchema,
    "ApartmentDeleted": ApartmentDeletedSchema,
}
