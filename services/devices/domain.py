"""Devices' domain: the MAC library, intercom devices, and what devices knows of the sites.

Rules (manual: "MAC Library", "Device Management", "Add Intercom Devices"):
- A distributor registers MACs to one of its installers. A MAC is one aggregate whose id is
  derived from the MAC itself, so the store refuses a second registration of it by anyone; a
  MAC another installer holds is "taken", the same installer's is a "duplicate".
- A device is added only with a MAC in its installer's library and used by no other device: the
  device and its MAC are saved in one transaction (the MAC records which device uses it), so two
  devices racing for one MAC cannot both win. The MAC is freed when the device is removed, and
  a MAC in use cannot be removed from the library (409) until then.
- Each device gets a SIP number from the platform, unique: the device's id is derived from the
  number, so the store refuses a second device with it (a clash is drawn again).
- Devices are installed in a community's public area, a building's public area or an APT, of
  the caller's own sites. Devices learns the sites from topology's events (`KnownCommunity`,
  `KnownApartment`); a community public device serves all buildings or a chosen set of them.
- Which types an area takes (`contracts.devices.AREA_TYPES`): an APT holds its single-tenant
  door phone, indoor monitor or access control; public areas the shared door phones, monitors,
  guard phones and access controls.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate, event

from contracts.devices import (
    ALL_BUILDINGS,
    AREA_TYPES,
    COMMUNITY_UNIQUE,
    CREDENTIALS_PER_APARTMENT,
    DEVICE_TYPES,
    FINAL_STATES,
    autop_lines,
    type_rules,
)
from contracts.errors import Conflict, Invalid, NotFound

NAMESPACE = UUID("6d1c8a2e-5b7f-4c1d-9e0a-3f2b7c4d5e60")
# How long an APT's reservation of its indoor monitor's MAC holds before topology records the
# APT: a reservation whose APT never came (its creation failed after) frees the MAC after it.
RESERVATION = timedelta(minutes=10)


def _same(a: Any, b: Any) -> bool:
    return str(a) == str(b)


class Mac(Aggregate):
    """A device MAC in an installer's library."""

    @staticmethod
    def id_for(mac: str) -> UUID:
        return uuid5(NAMESPACE, f"mac:{mac}")

    @staticmethod
    def create_id(mac: str, installer_id: str, distributor_id: str | None) -> UUID:
        return Mac.id_for(mac)

    @event("MacRegistered")
    def __init__(self, mac: str, installer_id: str, distributor_id: str | None) -> None:
        self.mac = mac
        self.installer_id = installer_id
        self.distributor_id = distributor_id
        self.device_id: str | None = None
        self.released = False
        self.registered_at = self.created_on
        self.reserved_for: str | None = None  # an APT about to be added with this monitor
        self.reserved_until: str | None = None

    def outcome_for(self, installer_id: str) -> str:
        """What registering this MAC again to `installer_id` is: a duplicate of the same
        installer's entry, or taken by another installer."""
        return "duplicate" if _same(self.installer_id, installer_id) else "taken"

    def register_again(self, installer_id: str, distributor_id: str | None) -> None:
        """A released MAC can be registered once more, to any installer."""
        if not self.released:
            raise Conflict("This MAC is already registered.", {"mac": [self._taken_message(
                installer_id)]})
        self._registered_again(mac=self.mac, installer_id=installer_id,
                               distributor_id=distributor_id)

    @event("MacRegisteredAgain")
    def _registered_again(self, mac: str, installer_id: str,
                          distributor_id: str | None) -> None:
        self.installer_id = installer_id
        self.distributor_id = distributor_id
        self.released = False
        self.device_id = None
        self.registered_at = self.modified_on

    def _taken_message(self, installer_id: str) -> str:
        if self.outcome_for(installer_id) == "duplicate":
            return "This MAC is already in the installer's MAC library."
        return "This MAC is registered to another installer."

    def owned_by(self, installer_id: str) -> bool:
        return not self.released and _same(self.installer_id, installer_id)

    def _check_free(self, installer_id: str, apartment_id: str | None, now: datetime) -> None:
        if not self.owned_by(installer_id):
            raise Invalid.field("mac", "This MAC is not in your MAC library.")
        if self.device_id is not None:
            raise Conflict("Another device uses this MAC.",
                           {"mac": ["Another device uses this MAC."]})
        if (self.reserved_for is not None and self.reserved_for != apartment_id
                and self.reserved_until is not None
                and datetime.fromisoformat(self.reserved_until) > now):
            raise Conflict("This MAC is kept for an APT being added.",
                           {"mac": ["This MAC is kept for an APT being added."]})

    def reserve(self, apartment_id: str, installer_id: str, now: datetime) -> None:
        """Kept for the indoor monitor of an APT that topology is about to record (its MAC is
        checked before the APT is, so an APT is never recorded with a MAC it cannot have)."""
        self._check_free(installer_id, apartment_id, now)
        self._reserved(mac=self.mac, apartment_id=apartment_id,
                       until=(now + RESERVATION).isoformat())

    @event("MacReserved")
    def _reserved(self, mac: str, apartment_id: str, until: str) -> None:
        self.reserved_for = apartment_id
        self.reserved_until = until

    def assign(self, device_id: str, installer_id: str, now: datetime,
               apartment_id: str | None = None) -> None:
        """Used by a new device: only the owner's, only when no other device uses it, nor an
        APT other than the device's keeps it."""
        self._check_free(installer_id, apartment_id, now)
        self._assigned(mac=self.mac, device_id=device_id)

    @event("MacAssigned")
    def _assigned(self, mac: str, device_id: str) -> None:
        self.device_id = device_id
        self.reserved_for = self.reserved_until = None

    def free(self, device_id: str) -> None:
        if self.device_id == device_id:
            self._freed(mac=self.mac, device_id=device_id)

    @event("MacFreed")
    def _freed(self, mac: str, device_id: str) -> None:
        self.device_id = None

    def release(self, installer_id: str) -> None:
        """Removed from the library; refused while a device uses it."""
        if not self.owned_by(installer_id):
            raise NotFound("MAC not found.")
        if self.device_id is not None:
            raise Conflict("A device uses this MAC: delete the device first.",
                           {"mac": ["A device uses this MAC: delete the device first."]})
        self._released(mac=self.mac, installer_id=self.installer_id)

    @event("MacReleased")
    def _released(self, mac: str, installer_id: str) -> None:
        self.released = True


