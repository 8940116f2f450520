"""Topology: communities, their buildings, and the apartments (APTs) with their residents.

Plain Python, no I/O. The installer guide's (7.1.1) rules for these forms, and where each is
checked: the shape of a command (types, lengths, patterns, choices, defaults, normal forms) by
its contract schema in contracts/topology.py, once, before it reaches an aggregate; the rules that
need state here: a building name free in its community and an APT number free in its building,
the basic plan's indoor monitor, landline service and the call sequence against the stored
settings, the linked-sites lock, nothing done to what is deleted or in another parent.

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
  first and last name required, at most 64 characters each; email format; up to three landlines.
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

from collections.abc import Mapping
from enum import IntEnum
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.domain import event

from concierge.domain import Aggregate
from contracts.errors import Conflict, Invalid, NotFound
from contracts.topology import (
    APARTMENT_FIELDS,
    BUILDING_FIELDS,
    CALL_TYPES,
    COMMUNITY_FIELDS,
    RESET_CLEARS,
    RESIDENT_FIELDS,
)

# Call type codes of the manual's import template; events carry the plain integer.
CallType = IntEnum("CallType", {name.upper(): code for code, name in CALL_TYPES.items()})

# "You cannot edit the mobile phone number, email ... and area code of the user accounts that
# have linked sites."
LINKED_SITES_LOCK = ("email", "mobile", "country")


def _as_uuid(value: Any, field: str) -> UUID:
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


def _landline_service_fits(settings: Mapping[str, Any]) -> None:
    """The rule across an edit and the stored settings (the contract checks one payload)."""
    if settings["landline_service"] and settings["feature_plan"] != "premium":
        raise Invalid.fields(
            {"landline_service": ["Landline service is a premium feature: choose premium."]})


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
        cls, *, installer_id: UUID | str, community_id: UUID | None = None, **settings: Any
    ) -> Community:
        """A new community; `settings` as CommunityCreate loads them (defaults filled in)."""
        installer = _as_uuid(installer_id, "installer_id")
        return cls(community_id=community_id or uuid4(), installer_id=installer,
                   **_copy(settings))

    @property
    def requires_indoor_monitor(self) -> bool:
        """Basic plan: every new APT needs an indoor monitor, unless akubela hides the device."""
        return self.feature_plan == "basic" and not self.akubela_smart_home

    @property
    def building_count(self) -> int:
        return len(self.buildings)

    def settings(self) -> dict[str, Any]:
        """Every setting of the basic and advanced tables, as CommunityCreate names them."""
        return {name: _copy(getattr(self, name)) for name in COMMUNITY_FIELDS}

    def edit(self, **changes: Any) -> None:
        """Change any settings (as CommunityEdit loads them); records nothing when nothing
        changes. Address parts merge over the stored ones."""
        self._check_live()
        if "address" in changes:
            changes["address"] = self.address | changes["address"]
        _landline_service_fits(self.settings() | changes)
        changed = _changed(self.settings(), changes)
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
        """A new building (as BuildingCreate loads it); the community reserves its name."""
        self._check_live()
        self._check_building_name_free(fields["name"], building_id=None)
        building = Building(
            building_id=building_id or uuid4(),
            community_id=self.id,
            installer_id=self.installer_id,
            **fields,
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

    @property
    def apartment_count(self) -> int:
        return len(self.apartments)

    def settings(self) -> dict[str, Any]:
        """The building's fields, as BuildingCreate names them."""
        return {name: getattr(self, name) for name in BUILDING_FIELDS}

    def edit(self, community: Community, **changes: Any) -> None:
        """Rename the building or change its floors; a new name must be free in the community."""
        self._check_live()
        self._check_in(community)
        changed = _changed(self.settings(), changes)
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
        self.check_new_apartment(community, **fields)
        settings = _copy(fields)
        resident = settings.pop("resident")
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

    def check_new_apartment(self, community: Community, **fields: Any) -> None:
        """What `add_apartment` checks before it records anything: asked first too when
        another context must keep something for the APT (its indoor monitor's MAC)."""
        self._check_live()
        self._check_in(community)
        errors = _monitor_missing(fields, community)
        if errors:
            raise Invalid.fields(errors)
        self._check_number_free(fields["number"], apartment_id=None)

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

