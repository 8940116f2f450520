"""Topology: communities, their buildings, and the apartments (APTs) with their residents.

Plain Python, no I/O. Rules from the installer guide (7.1.1) that are enforced here:

- Create Community, basic table: name required; address (country, state/province, city, post
  code, street) optional ("not mandatory" since 7.1.1); time zone; date format Y/M/D, M/D/Y or
  D/M/Y; 12- or 24-hour time (24 preselected); feature plan basic|premium (required); landline
  service, which "is a premium feature", so it can be on only with the premium plan.
- Create Community, advanced table, with the manual's defaults: video storage, community calls,
  permission of access control management, contact display order, PIN access mode (PIN
  preselected), pay by PM, expiration emails (end user + PM | only PM | off), renew emails,
  akubela smart home, scan indoor monitor QR code to register the app account (on "by default"),
  Dormakaba third-party integration.
- Basic plan: "at least one indoor monitor in every apartment you create", so the indoor monitor
  MAC is required when adding an APT, unless akubela smart home is on (the manual hides the device
  selection then).
- Add Building: name up to 128 characters (import template); ground floor and floor start may be
  left to "Configure On the Device" (None, the default).
- Add APT: number of 1-6 digits and '#', never starting with '#', unique in its building; floor
  -10..128 or G0/G1/G2; accessible floors from the same range or "All Floors"; web relay ID;
  contact preference group|sequence call (up to three sequence sets); call type codes 0-5 as the
  import template names them; SIP call or IP call (IP preselected); remark up to 255; resident
  first and last name required, at most 64 bytes each; email format; up to three landlines.
- Edit APT: a resident whose account has linked sites keeps email, mobile and country/region.
- Reset: removes email, mobile number, country/region and landlines (family members, logs,
  messages, PIN/face/NFC/BLE/QR belong to other services, which act on `ApartmentReset`); keeps
  the names, language, SIP/IP call, the indoor monitor and every other apartment setting.

Interpretations where the manual is silent:

- Building names are unique in a community ignoring case and surrounding spaces; community names
  are not checked for uniqueness (nothing in the manual asks for it).
- Deleting a community needs no precondition in the manual; so that no building or apartment is
  ever orphaned, `Community.delete()` is refused while buildings remain and the application
  deletes apartments and buildings first, in the same save. Deleting a building is refused while
  it holds apartments.
- Limits the manual does not give: community name 128, APT name 64, address parts 128 (post code
  32), device and relay names 64, email 254 (as accounts), mobile and landlines 1-20 digits
  (the country/region gives the calling code), web relay ID 0-50 (0: none), network group 1-99.
- Ground floor is one of G0/G1/G2 (the ground-floor labels the floor field knows); floor start is
  a floor number in -10..128.
- Country/region is an ISO 3166 alpha-2 code, language a BCP 47 tag ("en" by default), and a time
  zone an IANA name ("UTC" when none is given; the portal preselects the installer's own).
- A plan later switched to basic does not invalidate older apartments without a monitor, but an
  edit cannot remove the monitor MAC from an apartment of a basic community.

Uniqueness lives in the parent's stream (the community reserves building names, the building
reserves APT numbers), so two concurrent adds of the same number clash on the building's version
instead of both winning. A parent and its new child are saved together by the application.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from enum import IntEnum
from functools import cache
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import available_timezones

from eventsourcing.domain import event

from concierge.domain import Aggregate
from contracts.errors import Conflict, Invalid, NotFound
from contracts.fields import EMAIL_PATTERN
from contracts.topology import (
    ACCESS_CONTROL_PERMISSIONS,
    ADDRESS_PART_MAX,
    ADDRESS_PARTS,
    ALL_FLOORS,
    APARTMENT_DEFAULTS,
    APARTMENT_NAME_MAX,
    APARTMENT_NUMBER_HASH_MESSAGE,
    APARTMENT_NUMBER_MESSAGE,
    APARTMENT_NUMBER_REGEX,
    BUILDING_DEFAULTS,
    BUILDING_NAME_MAX,
    CALL_SEQUENCE_MAX,
    CALL_SEQUENCE_TARGETS,
    COMMUNITY_DEFAULTS,
    COMMUNITY_NAME_MAX,
    CONTACT_DISPLAY_ORDERS,
    CONTACT_PREFERENCES,
    COUNTRY_MESSAGE,
    COUNTRY_REGEX,
    DATE_FORMATS,
    DEVICE_NAME_MAX,
    EMAIL_MAX,
    EMAIL_MESSAGE,
    EXPIRATION_EMAIL_OPTIONS,
    FEATURE_PLANS,
    FLOOR_MAX,
    FLOOR_MESSAGE,
    FLOOR_MIN,
    GROUND_FLOORS,
    INDOOR_MONITOR_RELAYS_MAX,
    LANDLINES_MAX,
    LANGUAGE_REGEX,
    MAC_MESSAGE,
    MAC_REGEX,
    NETWORK_GROUP_MAX,
    PHONE_MESSAGE,
    PHONE_REGEX,
    PIN_ACCESS_MODES,
    POST_CODE_MAX,
    REMARK_MAX,
    RESET_CLEARS,
    RESIDENT_DEFAULTS,
    RESIDENT_NAME_MAX_BYTES,
    SIP_OR_IP_CALL,
    TIME_FORMATS,
    TIME_ZONE_MESSAGE,
    WEB_RELAY_ID_MAX,
)
from contracts.topology import (
    PHONE_MAX_DIGITS as PHONE_MAX_DIGITS,  # the domain's vocabulary, re-exported
)

# The vocabulary and limits above are the contract's (contracts/topology.py), defined there once;
# the patterns below are the domain's checks of the same rules.
APARTMENT_NUMBER_PATTERN = re.compile(APARTMENT_NUMBER_REGEX)
PHONE_PATTERN = re.compile(PHONE_REGEX)
COUNTRY_PATTERN = re.compile(COUNTRY_REGEX)  # checked upper-cased: [A-Z]{2}
LANGUAGE_PATTERN = re.compile(LANGUAGE_REGEX)
MAC_PATTERN = re.compile(MAC_REGEX)


class CallType(IntEnum):
    """Call type codes of the manual's import template; events carry the plain integer."""

    SMARTPLUS_AND_INDOOR_MONITORS = 0
    PHONE_AND_INDOOR_MONITORS = 1
    SMARTPLUS_AND_INDOOR_MONITORS_WITH_PHONE_BACKUP = 2
    INDOOR_MONITORS_WITH_SMARTPLUS_BACKUP = 3
    INDOOR_MONITORS_WITH_PHONE_BACKUP = 4
    INDOOR_MONITORS_WITH_SMARTPLUS_BACKUP_THEN_PHONE = 5