class KnownInstaller(Aggregate):
    """An installer account as accounts announced it: which distributor created it."""

    @staticmethod
    def id_for(installer_id: str) -> UUID:
        return uuid5(NAMESPACE, f"installer:{installer_id}")

    @staticmethod
    def create_id(installer_id: str, distributor_id: str | None) -> UUID:
        return KnownInstaller.id_for(installer_id)

    @event("InstallerKnown")
    def __init__(self, installer_id: str, distributor_id: str | None) -> None:
        self.installer_id = installer_id
        self.distributor_id = distributor_id


class KnownCommunity(Aggregate):
    """A community as topology announced it, with its buildings: what a device's area is
    checked against."""

    @staticmethod
    def id_for(community_id: str) -> UUID:
        return uuid5(NAMESPACE, f"community:{community_id}")

    @staticmethod
    def create_id(community_id: str, installer_id: str, name: str) -> UUID:
        return KnownCommunity.id_for(community_id)

    @event("CommunityKnown")
    def __init__(self, community_id: str, installer_id: str, name: str) -> None:
        self.community_id = community_id
        self.installer_id = installer_id
        self.name = name
        self.buildings: dict[str, str] = {}  # building id -> name
        self.deleted = False
        # Devices in its public areas: device id -> its building (None: the community's own).
        self.public_devices: dict[str, str | None] = {}

    @event("PublicDeviceInstalled")
    def public_device_installed(self, device_id: str, building_id: str | None) -> None:
        self.public_devices[device_id] = building_id

    @event("PublicDeviceRemoved")
    def public_device_removed(self, device_id: str) -> None:
        self.public_devices.pop(device_id, None)

    def devices_of(self, building_id: str | None = None) -> list[str]:
        """The public devices of a building's area, or of every area (None)."""
        return [d for d, b in self.public_devices.items()
                if building_id is None or b == building_id]

    @event("BuildingKnown")
    def know_building(self, building_id: str, name: str) -> None:
        self.buildings[building_id] = name

    @event("BuildingForgotten")
    def forget_building(self, building_id: str) -> None:
        self.buildings.pop(building_id, None)

    @event("CommunityForgotten")
    def forget(self) -> None:
        self.deleted = True

    def belongs_to(self, installer_id: str) -> bool:
        return not self.deleted and _same(self.installer_id, installer_id)