def _monitor_missing(settings: Mapping[str, Any], community: Community) -> dict[str, Any]:
    if community.requires_indoor_monitor and not settings["indoor_monitor_mac"]:
        return {"indoor_monitor_mac": [
            "The Basic feature plan requires an indoor monitor in every apartment."]}
    return {}


def _call_sequence_misfits(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The rule across an edit and the stored APT (the contract checks one payload)."""
    sequence = settings["contact_preference"] == "sequence_call"
    if sequence and not settings["call_sequence"]:
        return {"call_sequence": ["Sequence Call needs at least one call set."]}
    if not sequence and settings["call_sequence"]:
        return {"call_sequence": ["A call sequence applies only to Sequence Call."]}
    return {}


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
        self.deleted = False  # the resident's fields follow in ResidentAdded, in the same save
        # Which tenant lives here: each reset starts the next. Each tenant's personal fields
        # are sealed with a key of its own, destroyed by the reset or delete that ends it.
        self.tenancy = 0

    @staticmethod
    def create_id(apartment_id: UUID) -> UUID:
        """The id is chosen by `Building.add_apartment`."""
        return apartment_id

    def settings(self) -> dict[str, Any]:
        """The apartment's own fields, as ApartmentCreate names them."""
        return {name: _copy(getattr(self, name)) for name in APARTMENT_FIELDS}

    def resident(self) -> dict[str, Any]:
        """The resident's fields, as ApartmentCreate's `resident` names them."""
        return {name: _copy(getattr(self, name)) for name in RESIDENT_FIELDS}

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
        tenancy: int = 0,
    ) -> None:
        self.first_name = first_name
        self.last_name = last_name
        self.email = email
        self.language = language
        self.country = country
        self.mobile = mobile
        self.landlines = list(landlines or [])  # None: a tenant whose key was destroyed

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
        resident = changes.pop("resident", {})
        if changes.get("contact_preference") == "group_call" and "call_sequence" not in changes:
            changes["call_sequence"] = []
        settings = self.settings() | changes
        errors = _call_sequence_misfits(settings)
        if "indoor_monitor_mac" in changes:
            # An older APT of a community later switched to basic keeps its missing monitor.
            errors |= _monitor_missing(settings, community)
        if errors:
            raise Invalid.fields(errors)
        apartment_changed = _changed(self.settings(), changes)
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
            self._edit_resident(**self._ids(), changes=resident_changed,
                                tenancy=self.tenancy)

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
        tenancy: int = 0,
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
        # The names stay (manual); they are recorded again for the next tenancy, whose key
        # outlives the previous tenant's, destroyed with this reset.
        self._reset(**self._ids(), cleared_fields=list(RESET_CLEARS),
                    tenancy=self.tenancy + 1, first_name=self.first_name,
                    last_name=self.last_name)

    # `tenancy` and the names came later: older resets replay with their defaults.
    @event("ApartmentReset")
    def _reset(
        self,
        apartment_id: UUID,
        building_id: UUID,
        community_id: UUID,
        installer_id: UUID,
        cleared_fields: list[str],
        tenancy: int = 0,
        first_name: str | None = None,
        last_name: str | None = None,
    ) -> None:
        for name in cleared_fields:
            setattr(self, name, [] if name == "landlines" else None)
        if tenancy:
            self.tenancy = tenancy
            self.first_name = first_name
            self.last_name = last_name

    def note_credentials_wiped(self, kinds: list[str], removed: int) -> None:
        """Devices wiped the APT's access credentials for its reset: the APT's history says
        so beside the reset itself."""
        if self.deleted:
            return
        self._credentials_wiped(**self._ids(), kinds=list(kinds), removed=removed)

    @event("ApartmentCredentialsWiped")
    def _credentials_wiped(self, apartment_id: UUID, building_id: UUID, community_id: UUID,
                           installer_id: UUID, kinds: list[str], removed: int) -> None:
        pass

    def delete(self, building: Building) -> None:
        """Delete APT; its number becomes free in the building."""
        self._check_live()
        if building.id != self.building_id:
            raise NotFound("The apartment is not in this building.")
        self._delete(**self._ids(), number=self.number, tenancy=self.tenancy)
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
        tenancy: int = 0,
    ) -> None:
        self.deleted = True

    def _check_in(self, building: Building, community: Community) -> None:
        if building.id != self.building_id or community.id != self.community_id:
            raise NotFound("The apartment is not in this building.")

    def _check_live(self) -> None:
        if self.deleted:
            raise NotFound("The apartment has been deleted.")