# "You cannot edit the mobile phone number, email ... and area code of the user accounts that
# have linked sites."
LINKED_SITES_LOCK = ("email", "mobile", "country")

REQUIRED = "Missing data for required field."

# --- field rules -----------------------------------------------------------------------------


class _Broken(Exception):
    """One field broke a rule; collected so the caller sees every bad field at once."""


Rule = Callable[[Any], Any]


def _text(max_chars: int, *, required: bool = False) -> Rule:
    """Trimmed text; empty optional text is stored as None."""

    def check(value: Any) -> str | None:
        if value is not None and not isinstance(value, str):
            raise _Broken("Not a valid string.")
        text = (value or "").strip()
        if not text:
            if required:
                raise _Broken("This field may not be blank.")
            return None
        if len(text) > max_chars:
            raise _Broken(f"Longer than {max_chars} characters.")
        return text

    return check


def _resident_name(value: Any) -> str:
    # The import template limits names to 64 *bytes*; accounts checks the same, so a name we
    # accept always makes a master account there.
    text = _text(RESIDENT_NAME_MAX_BYTES, required=True)(value)
    assert text is not None
    if len(text.encode("utf-8")) > RESIDENT_NAME_MAX_BYTES:
        raise _Broken(f"Longer than {RESIDENT_NAME_MAX_BYTES} bytes.")
    return text


def _choice(options: Iterable[str]) -> Rule:
    allowed = tuple(options)

    def check(value: Any) -> str:
        if value not in allowed:
            raise _Broken(f"Must be one of: {', '.join(allowed)}.")
        return str(value)

    return check


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Broken("Not a valid boolean.")
    return value


def _integer(low: int, high: int, *, nullable: bool = False) -> Rule:
    def check(value: Any) -> int | None:
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Broken("Not a valid integer.")
        if not low <= value <= high:
            raise _Broken(f"Must be from {low} to {high}.")
        return int(value)

    return check


@cache
def _time_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _time_zone(value: Any) -> str:
    if not isinstance(value, str) or value not in _time_zones():
        raise _Broken(TIME_ZONE_MESSAGE)
    return value




def _floor(value: Any) -> int | str:
    """A floor number -10..128 (numeric strings accepted) or one of the ground floors G0-G2."""
    if isinstance(value, bool):
        raise _Broken("Not a valid floor.")
    if isinstance(value, str):
        text = value.strip().upper()
        if text in GROUND_FLOORS:
            return text
        try:
            value = int(text)
        except ValueError:
            raise _Broken(FLOOR_MESSAGE) from None
    if not isinstance(value, int) or not FLOOR_MIN <= value <= FLOOR_MAX:
        raise _Broken(FLOOR_MESSAGE)
    return value