class KnownApartment(Aggregate):
    """An APT as topology announced it."""

    @staticmethod
    def id_for(apartment_id: str) -> UUID:
        return uuid5(NAMESPACE, f"apartment:{apartment_id}")

    @staticmethod
    def create_id(apartment_id: str, building_id: str, community_id: str,
                  installer_id: str) -> UUID:
        return KnownApartment.id_for(apartment_id)

    @event("ApartmentKnown")
    def __init__(self, apartment_id: str, building_id: str, community_id: str,
                 installer_id: str) -> None:
        self.apartment_id = apartment_id
        self.building_id = building_id
        self.community_id = community_id
        self.installer_id = installer_id
        self.deleted = False
        self.devices: list[str] = []  # the devices installed in the APT
        self.monitor_id: str | None = None  # the one its indoor monitor MAC made
        # Its residents' credentials: id -> {kind, value, holder, added_at}.
        self.credentials: dict[str, dict[str, Any]] = {}

    @event("ApartmentForgotten")
    def forget(self) -> None:
        self.deleted = True

    @event("ApartmentDeviceInstalled")
    def device_installed(self, device_id: str, monitor: bool) -> None:
        self.devices.append(device_id)
        if monitor:
            self.monitor_id = device_id

    @event("ApartmentDeviceRemoved")
    def device_removed(self, device_id: str) -> None:
        if device_id in self.devices:
            self.devices.remove(device_id)
        if self.monitor_id == device_id:
            self.monitor_id = None

    def add_credential(self, credential_id: str, kind: str, value: str,
                       holder: str | None) -> None:
        """A resident's PIN, card, face, tag or phone; unique in the APT (and, for PINs, cards
        and tags, in the community: `CredentialClaim`)."""
        if self.deleted:
            raise NotFound("APT not found.")
        if any(c["kind"] == kind and c["value"] == value for c in self.credentials.values()):
            raise Conflict("This APT already has this credential.",
                           {"value": ["This APT already has this credential."]})
        if len(self.credentials) >= CREDENTIALS_PER_APARTMENT:
            raise Invalid.field("kind", f"An APT holds at most {CREDENTIALS_PER_APARTMENT} "
                                        "credentials.")
        self._credential_added(apartment_id=self.apartment_id, community_id=self.community_id,
                               credential_id=credential_id, kind=kind, value=value,
                               holder=holder)

    @event("CredentialAdded")
    def _credential_added(self, apartment_id: str, community_id: str, credential_id: str,
                          kind: str, value: str, holder: str | None) -> None:
        self.credentials[credential_id] = {"kind": kind, "value": value, "holder": holder,
                                           "added_at": self.modified_on.isoformat()}

    def remove_credential(self, credential_id: str) -> dict[str, Any]:
        found = self.credentials.get(credential_id)
        if found is None:
            raise NotFound("Credential not found.")
        self._credential_removed(apartment_id=self.apartment_id, credential_id=credential_id)
        return found

    @event("CredentialRemoved")
    def _credential_removed(self, apartment_id: str, credential_id: str) -> None:
        self.credentials.pop(credential_id, None)

    def wipe(self, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
        """An APT's reset: its credentials of these kinds go (recorded even when none were
        there, so the history says the reset wiped them); the ones removed."""
        removed = [c for c in self.credentials.values() if c["kind"] in kinds]
        self._wiped(apartment_id=self.apartment_id, community_id=self.community_id,
                    kinds=list(kinds), removed=len(removed))
        return removed

    @event("CredentialsWiped")
    def _wiped(self, apartment_id: str, community_id: str, kinds: list[str],
               removed: int) -> None:
        self.credentials = {i: c for i, c in self.credentials.items() if c["kind"] not in kinds}


class CredentialClaim(Aggregate):
    """A PIN, RF card or NFC tag taken in a community: the store refuses a second claim of the
    same one, so two APTs of a community never open doors with the same PIN."""

    @staticmethod
    def id_for(community_id: str, kind: str, value: str) -> UUID:
        return uuid5(NAMESPACE, f"credential:{community_id}:{kind}:{value}")

    @staticmethod
    def create_id(community_id: str, kind: str, value: str, apartment_id: str) -> UUID:
        return CredentialClaim.id_for(community_id, kind, value)

    @staticmethod
    def needed(kind: str) -> bool:
        return kind in COMMUNITY_UNIQUE

    @event("CredentialClaimed")
    def __init__(self, community_id: str, kind: str, value: str, apartment_id: str) -> None:
        self.apartment_id: str | None = apartment_id

    def claim_again(self, apartment_id: str) -> None:
        if self.apartment_id is not None:
            message = "Another APT of this community has this credential."
            raise Conflict(message, {"value": [message]})
        self._claimed_again(apartment_id=apartment_id)

    @event("CredentialClaimedAgain")
    def _claimed_again(self, apartment_id: str) -> None:
        self.apartment_id = apartment_id

    @event("CredentialFreed")
    def free(self) -> None:
        self.apartment_id = None


class Device(Aggregate):
    """An intercom device installed in an area, with its settings and relays."""

    @staticmethod
    def id_for_sip(sip: str) -> UUID:
        return uuid5(NAMESPACE, f"sip:{sip}")

    @staticmethod
    def create_id(sip: str, **_: Any) -> UUID:
        return Device.id_for_sip(sip)

    @classmethod
    def install(cls, *, sip: str, installer_id: str, community: KnownCommunity, area: str,
                building_id: str | None, apartment_id: str | None,
                settings: dict[str, Any]) -> Device:
        """A new device in `area` (the community's public area, one of its buildings' or one of
        its APTs), its settings as the contract loaded them."""
        kind = settings["type"]
        if kind not in AREA_TYPES[area]:
            allowed = ", ".join(DEVICE_TYPES[k] for k in AREA_TYPES[area])
            raise Invalid.field("type", f"A {DEVICE_TYPES[kind]} cannot be installed in "
                                        f"this area; it takes: {allowed}.")
        errors = _area_rules(area, settings)
        if errors:
            raise Invalid.fields(errors)
        settings = dict(settings)
        _check_buildings(area, community, settings.get("buildings", ALL_BUILDINGS))
        if area != "community":
            settings["buildings"] = ALL_BUILDINGS
        return cls(sip=sip, installer_id=installer_id, community_id=community.community_id,
                   area=area, building_id=building_id, apartment_id=apartment_id, **settings)

    @event("DeviceAdded")
    def __init__(self, sip: str, installer_id: str, community_id: str, area: str,
                 building_id: str | None, apartment_id: str | None, type: int, mac: str,
                 name: str, network_group: int, allow_monitor: bool, internet_access: bool,
                 static_ip: str | None, buildings: Any, relays: list[dict[str, Any]],
                 security_relay: bool, door_hold_open: bool, arming: bool,
                 builtin_relays: list[str],
                 external_relay: dict[str, Any] | None, directory: bool,
                 contact_display: str) -> None:
        self.sip = sip
        self.installer_id = installer_id
        self.community_id = community_id
        self.area = area
        self.building_id = building_id
        self.apartment_id = apartment_id
        self.type = type
        self.mac = mac
        self.name = name
        self.network_group = network_group
        self.allow_monitor = allow_monitor
        self.internet_access = internet_access
        self.static_ip = static_ip
        self.buildings = buildings
        self.relays = relays
        self.security_relay = security_relay
        self.arming = arming
        self.door_hold_open = door_hold_open
        self.builtin_relays = builtin_relays
        self.external_relay = external_relay
        self.directory = directory
        self.contact_display = contact_display
        self.removed = False

    SETTINGS = ("name", "network_group", "allow_monitor", "internet_access", "static_ip",
                "buildings", "relays", "security_relay", "door_hold_open", "arming",
                "builtin_relays", "external_relay", "directory", "contact_display")

    def settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ("type", "mac", *self.SETTINGS)}

    def edit(self, community: KnownCommunity, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply the changes that change something; the ones applied."""
        after = {**self.settings(), **changes}
        errors: dict[str, list[str]] = {}
        if not after["internet_access"] and not after["static_ip"]:
            errors["static_ip"] = ["A device without internet access needs a static IP."]
        errors.update({name: messages for name, messages in type_rules(self.type, after).items()
                       if name in changes})
        errors.update(_area_rules(self.area, changes))
        if errors:
            raise Invalid.fields(errors)
        if "buildings" in changes:
            _check_buildings(self.area, community, changes["buildings"])
        applied = {name: value for name, value in changes.items()
                   if getattr(self, name) != value}
        if applied:
            self._edited(changes=applied)
        return applied

    @event("DeviceEdited")
    def _edited(self, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            setattr(self, name, value)

    @event("DeviceRemoved")
    def remove(self) -> None:
        self.removed = True

    # -- online and offline: the only facts traffic makes (services/devices/traffic.py) -------
    def come_online(self, at: str) -> bool:
        """Heard from while it stood offline (or never heard from): True if that is news."""
        if self.removed or getattr(self, "online", False):
            return False
        self._came_online(at=at, mac=self.mac, installer_id=self.installer_id,
                          community_id=self.community_id)
        return True

    @event("DeviceCameOnline")
    def _came_online(self, at: str, mac: str, installer_id: str, community_id: str) -> None:
        self.online = True

    def go_offline(self, last_seen: str) -> bool:
        """Silent for longer than the tolerance while online: True if that is news."""
        if self.removed or not getattr(self, "online", False):
            return False
        self._went_offline(last_seen=last_seen, mac=self.mac, installer_id=self.installer_id,
                           community_id=self.community_id)
        return True

    @event("DeviceWentOffline")
    def _went_offline(self, last_seen: str, mac: str, installer_id: str,
                      community_id: str) -> None:
        self.online = False

    def keep_autop(self, commands: list[str]) -> bool:
        """The kept Autop commands with these merged in (one value per key, as the manual
        keeps no duplicates): True if that changed them."""
        kept = autop_lines([*getattr(self, "autop", []), *commands])
        if kept == getattr(self, "autop", []):
            return False
        self._autop_kept(commands=kept)
        return True

    @event("AutopKept")
    def _autop_kept(self, commands: list[str]) -> None:
        self.autop = commands

    @event("DeviceCredentialsWiped")
    def credentials_wiped(self, apartment_id: str, kinds: list[str], removed: int) -> None:
        """The reset of its APT wiped the credentials it opens doors for (its history)."""


def _area_rules(area: str, settings: dict[str, Any]) -> dict[str, list[str]]:
    """Door Hold Open is for a resident's own door phone (manual: private door phones)."""
    if settings.get("door_hold_open") and area != "apartment":
        return {"door_hold_open": ["Only a door phone in an APT lets users hold the door open."]}
    return {}


def _check_buildings(area: str, community: KnownCommunity, buildings: Any) -> None:
    if buildings == ALL_BUILDINGS:
        return
    if area != "community":
        raise Invalid.field("buildings", "Only a community public device serves chosen "
                                         "buildings.")
    unknown = [b for b in buildings if b not in community.buildings]
    if unknown:
        raise Invalid.field("buildings", f"Not a building of this community: {unknown[0]}.")


class ThirdPartyDevice(Aggregate):
    """A third-party camera (RTSP) or lock (Dormakaba, Salto, iTec) in an area or an APT,
    linked, if the installer says so, to one of the community's intercom devices (manual:
    Third Party Devices)."""

    @event("ThirdPartyDeviceAdded")
    def __init__(self, kind: str, installer_id: str, community_id: str, area: str,
                 building_id: str | None, apartment_id: str | None, name: str,
                 linked_device_id: str | None, brand: str | None = None,
                 lock_id: str | None = None, rtsp_url: str | None = None,
                 username: str | None = None, password: str | None = None,
                 allow_monitor: bool | None = None,
                 monitoring_terminal: str | None = None) -> None:
        self.kind = kind
        self.installer_id = installer_id
        self.community_id = community_id
        self.area = area
        self.building_id = building_id
        self.apartment_id = apartment_id
        self.name = name
        self.linked_device_id = linked_device_id
        self.brand = brand
        self.lock_id = lock_id
        self.rtsp_url = rtsp_url
        self.username = username
        self.password = password
        self.allow_monitor = allow_monitor
        self.monitoring_terminal = monitoring_terminal
        self.removed = False

    EDITABLE = {"camera": ("name", "rtsp_url", "username", "password", "allow_monitor",
                           "monitoring_terminal", "linked_device_id"),
                "lock": ("name", "linked_device_id")}

    LOGIN = ("rtsp_url", "username", "password")  # a camera's: never in a published event

    def edit(self, changes: dict[str, Any]) -> dict[str, Any]:
        applied = {name: value for name, value in changes.items()
                   if name in self.EDITABLE[self.kind] and getattr(self, name) != value}
        settings = {k: v for k, v in applied.items() if k not in self.LOGIN}
        if settings:
            self._edited(kind=self.kind, changes=settings)
        if any(name in applied for name in self.LOGIN):
            login = {name: applied.get(name, getattr(self, name)) for name in self.LOGIN}
            self._login_changed(kind=self.kind, **login)
        return applied

    @event("CameraLoginChanged")
    def _login_changed(self, kind: str, rtsp_url: str, username: str, password: str) -> None:
        self.rtsp_url, self.username, self.password = rtsp_url, username, password

    @event("ThirdPartyDeviceEdited")
    def _edited(self, kind: str, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            setattr(self, name, value)

    @event("ThirdPartyDeviceRemoved")
    def remove(self) -> None:
        self.removed = True


class LockClaim(Aggregate):
    """A lock's device ID, assigned to one area at a time (per brand)."""

    @staticmethod
    def id_for(brand: str, lock_id: str) -> UUID:
        return uuid5(NAMESPACE, f"lock:{brand}:{lock_id.lower()}")

    @staticmethod
    def create_id(brand: str, lock_id: str, device_id: str) -> UUID:
        return LockClaim.id_for(brand, lock_id)

    @event("LockClaimed")
    def __init__(self, brand: str, lock_id: str, device_id: str) -> None:
        self.device_id: str | None = device_id

    def claim_again(self, device_id: str) -> None:
        if self.device_id is not None:
            message = "This lock is assigned already."
            raise Conflict(message, {"lock_id": [message]})
        self._claimed_again(device_id=device_id)

    @event("LockClaimedAgain")
    def _claimed_again(self, device_id: str) -> None:
        self.device_id = device_id

    @event("LockFreed")
    def free(self) -> None:
        self.device_id = None


class Command(Aggregate):
    """A remote operation on one device (manual: "Remote Configuration and Maintenance"), from
    queued to succeeded, failed or expired.

    Its states move forward only: a device's acknowledgement or notify's "sent" that comes
    late, twice or out of order changes nothing once a later state is recorded (a "received"
    after "succeeded", a "sent" after "delivered"), and a final state is final. The history is
    the events themselves; `history` keeps their summary for the detail page.
    """

    ORDER = {state: rank for rank, state in enumerate(("queued", "sent", "delivered"))}

    @staticmethod
    def id_for_sync(device_id: str, cause_event_id: str) -> UUID:
        """A config sync's id, derived from the event that asked for it: the policy that
        queues it twice (a replayed event) hits the same id, and the store keeps one."""
        return uuid5(NAMESPACE, f"config-sync:{device_id}:{cause_event_id}")

    @classmethod
    def for_device(cls, device: Device, kind: str, params: dict[str, Any], now: datetime,
                   deadline_seconds: int, command_id: UUID | None = None) -> Command:
        if device.removed:
            raise NotFound("Device not found.")
        deadline = (now + timedelta(seconds=deadline_seconds)).isoformat()
        return cls._create(cls.CommandQueued, id=command_id or uuid4(),  # type: ignore[attr-defined]
                           device_id=str(device.id), mac=device.mac,
                           installer_id=device.installer_id, community_id=device.community_id,
                           kind=kind, params=params, deadline=deadline)

    @event("CommandQueued")
    def __init__(self, device_id: str, mac: str, installer_id: str, community_id: str,
                 kind: str, params: dict[str, Any], deadline: str) -> None:
        self.device_id = device_id
        self.mac = mac
        self.installer_id = installer_id
        self.community_id = community_id
        self.kind = kind
        self.params = params
        self.deadline = deadline
        self.state = "queued"
        self.detail: str | None = None
        self.history: list[dict[str, Any]] = [
            {"state": "queued", "at": self.created_on.isoformat(), "detail": None}]

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def _before(self, state: str) -> bool:
        return not self.final and self.ORDER[self.state] < self.ORDER[state]

    def sent(self, at: str) -> bool:
        """Notify pushed it: True if that is news."""
        if not self._before("sent"):
            return False
        self._sent(device_id=self.device_id, at=at)
        return True

    def acknowledged(self, outcome: str, at: str, detail: str | None = None) -> bool:
        """What the device said (contracts/traffic.py `ack`): it got the command ("received"),
        or it did it ("succeeded") or could not ("failed"). True if that is news."""
        if outcome == "received":
            if not self._before("delivered"):
                return False
            self._delivered(device_id=self.device_id, at=at)
        elif outcome in ("succeeded", "failed"):
            if self.final:
                return False
            (self._succeeded if outcome == "succeeded" else self._failed)(
                device_id=self.device_id, at=at, detail=detail)
        else:
            return False
        return True

    def expire(self, now: datetime) -> bool:
        """Its deadline passed before it ended: True if that is news."""
        if self.final or now < datetime.fromisoformat(self.deadline):
            return False
        self._expired(device_id=self.device_id, at=now.isoformat())
        return True

    def _moved(self, state: str, at: str, detail: str | None = None) -> None:
        self.state = state
        self.detail = detail
        self.history.append({"state": state, "at": at, "detail": detail})

    @event("CommandSent")
    def _sent(self, device_id: str, at: str) -> None:
        self._moved("sent", at)

    @event("CommandDelivered")
    def _delivered(self, device_id: str, at: str) -> None:
        self._moved("delivered", at)

    @event("CommandSucceeded")
    def _succeeded(self, device_id: str, at: str, detail: str | None) -> None:
        self._moved("succeeded", at, detail)

    @event("CommandFailed")
    def _failed(self, device_id: str, at: str, detail: str | None) -> None:
        self._moved("failed", at, detail)

    @event("CommandExpired")
    def _expired(self, device_id: str, at: str) -> None:
        self._moved("expired", at)