def _optional_floor(value: Any) -> int | str | None:
    if value is None or value == "":
        return None
    return _floor(value)


def _accessible_floors(value: Any) -> list[int | str]:
    if not isinstance(value, list):
        raise _Broken("Not a valid list.")
    floors: list[int | str] = []
    for item in value:
        is_all = isinstance(item, str) and item.strip().lower() == ALL_FLOORS
        floor = ALL_FLOORS if is_all else _floor(item)
        if floor not in floors:
            floors.append(floor)
    if ALL_FLOORS in floors and len(floors) > 1:
        raise _Broken("All Floors cannot be combined with single floors.")
    return floors


def _apartment_number(value: Any) -> str:
    if not isinstance(value, str):
        raise _Broken("Not a valid string.")
    number = value.strip()
    if number.startswith("#"):
        # Door phones in APT#+PIN mode cannot tell the number from the PIN (manual, Add APT).
        raise _Broken(APARTMENT_NUMBER_HASH_MESSAGE)
    if not APARTMENT_NUMBER_PATTERN.fullmatch(number):
        raise _Broken(APARTMENT_NUMBER_MESSAGE)
    return number


def _mac(value: Any) -> str | None:
    """12 hex digits, with or without ':'/'-' separators, as upper-case without separators."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not MAC_PATTERN.fullmatch(value.strip()):
        raise _Broken(MAC_MESSAGE)
    return re.sub("[:-]", "", value.strip()).upper()


def _email(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = value.strip() if isinstance(value, str) else None
    if not text or len(text) > EMAIL_MAX or not EMAIL_PATTERN.fullmatch(text):
        raise _Broken(EMAIL_MESSAGE)
    return text


def _phone(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not PHONE_PATTERN.fullmatch(value.strip()):
        raise _Broken(PHONE_MESSAGE)
    return value.strip()


def _landlines(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise _Broken("Not a valid list.")
    numbers = [number for number in (_phone(item) for item in value) if number]
    if len(numbers) > LANDLINES_MAX:
        raise _Broken(f"At most {LANDLINES_MAX} landline numbers.")
    return numbers


def _country(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not COUNTRY_PATTERN.fullmatch(value.strip().upper()):
        raise _Broken(COUNTRY_MESSAGE)
    return value.strip().upper()


def _language(value: Any) -> str:
    if not isinstance(value, str) or not LANGUAGE_PATTERN.fullmatch(value):
        raise _Broken("Not a language tag such as 'en' or 'zh-CN'.")
    return value


def _address(value: Any) -> dict[str, str | None]:
    """The given address parts only; the caller merges them over the current address."""
    if not isinstance(value, Mapping):
        raise _Broken("Not a valid mapping.")
    unknown = sorted(set(value) - set(ADDRESS_PARTS))
    if unknown:
        raise _Broken(f"Unknown address part: {', '.join(unknown)}.")
    parts: dict[str, str | None] = {}
    for part, given in value.items():
        limit = POST_CODE_MAX if part == "post_code" else ADDRESS_PART_MAX
        try:
            parts[part] = _text(limit)(given)
        except _Broken as broken:
            raise _Broken(f"{part}: {broken}") from None
    return parts


def _call_sequence(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise _Broken("Not a valid list.")
    if len(value) > CALL_SEQUENCE_MAX:
        raise _Broken(f"At most {CALL_SEQUENCE_MAX} sequence call sets.")
    targets = [_choice(CALL_SEQUENCE_TARGETS)(item) for item in value]
    if len(set(targets)) != len(targets):
        raise _Broken("Each target may appear once in the call sequence.")
    return targets


def _relay_names(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise _Broken("Not a valid list.")
    if len(value) > INDOOR_MONITOR_RELAYS_MAX:
        raise _Broken(f"At most {INDOOR_MONITOR_RELAYS_MAX} relays (Relay1/2).")
    return [name for name in (_text(DEVICE_NAME_MAX)(item) for item in value) if name]


def _collect(
    values: Mapping[str, Any], rules: Mapping[str, Rule], required: Iterable[str] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Normalised values and the errors of every bad, unknown or missing field."""
    clean: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    for name in required:
        if name not in values:
            errors[name] = [REQUIRED]
    for name, value in values.items():
        rule = rules.get(name)
        if rule is None:
            errors[name] = ["Unknown field."]
            continue
        try:
            clean[name] = rule(value)
        except _Broken as broken:
            errors[name] = [str(broken)]
    return clean, errors


def _as_uuid(value: Any, field: str) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise Invalid.field(field, "Not a valid id.") from None


def _copy(value: Any) -> Any:
    """Events and aggregates must not share a list or dict that one of them could change."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _changed(current: Mapping[str, Any], clean: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _copy(value) for name, value in clean.items() if current[name] != value}


# --- community -------------------------------------------------------------------------------

COMMUNITY_RULES: dict[str, Rule] = {
    "name": _text(COMMUNITY_NAME_MAX, required=True),
    "feature_plan": _choice(FEATURE_PLANS),
    "time_zone": _time_zone,
    "address": _address,
    "date_format": _choice(DATE_FORMATS),
    "time_format": _choice(TIME_FORMATS),
    "landline_service": _flag,
    "video_storage": _flag,
    "community_calls": _flag,
    "access_control_permission": _choice(ACCESS_CONTROL_PERMISSIONS),
    "contact_display_order": _choice(CONTACT_DISPLAY_ORDERS),
    "pin_access_mode": _choice(PIN_ACCESS_MODES),
    "pay_by_pm": _flag,
    "send_expiration_email": _choice(EXPIRATION_EMAIL_OPTIONS),
    "send_renew_email": _flag,
    "akubela_smart_home": _flag,
    "scan_indoor_monitor_qr_code": _flag,
    "dormakaba_integration": _flag,
}

EMPTY_ADDRESS: dict[str, str | None] = dict.fromkeys(ADDRESS_PARTS)



def _community_rules_across(settings: Mapping[str, Any]) -> dict[str, Any]:
    if settings["landline_service"] and settings["feature_plan"] != "premium":
        return {"landline_service": ["Landline service is a premium feature: choose premium."]}
    return {}


def _ground_floor(value: Any) -> str | None:
    if value is None:
        return None
    return _choice(GROUND_FLOORS)(value.strip().upper() if isinstance(value, str) else value)


def _building_key(name: str) -> str:
    return name.strip().casefold()


class Community(Aggregate):
    """A community site of one installer: its settings and the names of its buildings."""

    @event("CommunityCreated")
    def __init__(
        self,
        community_id: UUID,
        installer_id: UUID,
        name: str,
        feature_plan: str,
        time_zone: str,
        address: dict[str, str | None],
        date_format: str,
        time_format: str,
        landline_service: bool,
        video_storage: bool,
        community_calls: bool,
        access_control_permission: str,
        contact_display_order: str,
        pin_access_mode: str,
        pay_by_pm: bool,
        send_expiration_email: str,
        send_renew_email: bool,
        akubela_smart_home: bool,
        scan_indoor_monitor_qr_code: bool,
        dormakaba_integration: bool,
    ) -> None:
        self.installer_id = installer_id
        self.name = name
        self.feature_plan = feature_plan
        self.time_zone = time_zone
        self.address = dict(address)
        self.date_format = date_format
        self.time_format = time_format
        self.landline_service = landline_service
        self.video_storage = video_storage
        self.community_calls = community_calls
        self.access_control_permission = access_control_permission
        self.contact_display_order = contact_display_order
        self.pin_access_mode = pin_access_mode
        self.pay_by_pm = pay_by_pm
        self.send_expiration_email = send_expiration_email
        self.send_renew_email = send_renew_email
        self.akubela_smart_home = akubela_smart_home
        self.scan_indoor_monitor_qr_code = scan_indoor_monitor_qr_code
        self.dormakaba_integration = dormakaba_integration
        self.buildings: dict[UUID, str] = {}
        self.deleted = False

    @staticmethod
    def create_id(community_id: UUID) -> UUID:
        """The id is chosen by `create` (or the caller, for an idempotent retry)."""
        return community_id

    @classmethod
    def create(
        cls, *, installer_id: UUID | str, community_id: UUID | None = None, **fields: Any
    ) -> Community:
        """A new community; `fields` are CommunityCreate's, the manual's defaults fill the rest."""
        installer = _as_uuid(installer_id, "installer_id")
        clean, errors = _collect(fields, COMMUNITY_RULES, required=("name", "feature_plan"))
        if errors:
            raise Invalid.fields(errors)
        settings = _copy(COMMUNITY_DEFAULTS) | clean
        settings["address"] = EMPTY_ADDRESS | clean.get("address", {})
        errors = _community_rules_across(settings)
        if errors:
            raise Invalid.fields(errors)
        return cls(community_id=community_id or uuid4(), installer_id=installer, **settings)

    @property
    def requires_indoor_monitor(self) -> bool:
        """Basic plan: every new APT needs an indoor monitor, unless akubela hides the device."""
        return self.feature_plan == "basic" and not self.akubela_smart_home

    @property
    def building_count(self) -> int:
        return len(self.buildings)

    def settings(self) -> dict[str, Any]:
        """Every setting of the basic and advanced tables, as CommunityCreate names them."""
        return {name: _copy(getattr(self, name)) for name in COMMUNITY_RULES}

    def edit(self, **changes: Any) -> None:
        """Change any settings (CommunityEdit); records nothing when nothing changes."""
        self._check_live()
        clean, errors = _collect(changes, COMMUNITY_RULES)
        if errors:
            raise Invalid.fields(errors)
        if "address" in clean:
            clean["address"] = self.address | clean["address"]
        errors = _community_rules_across(self.settings() | clean)
        if errors:
            raise Invalid.fields(errors)
        changed = _changed(self.settings(), clean)
        if changed:
            self._edit(community_id=self.id, installer_id=self.installer_id, changes=changed)

    @event("CommunityEdited")
    def _edit(self, community_id: UUID, installer_id: UUID, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            setattr(self, name, _copy(value))

    def delete(self) -> None:
        """Remove the community; its buildings must have been deleted first (same save)."""
        self._check_live()
        if self.buildings:
            raise Conflict(f"Community still holds {len(self.buildings)} buildings.")
        self._delete(community_id=self.id, installer_id=self.installer_id, name=self.name)

    @event("CommunityDeleted")
    def _delete(self, community_id: UUID, installer_id: UUID, name: str) -> None:
        self.deleted = True

    def add_building(self, *, building_id: UUID | None = None, **fields: Any) -> Building:
        """A new building (BuildingCreate fields); the community reserves its name."""
        self._check_live()
        clean = Building.validate_new(fields)
        self._check_building_name_free(clean["name"], building_id=None)
        building = Building(
            building_id=building_id or uuid4(),
            community_id=self.id,
            installer_id=self.installer_id,
            **clean,
        )
        self._reserve_building_name(
            community_id=self.id, building_id=building.id, name=building.name
        )
        return building

    @event("BuildingNameReserved")
    def _reserve_building_name(self, community_id: UUID, building_id: UUID, name: str) -> None:
        self.buildings[building_id] = name

    @event("BuildingNameChanged")
    def _change_building_name(
        self, community_id: UUID, building_id: UUID, name: str, previous_name: str
    ) -> None:
        self.buildings[building_id] = name

    @event("BuildingNameReleased")
    def _release_building_name(self, community_id: UUID, building_id: UUID, name: str) -> None:
        self.buildings.pop(building_id, None)

    def _check_building_name_free(self, name: str, building_id: UUID | None) -> None:
        key = _building_key(name)
        for other_id, other_name in self.buildings.items():
            if other_id != building_id and _building_key(other_name) == key:
                message = f"The community already has a building named {other_name!r}."
                raise Conflict(message, {"name": [message]})

    def _check_live(self) -> None:
        if self.deleted:
            raise NotFound("The community has been deleted.")


# --- building --------------------------------------------------------------------------------

BUILDING_RULES: dict[str, Rule] = {
    "name": _text(BUILDING_NAME_MAX, required=True),
    "ground_floor": _ground_floor,
    "floor_start": _integer(FLOOR_MIN, FLOOR_MAX, nullable=True),
}


class Building(Aggregate):
    """A building of a community; it reserves the numbers of its apartments."""

    @event("BuildingAdded")
    def __init__(
        self,
        building_id: UUID,
        community_id: UUID,
        installer_id: UUID,
        name: str,
        ground_floor: str | None,
        floor_start: int | None,
    ) -> None:
        self.community_id = community_id
        self.installer_id = installer_id
        self.name = name
        self.ground_floor = ground_floor
        self.floor_start = floor_start
        self.apartments: dict[str, UUID] = {}
        self.deleted = False

    @staticmethod
    def create_id(building_id: UUID) -> UUID:
        """The id is chosen by `Community.add_building`."""
        return building_id

    @staticmethod
    def validate_new(fields: Mapping[str, Any]) -> dict[str, Any]:
        """BuildingCreate fields, normalised and defaulted, or Invalid naming each bad field."""
        clean, errors = _collect(fields, BUILDING_RULES, required=("name",))
        if errors:
            raise Invalid.fields(errors)
        return BUILDING_DEFAULTS | clean

    @property
    def apartment_count(self) -> int:
        return len(self.apartments)

    def settings(self) -> dict[str, Any]:
        """The building's fields, as BuildingCreate names them."""
        return {name: getattr(self, name) for name in BUILDING_RULES}

    def edit(self, community: Community, **changes: Any) -> None:
        """Rename the building or change its floors; a new name must be free in the community."""
        self._check_live()
        self._check_in(community)
        clean, errors = _collect(changes, BUILDING_RULES)
        if errors:
            raise Invalid.fields(errors)
        changed = _changed(self.settings(), clean)
        if "name" in changed:
            community._check_building_name_free(changed["name"], building_id=self.id)
        if not changed:
            return
        previous_name = self.name
        self._edit(
            building_id=self.id,
            community_id=self.community_id,
            installer_id=self.installer_id,
            changes=changed,
        )
        if "name" in changed:
            community._change_building_name(
                community_id=community.id,
                building_id=self.id,
                name=self.name,
                previous_name=previous_name,
            )

    @event("BuildingEdited")
    def _edit(
        self, building_id: UUID, community_id: UUID, installer_id: UUID, changes: dict[str, Any]
    ) -> None:
        for name, value in changes.items():
            setattr(self, name, value)

    def delete(self, community: Community) -> None:
        """Remove an empty building and free its name; refused while it holds apartments."""
        self._check_live()
        self._check_in(community)
        if self.apartments:
            raise Conflict(f"Building still holds {len(self.apartments)} apartments.")
        self._delete(
            building_id=self.id,
            community_id=self.community_id,
            installer_id=self.installer_id,
            name=self.name,
        )
        community._release_building_name(
            community_id=community.id, building_id=self.id, name=self.name
        )

    @event("BuildingDeleted")
    def _delete(self, building_id: UUID, community_id: UUID, installer_id: UUID, name: str) -> None:
        self.deleted = True

    def add_apartment(
        self, community: Community, *, apartment_id: UUID | None = None, **fields: Any
    ) -> Apartment:
        """A new APT and its resident (ApartmentCreate fields); the building reserves the number."""
        self._check_live()
        self._check_in(community)
        settings, resident = Apartment.validate_new(fields, community)
        self._check_number_free(settings["number"], apartment_id=None)
        apartment = Apartment(
            apartment_id=apartment_id or uuid4(),
            building_id=self.id,
            community_id=self.community_id,
            installer_id=self.installer_id,
            **settings,
        )
        apartment._add_resident(
            apartment_id=apartment.id,
            building_id=self.id,
            community_id=self.community_id,
            installer_id=self.installer_id,
            **resident,
        )
        self._reserve_apartment_number(
            building_id=self.id,
            community_id=self.community_id,
            apartment_id=apartment.id,
            number=apartment.number,
        )
        return apartment

    @event("ApartmentNumberReserved")
    def _reserve_apartment_number(
        self, building_id: UUID, community_id: UUID, apartment_id: UUID, number: str
    ) -> None:
        self.apartments[number] = apartment_id

    @event("ApartmentNumberChanged")
    def _change_apartment_number(
        self,
        building_id: UUID,
        community_id: UUID,
        apartment_id: UUID,
        number: str,
        previous_number: str,
    ) -> None:
        self.apartments.pop(previous_number, None)
        self.apartments[number] = apartment_id

    @event("ApartmentNumberReleased")
    def _release_apartment_number(
        self, building_id: UUID, community_id: UUID, apartment_id: UUID, number: str
    ) -> None:
        self.apartments.pop(number, None)

    def _check_number_free(self, number: str, apartment_id: UUID | None) -> None:
        holder = self.apartments.get(number)
        if holder is not None and holder != apartment_id:
            message = f"APT {number} already exists in this building."
            raise Conflict(message, {"number": [message]})

    def _check_in(self, community: Community) -> None:
        if community.id != self.community_id:
            raise NotFound("The building is not in this community.")

    def _check_live(self) -> None:
        if self.deleted:
            raise NotFound("The building has been deleted.")


# --- apartment and resident ------------------------------------------------------------------

APARTMENT_RULES: dict[str, Rule] = {
    "number": _apartment_number,
    "floor": _optional_floor,
    "name": _text(APARTMENT_NAME_MAX),
    "web_relay_id": _integer(0, WEB_RELAY_ID_MAX),
    "contact_preference": _choice(CONTACT_PREFERENCES),
    "call_sequence": _call_sequence,
    "call_type": _integer(min(CallType), max(CallType)),
    "sip_or_ip_call": _choice(SIP_OR_IP_CALL),
    "accessible_floors": _accessible_floors,
    "remark": _text(REMARK_MAX),
    "indoor_monitor_mac": _mac,
    "indoor_monitor_name": _text(DEVICE_NAME_MAX),
    "indoor_monitor_arming_function": _flag,
    "indoor_monitor_network_group": _integer(1, NETWORK_GROUP_MAX),
    "indoor_monitor_relays": _relay_names,
}

RESIDENT_RULES: dict[str, Rule] = {
    "first_name": _resident_name,
    "last_name": _resident_name,
    "email": _email,
    "language": _language,
    "country": _country,
    "mobile": _phone,
    "landlines": _landlines,
}


def _apartment_rules_across(
    settings: Mapping[str, Any], community: Community, *, mac_given: bool
) -> dict[str, Any]:
    errors: dict[str, Any] = {}
    sequence = settings["contact_preference"] == "sequence_call"
    if sequence and not settings["call_sequence"]:
        errors["call_sequence"] = ["Sequence Call needs at least one call set."]
    if not sequence and settings["call_sequence"]:
        errors["call_sequence"] = ["A call sequence applies only to Sequence Call."]
    if mac_given and community.requires_indoor_monitor and not settings["indoor_monitor_mac"]:
        errors["indoor_monitor_mac"] = [
            "The Basic feature plan requires an indoor monitor in every apartment."
        ]
    return errors


def _collect_resident(value: Any, required: Iterable[str]) -> tuple[dict[str, Any], Any]:
    if not isinstance(value, Mapping):
        return {}, ["Not a valid mapping."]
    return _collect(value, RESIDENT_RULES, required=required)


class Apartment(Aggregate):
    """An APT of a building and the resident living in it (the family master's details)."""

    @event("ApartmentAdded")
    def __init__(
        self,
        apartment_id: UUID,
        building_id: UUID,
        community_id: UUID,
        installer_id: UUID,
        number: str,
        floor: int | str | None,
        name: str | None,
        web_relay_id: int,
        contact_preference: str,
        call_sequence: list[str],
        call_type: int,
        sip_or_ip_call: str,
        accessible_floors: list[int | str],
        remark: str | None,
        indoor_monitor_mac: str | None,
        indoor_monitor_name: str | None,
        indoor_monitor_arming_function: bool,
        indoor_monitor_network_group: int,
        indoor_monitor_relays: list[str],
    ) -> None:
        self.building_id = building_id
        self.community_id = community_id
        self.installer_id = installer_id
        self.number = number
        self.floor = floor
        self.name = name
        self.web_relay_id = web_relay_id
        self.contact_preference = contact_preference
        self.call_sequence = list(call_sequence)
        self.call_type = call_type
        self.sip_or_ip_call = sip_or_ip_call
        self.accessible_floors = list(accessible_floors)
        self.remark = remark
        self.indoor_monitor_mac = indoor_monitor_mac
        self.indoor_monitor_name = indoor_monitor_name
        self.indoor_monitor_arming_function = indoor_monitor_arming_function
        self.indoor_monitor_network_group = indoor_monitor_network_group
        self.indoor_monitor_relays = list(indoor_monitor_relays)
        self.first_name: str | None = None
        self.last_name: str | None = None
        self.email: str | None = None
        self.language = RESIDENT_DEFAULTS["language"]
        self.country: str | None = None
        self.mobile: str | None = None
        self.landlines: list[str] = []
        self.deleted = False

    @staticmethod
    def create_id(apartment_id: UUID) -> UUID:
        """The id is chosen by `Building.add_apartment`."""
        return apartment_id

    @staticmethod
    def validate_new(
        fields: Mapping[str, Any], community: Community
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """ApartmentCreate fields as (apartment settings, resident), or Invalid naming the bad."""
        fields = dict(fields)
        resident_fields = fields.pop("resident", None)
        clean, errors = _collect(fields, APARTMENT_RULES, required=("number",))
        if resident_fields is None:
            errors["resident"] = [REQUIRED]
            resident: dict[str, Any] = {}
        else:
            resident, resident_errors = _collect_resident(
                resident_fields, required=("first_name", "last_name")
            )
            if resident_errors:
                errors["resident"] = resident_errors
        settings = _copy(APARTMENT_DEFAULTS) | clean
        if not errors:
            errors = _apartment_rules_across(settings, community, mac_given=True)
        if errors:
            raise Invalid.fields(errors)
        return settings, _copy(RESIDENT_DEFAULTS) | resident

    def settings(self) -> dict[str, Any]:
        """The apartment's own fields, as ApartmentCreate names them."""
        return {name: _copy(getattr(self, name)) for name in APARTMENT_RULES}

    def resident(self) -> dict[str, Any]:
        """The resident's fields, as ApartmentCreate's `resident` names them."""
        return {name: _copy(getattr(self, name)) for name in RESIDENT_RULES}

    def _ids(self) -> dict[str, UUID]:
        return {
            "apartment_id": self.id,
            "building_id": self.building_id,
            "community_id": self.community_id,
            "installer_id": self.installer_id,
        }

    @event("ResidentAdded")
    def _add_resident(
        self,
        apartment_id: UUID,
        building_id: UUID,
        community_id: UUID,
        installer_id: UUID,
        first_name: str,
        last_name: str,
        email: str | None,
        language: str,
        country: str | None,
        mobile: str | None,
        landlines: list[str],
    ) -> None:
        self.first_name = first_name
        self.last_name = last_name
        self.email = email
        self.language = language
        self.country = country
        self.mobile = mobile
        self.landlines = list(landlines)

    def edit(
        self,
        building: Building,
        community: Community,
        *,
        resident_has_linked_sites: bool = False,
        **changes: Any,
    ) -> None:
        """Edit APT (ApartmentEdit fields, `resident` nested); records only what changed.

        `resident_has_linked_sites` comes from accounts: such a resident's email, mobile and
        country/region cannot be edited.
        """
        self._check_live()
        self._check_in(building, community)
        resident_changes = changes.pop("resident", None)
        clean, errors = _collect(changes, APARTMENT_RULES)
        resident: dict[str, Any] = {}
        if resident_changes is not None:
            resident, resident_errors = _collect_resident(resident_changes, required=())
            if resident_errors:
                errors["resident"] = resident_errors
        if errors:
            raise Invalid.fields(errors)
        if clean.get("contact_preference") == "group_call" and "call_sequence" not in clean:
            clean["call_sequence"] = []
        errors = _apartment_rules_across(
            self.settings() | clean, community, mac_given="indoor_monitor_mac" in clean
        )
        if errors:
            raise Invalid.fields(errors)
        apartment_changed = _changed(self.settings(), clean)
        resident_changed = _changed(self.resident(), resident)
        locked = sorted(set(resident_changed) & set(LINKED_SITES_LOCK))
        if resident_has_linked_sites and locked:
            message = "Cannot be edited while the resident's account has linked sites."
            raise Conflict(message, {"resident": {name: [message] for name in locked}})
        previous_number = self.number
        if "number" in apartment_changed:
            building._check_number_free(apartment_changed["number"], apartment_id=self.id)
        if apartment_changed:
            self._edit(**self._ids(), changes=apartment_changed)
        if "number" in apartment_changed:
            building._change_apartment_number(
                building_id=building.id,
                community_id=self.community_id,
                apartment_id=self.id,
                number=self.number,
                previous_number=previous_number,
            )
        if resident_changed:
            self._edit_resident(**self._ids(), changes=resident_changed)

    @event("ApartmentEdited")
    def _edit(
        self,
        apartment_id: UUID,
        building_id: UUID,
        community_id: UUID,
        installer_id: UUID,
        changes: dict[str, Any],
    ) -> None:
        for name, value in changes.items():
            setattr(self, name, _copy(value))

    @event("ResidentEdited")
    def _edit_resident(
        self,
        apartment_id: UUID,
        building_id: UUID,
        community_id: UUID,
        installer_id: UUID,
        changes: dict[str, Any],
    ) -> None:
        for name, value in changes.items():
            setattr(self, name, _copy(value))

    def reset(self) -> None:
        """Empty the APT for the next tenant, as the manual's Reset lists.

        Here: the resident's email, mobile, country/region and landlines. Subscribers remove
        family members, logs, messages and access credentials, unregister the app and reset the
        login without sending an email. Names, language, SIP/IP call and the indoor monitor stay.
        """
        self._check_live()
        self._reset(**self._ids(), cleared_fields=list(RESET_CLEARS))

    @event("ApartmentReset")
    def _reset(
        self,
        apartment_id: UUID,
        building_id: UUID,
        community_id: UUID,
        installer_id: UUID,
        cleared_fields: list[str],
    ) -> None:
        for name in cleared_fields:
            setattr(self, name, [] if name == "landlines" else None)

    def delete(self, building: Building) -> None:
        """Delete APT; its number becomes free in the building."""
        self._check_live()
        if building.id != self.building_id:
            raise NotFound("The apartment is not in this building.")
        self._delete(**self._ids(), number=self.number)
        building._release_apartment_number(
            building_id=building.id,
            community_id=self.community_id,
            apartment_id=self.id,
            number=self.number,
        )

    @event("ApartmentDeleted")
    def _delete(
        self,
        apartment_id: UUID,
        building_id: UUID,
        community_id: UUID,
        installer_id: UUID,
        number: str,
    ) -> None:
        self.deleted = True

    def _check_in(self, building: Building, community: Community) -> None:
        if building.id != self.building_id or community.id != self.community_id:
            raise NotFound("The apartment is not in this building.")

    def _check_live(self) -> None:
        if self.deleted:
            raise NotFound("The apartment has been deleted.")
