"""Devices' application: the MAC library and intercom devices, scoped to the caller.

A distributor registers MACs to its own installers (one, or a CSV of many, each row with its
outcome); an installer lists and removes its MACs and installs devices in its own sites.
Another installer's MAC, device or site is "not found", never "forbidden", so ids cannot be
probed. What devices knows of sites and installers comes from topology's and accounts' events
(the `on_topology_event` and `on_accounts_event` policies); when a command names one not known
yet (a building created a moment ago), devices first catches up with those logs and asks again,
so a client that creates a building and then a device in it is never told the building is
missing.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError

from concierge import context
from concierge.envelope import Publishable
from concierge.envelope import build as build_envelope
from concierge.store import ServiceApplication
from contracts import checked
from contracts.accounts import INSTALLER_ROLES, PROPERTY_MANAGER
from contracts.devices import (
    ALL_BUILDINGS,
    DEADLINE_DEFAULT,
    DEVICE_IMPORT_MAX,
    DEVICE_TYPES,
    EVENT_SCHEMAS,
    RESET_WIPES,
    CameraCreate,
    CameraEdit,
    CommandCreate,
    CredentialCreate,
    DeviceCreate,
    DeviceEdit,
    DeviceImport,
    LockCreate,
    LockEdit,
    MacImport,
    MacRegister,
    device_items,
    mac_rows,
    normal_mac,
)
from contracts.errors import Conflict, Forbidden, Invalid, NotFound
from services.devices.domain import (
    Command,
    CredentialClaim,
    Device,
    KnownApartment,
    KnownCommunity,
    KnownInstaller,
    LockClaim,
    Mac,
    ThirdPartyDevice,
)
from services.devices.projections import DevicesViews

log = logging.getLogger(__name__)
T = TypeVar("T")

INSTALLER = "installer"
DISTRIBUTOR = "distributor"
TOPOLOGY_EVENTS = frozenset({"CommunityCreated", "CommunityDeleted", "BuildingAdded",
                             "BuildingEdited", "BuildingDeleted", "ApartmentAdded",
                             "ApartmentEdited", "ResidentEdited", "ApartmentReset",
                             "ApartmentDeleted"})
# What notify says of the device pushes it delivers (contracts/notify.py).
NOTIFY_EVENTS = frozenset({"PushSent", "PushExpired"})
MONITOR_NAME = "Indoor Monitor"  # an APT's monitor when the installer named none
ACCOUNTS_EVENTS = frozenset({"PortalAccountCreated"})
SIP_PREFIX = "59"  # the manual's SIP numbers are 10 digits, all starting 59
SIP_DIGITS = 10
_SYSTEM_RANDOM = random.SystemRandom()


def _installer() -> str:
    ctx = context.current()
    if ctx.role not in (*INSTALLER_ROLES, PROPERTY_MANAGER) or not ctx.installer_id:
        raise Forbidden("Only an installer manages its devices and MAC library.")
    return str(ctx.installer_id)


def _not_manager() -> None:
    """What only an installer does: a property manager sees its communities' devices and
    logs, and keeps their residents' credentials, but installs and runs nothing."""
    if context.current().role == PROPERTY_MANAGER:
        raise Forbidden("A property manager does not install, change or run devices.")


def _may_read_logs(community_id: Any) -> None:
    if not context.current().may(community_id, "log_access_control"):
        raise Forbidden("The door and call logs take the Log Access Control permission in "
                        "this community.")


def _distributor() -> str:
    ctx = context.current()
    account = getattr(ctx, "account_id", None)
    if ctx.role != DISTRIBUTOR or not account:
        raise Forbidden("Only a distributor registers MACs to its installers.")
    return str(account)


def _uuid(value: Any) -> UUID | None:
    try:
        return value if isinstance(value, UUID) else UUID(str(value))
    except ValueError:
        return None


def new_sip() -> str:
    """A SIP number nobody chose: a clash with an existing one makes the device's id (derived
    from the number) collide, the store refuses the commit, and the command draws again."""
    return SIP_PREFIX + "".join(_SYSTEM_RANDOM.choice("0123456789")
                                for _ in range(SIP_DIGITS - len(SIP_PREFIX)))


class DevicesApplication(ServiceApplication):
    service_name = "devices"

    def __init__(self, env: dict[str, str] | None = None, engine: Any = None,
                 offline_after: float = 90.0) -> None:
        super().__init__(env=env, engine=engine)
        # A device last heard longer ago than this is offline (heartbeat interval x tolerance).
        self.offline_after = offline_after
        self.views = DevicesViews(engine, offline_after) if engine is not None else None
        # Brings the topology and accounts policies up to those logs now (set when wired).
        self.catch_up_sources: Callable[[], None] = lambda: None
        # Brings what devices knows of the sites up to what topology had committed when called.
        self.sync_sites: Callable[[], None] = lambda: None

    # -- loading ----------------------------------------------------------------------------
    def _get(self, cls: type[T], aggregate_id: UUID | None) -> T | None:
        if aggregate_id is None:
            return None
        try:
            found = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return found if isinstance(found, cls) else None

    def _known(self, cls: type[T], aggregate_id: UUID | None,
               usable: Callable[[T], bool]) -> T | None:
        """A site or installer as devices knows it; when it is unknown or gone, once more after
        catching up with the logs that announce them."""
        found = self._get(cls, aggregate_id)
        if found is None or not usable(found):
            self.catch_up_sources()
            found = self._get(cls, aggregate_id)
        return found if found is not None and usable(found) else None

    def _area(self, area: str, area_id: Any, installer: str
              ) -> tuple[KnownCommunity, str | None, str | None]:
        """The community, building and APT of an area of the caller's sites, or NotFound."""
        uid = _uuid(area_id)
        labels = {"community": "Community", "building": "Building", "apartment": "APT"}
        missing = NotFound(f"{labels[area]} not found.")
        if uid is None:
            raise missing
        # A site the caller has seen deleted is gone here too, not only once the event arrives.
        self.sync_sites()
        building_id = apartment_id = None
        if area == "apartment":
            apartment = self._known(KnownApartment, KnownApartment.id_for(str(uid)),
                                    lambda a: not a.deleted and a.installer_id == installer)
            if apartment is None:
                raise missing
            community_id, building_id = apartment.community_id, apartment.building_id
            apartment_id = str(uid)
        elif area == "building":
            building_id = str(uid)
            community_id = self._community_of_building(building_id, installer)
            if community_id is None:
                raise missing
        else:
            community_id = str(uid)
        community = self._known(KnownCommunity, KnownCommunity.id_for(community_id),
                                lambda c: c.belongs_to(installer)
                                and (building_id is None or building_id in c.buildings))
        if community is None or not context.current().in_scope(community.community_id):
            raise missing
        return community, building_id, apartment_id

    def _community_of_building(self, building_id: str, installer: str) -> str | None:
        views = self._views()
        found = views.community_of_building(building_id)
        if found is None:
            self.catch_up_sources()
            found = views.community_of_building(building_id)
        return found

    def _device(self, device_id: Any) -> Device:
        installer = _installer()
        device = self._get(Device, _uuid(device_id))
        if (device is None or device.removed or device.installer_id != installer
                or not context.current().in_scope(device.community_id)):
            raise NotFound("Device not found.")
        return device

    def _views(self) -> DevicesViews:
        if self.views is None:
            raise RuntimeError("devices has no read side in this process")
        return self.views

    # -- MAC library --------------------------------------------------------------------------
    def _check_installer(self, installer_id: Any, distributor: str) -> str:
        """The installer's id, when it is one of this distributor's; NotFound otherwise."""
        uid = _uuid(installer_id)
        known = uid and self._known(KnownInstaller, KnownInstaller.id_for(str(uid)),
                                    lambda k: k.distributor_id == distributor)
        if not known:
            raise NotFound("Installer not found.")
        return str(uid)

    def register_mac(self, installer_id: Any, payload: Mapping[str, Any]) -> dict[str, Any]:
        """One MAC into an installer's library (MAC Library >> Add); 409 if already there."""
        distributor = _distributor()
        installer = self._check_installer(installer_id, distributor)
        data = checked(MacRegister, payload)

        def command() -> tuple[dict[str, Any], list[Any]]:
            mac = self._get(Mac, Mac.id_for(data["mac"]))
            if mac is None:
                mac = Mac(mac=data["mac"], installer_id=installer, distributor_id=distributor)
            else:
                mac.register_again(installer, distributor)
            return _mac_item(mac), [mac]

        return self.execute(command)

    def import_macs(self, installer_id: Any, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Many MACs from a CSV (MAC Library >> Import): every row's outcome, one transaction.

        Outcomes: added; duplicate (already in this installer's library, or twice in the file);
        taken (another installer's); malformed (not a MAC). Nothing is half-applied: the rows
        that can be added are, together, and the others say why not.
        """
        _not_manager()
        distributor = _distributor()
        installer = self._check_installer(installer_id, distributor)
        data = checked(MacImport, payload)
        rows = mac_rows(data["csv"])
        if len(rows) > 100_000:
            raise Invalid.field("csv", "At most 100,000 MACs in one file.")
        outcomes: list[dict[str, Any]] = []
        wanted: dict[str, int] = {}  # MAC -> index of its outcome
        for line, cell in rows:
            mac = normal_mac(cell)
            if mac is None:
                outcomes.append({"line": line, "mac": cell[:64], "outcome": "malformed",
                                 "detail": "Not a valid MAC address."})
            elif mac in wanted:
                outcomes.append({"line": line, "mac": mac, "outcome": "duplicate",
                                 "detail": f"Also on line {outcomes[wanted[mac]]['line']}."})
            else:
                wanted[mac] = len(outcomes)
                outcomes.append({"line": line, "mac": mac, "outcome": "added"})

        def command() -> tuple[dict[str, Any], list[Any]]:
            ids = {Mac.id_for(mac): mac for mac in wanted}
            existing = self.get_many(list(ids))
            changed = []
            for aggregate_id, mac in ids.items():
                outcome = outcomes[wanted[mac]]
                found = existing.get(aggregate_id)
                if found is None:
                    changed.append(Mac(mac=mac, installer_id=installer,
                                       distributor_id=distributor))
                    outcome.update(outcome="added")
                elif found.released:
                    found.register_again(installer, distributor)
                    changed.append(found)
                    outcome.update(outcome="added")
                else:
                    kind = found.outcome_for(installer)
                    outcome.update(outcome=kind, detail=(
                        "Already in the installer's MAC library." if kind == "duplicate"
                        else "Registered to another installer."))
            summary: dict[str, int] = {"added": 0, "duplicate": 0, "taken": 0, "malformed": 0}
            for outcome in outcomes:
                summary[outcome["outcome"]] += 1
            return {"rows": len(outcomes), **summary, "outcomes": outcomes}, changed

        return self.execute(command)

    def list_macs(self, **query: Any) -> dict[str, Any]:
        _not_manager()
        return self._views().list_macs(_installer(), **query)

    def remove_mac(self, mac: Any) -> None:
        _not_manager()
        installer = _installer()
        normal = normal_mac(str(mac))
        if normal is None:
            raise NotFound("MAC not found.")

        def command() -> tuple[None, list[Any]]:
            found = self._get(Mac, Mac.id_for(normal))
            if found is None:
                raise NotFound("MAC not found.")
            found.release(installer)
            return None, [found]

        self.execute(command)

    # -- devices ------------------------------------------------------------------------------
    def add_device(self, area: str, area_id: Any, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Install a device in a community's public area, a building's or an APT."""
        _not_manager()
        if area not in ("community", "building", "apartment"):
            raise NotFound("No such area.")
        installer = _installer()
        community, building_id, apartment_id = self._area(area, area_id, installer)
        settings = checked(DeviceCreate, payload)

        def command() -> tuple[dict[str, Any], list[Any]]:
            mac = self._get(Mac, Mac.id_for(settings["mac"]))
            if mac is None or not mac.owned_by(installer):
                raise Invalid.field("mac", "This MAC is not in your MAC library.")
            device = Device.install(sip=new_sip(), installer_id=installer, community=community,
                                    area=area, building_id=building_id,
                                    apartment_id=apartment_id, settings=settings)
            mac.assign(str(device.id), installer, datetime.now(UTC), apartment_id)
            changed = [device, mac, *self._placed(device, apartment_id,
                                                  community.community_id, building_id)]
            return {"id": str(device.id), "sip": device.sip}, changed

        return self.execute(command)

    def import_devices(self, area: str, area_id: Any, payload: Mapping[str, Any]
                       ) -> dict[str, Any]:
        """Add Devices Using a Template: many devices of one area in one request, each item's
        outcome reported (added, with its id and SIP, or refused, naming why); the items that
        can be added are, in one transaction."""
        _not_manager()
        if area not in ("community", "building", "apartment"):
            raise NotFound("No such area.")
        installer = _installer()
        community, building_id, apartment_id = self._area(area, area_id, installer)
        items = device_items(checked(DeviceImport, payload)["devices"])
        if len(items) > DEVICE_IMPORT_MAX:
            raise Invalid.field("devices", f"At most {DEVICE_IMPORT_MAX:,} devices in one "
                                           "request.")
        outcomes: list[dict[str, Any]] = []
        wanted: list[tuple[dict[str, Any], dict[str, Any]]] = []
        macs: dict[str, int] = {}
        for number, text in items:
            outcome: dict[str, Any] = {"item": number, "text": text[:200]}
            outcomes.append(outcome)
            parts = [part.strip() for part in text.split(",")]
            if len(parts) != 3:
                outcome.update(outcome="refused", errors={"devices": [
                    "An item is \"Device name, Device type, Device MAC\"."]})
                continue
            name, kind, mac = parts
            try:
                settings = checked(DeviceCreate, {
                    "name": name, "mac": mac,
                    "type": int(kind) if kind.isdigit() and len(kind) < 4 else kind})
            except Invalid as refused:
                outcome.update(outcome="refused", errors=refused.errors)
                continue
            if settings["mac"] in macs:
                outcome.update(outcome="refused", errors={"mac": [
                    f"Also in item {macs[settings['mac']]}."]})
                continue
            macs[settings["mac"]] = number
            wanted.append((outcome, settings))

        def command() -> tuple[dict[str, Any], list[Any]]:
            for outcome, _settings in wanted:
                outcome.pop("errors", None)
            found = self.get_many([Mac.id_for(settings["mac"]) for _, settings in wanted])
            home = (self._get(KnownApartment, KnownApartment.id_for(apartment_id))
                    if apartment_id is not None
                    else self._get(KnownCommunity, KnownCommunity.id_for(
                        community.community_id)))
            if home is None or home.deleted:
                raise NotFound("Area not found.")
            changed: list[Any] = []
            now = datetime.now(UTC)
            for outcome, settings in wanted:
                mac = found.get(Mac.id_for(settings["mac"]))
                try:
                    if not isinstance(mac, Mac) or not mac.owned_by(installer):
                        raise Invalid.field("mac", "This MAC is not in your MAC library.")
                    device = Device.install(sip=new_sip(), installer_id=installer,
                                            community=community, area=area,
                                            building_id=building_id, apartment_id=apartment_id,
                                            settings=settings)
                    mac.assign(str(device.id), installer, now, apartment_id)
                except (Invalid, Conflict) as refused:
                    outcome.update(outcome="refused", errors=refused.errors)
                    continue
                if isinstance(home, KnownApartment):
                    home.device_installed(device_id=str(device.id), monitor=False)
                else:
                    home.public_device_installed(device_id=str(device.id),
                                                 building_id=building_id)
                outcome.update(outcome="added", id=str(device.id), sip=device.sip)
                changed += [device, mac]
            added = sum(1 for o in outcomes if o.get("outcome") == "added")
            return ({"items": len(outcomes), "added": added, "refused": len(outcomes) - added,
                     "outcomes": outcomes}, [*changed, home] if changed else [])

        return self.execute(command)

    # -- traffic: the transitions and the logs (services/devices/traffic.py) ------------------
    def devices_came_online(self, seen: Mapping[str, float]) -> list[str]:
        """Record `DeviceCameOnline` for these devices (id -> when heard) where it is news;
        the ids that stand online now (removed devices left out)."""
        return self._transitions(seen, "come_online")

    def devices_went_offline(self, silent: Mapping[str, float]) -> list[str]:
        """Record `DeviceWentOffline` (id -> last heard) where it is news; the ids that stand
        offline now."""
        return self._transitions(silent, "go_offline")

    def _transitions(self, times: Mapping[str, float], change: str) -> list[str]:
        def command() -> tuple[list[str], list[Any]]:
            found = self.get_many([UUID(d) for d in times])
            settled, changed = [], []
            for uid, device in found.items():
                if not isinstance(device, Device) or device.removed:
                    continue
                when = datetime.fromtimestamp(times[str(uid)], UTC).isoformat()
                if getattr(device, change)(when):
                    changed.append(device)
                settled.append(str(uid))
            return settled, changed

        with context.acting({"actor": "devices:traffic", "role": "system"}):
            return self.execute(command)

    def traffic_log(self, kind: str, scope: str, scope_id: Any, page: int = 1,
                    per_page: int = 10, since: datetime | None = None,
                    until: datetime | None = None) -> dict[str, Any]:
        """A page of the door or call log of one of the caller's communities, buildings, APTs
        or devices, newest first, within [since, until) (empty when `until` is not after
        `since`)."""
        if kind not in ("door", "call") or scope not in (
                "community", "building", "apartment", "device"):
            raise NotFound("No such log.")
        installer = _installer()
        if scope == "device":
            device = self._device(scope_id)
            _may_read_logs(device.community_id)
            scope_id = str(device.id)
        else:
            community, building_id, apartment_id = self._area(scope, scope_id, installer)
            _may_read_logs(community.community_id)
            scope_id = {"community": community.community_id, "building": building_id,
                        "apartment": apartment_id}[scope]
        return self._views().traffic_log(
            kind, scope, str(scope_id), since.timestamp() if since else None,
            until.timestamp() if until else None, page, per_page)

    def reserve_mac(self, mac: Any, apartment_id: Any) -> dict[str, Any]:
        """Keep a MAC of the caller's library for the indoor monitor of an APT that topology is
        about to record (Add APT on the Basic plan): 422 naming `mac` when it is not in the
        library, 409 when a device uses it. The monitor is installed when the APT is recorded
        (`on_topology_event`); a reservation whose APT never comes lapses."""
        installer = _installer()
        normal = normal_mac(str(mac)) if isinstance(mac, str) else None
        uid = _uuid(apartment_id)
        if normal is None:
            raise Invalid.field("mac", "Not a valid MAC address.")
        if uid is None:
            raise Invalid.field("apartment_id", "Not an APT id.")

        def command() -> tuple[dict[str, Any], list[Any]]:
            found = self._get(Mac, Mac.id_for(normal))
            if found is None:
                raise Invalid.field("mac", "This MAC is not in your MAC library.")
            found.reserve(str(uid), installer, datetime.now(UTC))
            return {"mac": normal, "apartment_id": str(uid),
                    "until": found.reserved_until}, [found]

        return self.execute(command)

    def get_device(self, device_id: Any) -> dict[str, Any]:
        device = self._device(device_id)
        return self._device_view(device)

    def _device_view(self, device: Device) -> dict[str, Any]:
        seen = self.views.device_seen(str(device.id)) if self.views else {}
        return {
            "id": str(device.id), "sip": device.sip, "area": device.area,
            "community_id": device.community_id, "building_id": device.building_id,
            "apartment_id": device.apartment_id, "type_name": DEVICE_TYPES[device.type],
            **device.settings(),
            "autop": list(getattr(device, "autop", [])),
            "created_at": device.created_on.isoformat(),
            "owner": seen.get("owner"),
            "last_connection": seen.get("last_connection"),
            "status": seen.get("status", "offline"),
            "firmware": seen.get("firmware"), "ip": seen.get("ip"), "model": seen.get("model"),
        }

    def edit_device(self, device_id: Any, payload: Mapping[str, Any]) -> dict[str, Any]:
        _not_manager()
        changes = checked(DeviceEdit, payload)

        def command() -> tuple[dict[str, Any], list[Any]]:
            device = self._device(device_id)
            community = self._get(KnownCommunity, KnownCommunity.id_for(device.community_id))
            if community is None:
                raise NotFound("Device not found.")
            device.edit(community, changes)
            return self._device_view(device), [device]

        return self.execute(command)

    def remove_device(self, device_id: Any) -> None:
        _not_manager()

        def command() -> tuple[None, list[Any]]:
            return None, self._uninstall(self._device(device_id))

        self.execute(command)

    def _uninstall(self, device: Device, home: KnownApartment | None = None,
                   site: KnownCommunity | None = None) -> list[Any]:
        """Remove a device and free its MAC; the aggregates changed (but `home` and `site`,
        which the caller holds and records)."""
        device.remove()
        changed: list[Any] = [device]
        mac = self._get(Mac, Mac.id_for(device.mac))
        if mac is not None:
            mac.free(str(device.id))
            changed.append(mac)
        return changed + self._left(device, home, site)

    def device_history(self, device_id: Any, page: int = 1, per_page: int = 10
                       ) -> dict[str, Any]:
        """A page of the device's events, oldest first: added, edited, credentials wiped by
        its APT's reset, removed; who did it and when."""
        device = self._device(device_id)
        publishable = Publishable(EVENT_SCHEMAS)
        items = []
        for record in self.stream(device.id, after=(page - 1) * per_page, limit=per_page):
            envelope = build_envelope(self.service_name, record, publishable=publishable)
            items.append({"type": envelope["type"], "version": envelope["stream_version"],
                          "occurred_at": envelope["occurred_at"], "actor": envelope["actor"],
                          "data": envelope["data"]})
        return {"items": items, "total": device.version, "page": page, "per_page": per_page}

    # -- third-party cameras and locks ------------------------------------------------------
    def add_third_party(self, kind: str, area: str, area_id: Any,
                        payload: Mapping[str, Any]) -> dict[str, Any]:
        """A camera or a lock in a community's public area, a building's or an APT."""
        _not_manager()
        if area not in ("community", "building", "apartment") or kind not in _THIRD_PARTY:
            raise NotFound("No such area.")
        installer = _installer()
        community, building_id, apartment_id = self._area(area, area_id, installer)
        data = checked(_THIRD_PARTY[kind][0], payload)

        def command() -> tuple[dict[str, Any], list[Any]]:
            linked = self._linked(data.get("linked_device_id"), installer,
                                  community.community_id)
            fields = {k: v for k, v in data.items() if k != "linked_device_id"}
            device = ThirdPartyDevice(kind=kind, installer_id=installer,
                                      community_id=community.community_id, area=area,
                                      building_id=building_id, apartment_id=apartment_id,
                                      linked_device_id=linked, **fields)
            changed: list[Any] = [device]
            if kind == "lock":
                claim = self._get(LockClaim, LockClaim.id_for(data["brand"], data["lock_id"]))
                if claim is None:
                    claim = LockClaim(brand=data["brand"], lock_id=data["lock_id"],
                                      device_id=str(device.id))
                else:
                    claim.claim_again(str(device.id))
                changed.append(claim)
            changed += self._placed(device, apartment_id, community.community_id, building_id)
            return {"id": str(device.id)}, changed

        return self.execute(command)

    def _placed(self, device: Any, apartment_id: str | None, community_id: str,
                building_id: str | None) -> list[Any]:
        """The APT, or the community, now holding this device (for its deletion later)."""
        if apartment_id is not None:
            home = self._get(KnownApartment, KnownApartment.id_for(apartment_id))
            if home is None or home.deleted:
                raise NotFound("APT not found.")
            home.device_installed(device_id=str(device.id), monitor=False)
            return [home]
        site = self._get(KnownCommunity, KnownCommunity.id_for(community_id))
        if site is None or site.deleted:
            raise NotFound("Community not found.")
        site.public_device_installed(device_id=str(device.id), building_id=building_id)
        return [site]

    def _linked(self, device_id: Any, installer: str, community_id: str) -> str | None:
        if device_id is None:
            return None
        device = self._get(Device, _uuid(device_id))
        if (device is None or device.removed or device.installer_id != installer
                or device.community_id != community_id):
            raise Invalid.field("linked_device_id",
                                "Not an intercom device of this community.")
        return str(device.id)

    def _third_party(self, kind: str, device_id: Any) -> ThirdPartyDevice:
        installer = _installer()
        device = self._get(ThirdPartyDevice, _uuid(device_id))
        if (device is None or device.removed or device.kind != kind
                or device.installer_id != installer
                or not context.current().in_scope(device.community_id)):
            raise NotFound(f"{kind.capitalize()} not found.")
        return device

    def get_third_party(self, kind: str, device_id: Any) -> dict[str, Any]:
        return _third_party_view(self._third_party(kind, device_id))

    def edit_third_party(self, kind: str, device_id: Any, payload: Mapping[str, Any]
                         ) -> dict[str, Any]:
        _not_manager()
        if kind not in _THIRD_PARTY:
            raise NotFound("No such device.")
        changes = checked(_THIRD_PARTY[kind][1], payload)

        def command() -> tuple[dict[str, Any], list[Any]]:
            device = self._third_party(kind, device_id)
            if "linked_device_id" in changes:
                changes["linked_device_id"] = self._linked(
                    changes["linked_device_id"], device.installer_id, device.community_id)
            device.edit(changes)
            return _third_party_view(device), [device]

        return self.execute(command)

    def remove_third_party(self, kind: str, device_id: Any) -> None:
        _not_manager()

        def command() -> tuple[None, list[Any]]:
            return None, self._remove_third_party(self._third_party(kind, device_id))

        self.execute(command)

    def _remove_third_party(self, device: ThirdPartyDevice, home: KnownApartment | None = None,
                            site: KnownCommunity | None = None) -> list[Any]:
        device.remove()
        changed: list[Any] = [device]
        if device.kind == "lock" and device.brand and device.lock_id:
            claim = self._get(LockClaim, LockClaim.id_for(device.brand, device.lock_id))
            if claim is not None and claim.device_id == str(device.id):
                claim.free()
                changed.append(claim)
        return changed + self._left(device, home, site)

    def _left(self, device: Device | ThirdPartyDevice, home: KnownApartment | None,
              site: KnownCommunity | None) -> list[Any]:
        """The APT or community no longer holding a removed device; the aggregate changed,
        unless the caller holds it (`home`, `site`) and records it."""
        if device.apartment_id is not None:
            held = home or self._get(KnownApartment, KnownApartment.id_for(device.apartment_id))
            if held is not None:
                held.device_removed(device_id=str(device.id))
            return [held] if held is not None and home is None else []
        area = site or self._get(KnownCommunity, KnownCommunity.id_for(device.community_id))
        if area is not None:
            area.public_device_removed(device_id=str(device.id))
        return [area] if area is not None and site is None else []

    def list_third_party(self, kind: str, area: str, area_id: Any, **query: Any
                         ) -> dict[str, Any]:
        if area not in ("community", "building", "apartment") or kind not in _THIRD_PARTY:
            raise NotFound("No such area.")
        installer = _installer()
        community, building_id, apartment_id = self._area(area, area_id, installer)
        return self._views().list_third_party(kind, community.community_id,
                                              building_id=building_id,
                                              apartment_id=apartment_id, **query)

    # -- resident credentials ---------------------------------------------------------------
    def _home(self, apartment_id: Any) -> KnownApartment:
        installer = _installer()
        self._area("apartment", apartment_id, installer)  # the caller's, or NotFound
        home = self._get(KnownApartment, KnownApartment.id_for(str(_uuid(apartment_id))))
        if home is None or home.deleted:
            raise NotFound("APT not found.")
        return home

    def add_credential(self, apartment_id: Any, payload: Mapping[str, Any]) -> dict[str, Any]:
        """A resident's PIN, RF card, face, NFC tag or Bluetooth phone for an APT: 409 naming
        `value` when the APT has it, or another APT of the community has the PIN, card or
        tag."""
        self._home(apartment_id)
        data = checked(CredentialCreate, payload)

        def command() -> tuple[dict[str, Any], list[Any]]:
            home = self._home(apartment_id)
            credential_id = str(uuid4())
            changed: list[Any] = [home]
            if CredentialClaim.needed(data["kind"]):
                claim_id = CredentialClaim.id_for(home.community_id, data["kind"], data["value"])
                claim = self._get(CredentialClaim, claim_id)
                if claim is None:
                    claim = CredentialClaim(community_id=home.community_id, kind=data["kind"],
                                            value=data["value"], apartment_id=home.apartment_id)
                else:
                    claim.claim_again(home.apartment_id)
                changed.append(claim)
            home.add_credential(credential_id, data["kind"], data["value"], data["holder"])
            return {"id": credential_id}, changed + self._config_syncs(self._serving(home), None)

        return self.execute(command)

    def list_credentials(self, apartment_id: Any) -> dict[str, Any]:
        home = self._home(apartment_id)
        items = [{"id": i, **c} for i, c in sorted(home.credentials.items(),
                                                    key=lambda item: item[1]["added_at"])]
        return {"items": items, "total": len(items), "page": 1, "per_page": max(len(items), 1)}

    def remove_credential(self, apartment_id: Any, credential_id: Any) -> None:
        def command() -> tuple[None, list[Any]]:
            home = self._home(apartment_id)
            removed = home.remove_credential(str(credential_id))
            return None, [home, *self._free_claims(home, [removed]),
                          *self._config_syncs(self._serving(home), None)]

        self.execute(command)

    def _free_claims(self, home: KnownApartment, removed: list[dict[str, Any]]) -> list[Any]:
        freed = []
        for credential in removed:
            if CredentialClaim.needed(credential["kind"]):
                claim = self._get(CredentialClaim, CredentialClaim.id_for(
                    home.community_id, credential["kind"], credential["value"]))
                if claim is not None and claim.apartment_id == home.apartment_id:
                    claim.free()
                    freed.append(claim)
        return freed

    def list_devices(self, area: str, area_id: Any, **query: Any) -> dict[str, Any]:
        if area not in ("community", "building", "apartment"):
            raise NotFound("No such area.")
        installer = _installer()
        community, building_id, apartment_id = self._area(area, area_id, installer)
        return self._views().list_devices(community.community_id, building_id=building_id,
                                          apartment_id=apartment_id, **query)

    # -- remote operations: durable commands that notify pushes to the device --------------
    def queue_command(self, device_id: Any, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Reboot, reset, a connection type or Autop commands for one of the caller's devices,
        queued until its deadline. Kept Autop commands (not One-Time) are also kept on the
        device, one value per key."""
        _not_manager()
        data = checked(CommandCreate, payload)
        kind = data["kind"]
        params: dict[str, Any] = {}
        if kind == "connection_type":
            params = {"connection_type": data["connection_type"]}
        elif kind == "autop":
            params = {"commands": data["commands"], "once": data["once"]}

        def command() -> tuple[dict[str, Any], list[Any]]:
            device = self._device(device_id)
            queued = Command.for_device(device, kind, params, datetime.now(UTC),
                                        data["deadline_seconds"])
            changed: list[Any] = [queued]
            if kind == "autop" and not data["once"] and device.keep_autop(data["commands"]):
                changed.append(device)
            return _command_view(queued), changed

        return self.execute(command)

    def get_command(self, command_id: Any) -> dict[str, Any]:
        """A command of one of the caller's devices, with its history."""
        installer = _installer()
        found = self._get(Command, _uuid(command_id))
        if (found is None or found.installer_id != installer
                or not context.current().in_scope(found.community_id)):
            raise NotFound("Command not found.")
        return {**_command_view(found), "history": list(found.history)}

    def list_commands(self, device_id: Any, **query: Any) -> dict[str, Any]:
        device = self._device(device_id)
        return self._views().list_commands(str(device.id), **query)

    def on_notify_event(self, envelope: Mapping[str, Any]) -> list[Any]:
        """Notify pushed a command to its device (it is "sent"), or found its deadline passed
        before it could (it expires)."""
        data = envelope["data"]
        found = self._get(Command, _uuid(data["command_id"]))
        if found is None:
            return []
        if envelope["type"] == "PushSent":
            moved = found.sent(str(data["sent_at"]))
        else:
            moved = found.expire(datetime.fromisoformat(str(data["expired_at"])))
        return [found] if moved else []

    def commands_acknowledged(self, acks: list[Mapping[str, Any]]) -> int:
        """What devices said of their commands (the ingest's `ack` traffic: command id, device
        id, outcome, time, detail), applied in one commit; how many moved a command. An ack
        of another device's command, or of no command, changes nothing."""
        if not acks:
            return 0

        def command() -> tuple[int, list[Any]]:
            found = self.get_many([uid for a in acks if (uid := _uuid(a["command_id"]))])
            changed: dict[UUID, Command] = {}
            moved = 0
            for ack in acks:
                target = found.get(_uuid(ack["command_id"]))  # type: ignore[arg-type]
                if not isinstance(target, Command) or target.device_id != ack["device_id"]:
                    continue
                if target.acknowledged(ack["outcome"], ack["at"], ack.get("detail")):
                    changed[target.id] = target
                    moved += 1
            return moved, list(changed.values())

        with context.acting({"actor": "devices:traffic", "role": "system"}):
            return self.execute(command)

    def expire_commands(self, now: datetime | None = None, limit: int = 500) -> int:
        """Record `CommandExpired` for commands past their deadline; how many."""
        now = now or datetime.now(UTC)
        due = self._views().open_commands(due_by=now.timestamp(), limit=limit)
        if not due:
            return 0

        def command() -> tuple[int, list[Any]]:
            found = self.get_many([UUID(row["id"]) for row in due])
            changed = [c for c in found.values() if isinstance(c, Command) and c.expire(now)]
            return len(changed), changed

        with context.acting({"actor": "devices:commands", "role": "system"}):
            return self.execute(command)

    def _config_syncs(self, devices: list[Device], cause: str | None) -> list[Any]:
        """A config sync for each of these devices whose last one is not still queued (one
        waiting sync already carries the change). `cause`: the event that asked, whose id
        makes the command's: a replay of it queues nothing twice."""
        live = {str(d.id): d for d in devices if not d.removed}
        if not live:
            return []
        waiting = set() if self.views is None else {
            row["device_id"] for row in self.views.open_commands(
                kind="config_sync", device_ids=list(live)) if row["state"] == "queued"}
        now = datetime.now(UTC)
        return [Command.for_device(device, "config_sync", {}, now, DEADLINE_DEFAULT,
                                   Command.id_for_sync(device_id, cause) if cause else None)
                for device_id, device in live.items() if device_id not in waiting]

    def _serving(self, home: KnownApartment) -> list[Device]:
        """The devices an APT's residents and credentials are configured on: its own, its
        building's public ones and the community's that serve its building."""
        site = self._get(KnownCommunity, KnownCommunity.id_for(home.community_id))
        ids = list(home.devices)
        if site is not None:
            ids += [d for d, b in site.public_devices.items()
                    if b in (None, home.building_id)]
        found = self.get_many([uid for d in ids if (uid := _uuid(d))])
        serving = []
        for device in found.values():
            if not isinstance(device, Device) or device.removed:
                continue
            if device.area == "community" and device.buildings != ALL_BUILDINGS and (
                    home.building_id not in (device.buildings or [])):
                continue
            serving.append(device)
        return serving

    # -- what devices knows of sites and installers ----------------------------------------
    def on_topology_event(self, envelope: Mapping[str, Any]) -> list[Any]:
        """Sites as topology announces them: the areas devices are installed in."""
        kind, data = envelope["type"], envelope["data"]
        try:
            if kind == "CommunityCreated":
                if self._get(KnownCommunity, KnownCommunity.id_for(envelope["stream_id"])):
                    return []
                return [KnownCommunity(community_id=envelope["stream_id"],
                                       installer_id=str(data["installer_id"]),
                                       name=data["name"])]
            if kind == "ApartmentAdded":
                if self._get(KnownApartment, KnownApartment.id_for(envelope["stream_id"])):
                    return []
                home = KnownApartment(apartment_id=envelope["stream_id"],
                                      building_id=str(data["building_id"]),
                                      community_id=str(data["community_id"]),
                                      installer_id=str(data["installer_id"]))
                return [home, *self._install_monitor(home, data, envelope)]
            if kind in ("ApartmentEdited", "ResidentEdited", "ApartmentReset",
                        "ApartmentDeleted"):
                home = self._get(KnownApartment, KnownApartment.id_for(envelope["stream_id"]))
                if home is None or home.deleted:
                    return []
                if kind == "ApartmentEdited":
                    return self._monitor_changed(home, data.get("changes") or {}, envelope)
                if kind == "ApartmentReset":
                    return self._reset(home, str(envelope["event_id"]))
                if kind == "ResidentEdited":  # the name the door phones' directories show
                    return self._config_syncs(self._serving(home), str(envelope["event_id"]))
                changed: list[Any] = [home]
                for device_id in list(home.devices):  # its devices go with it
                    changed += [a for a in self._remove_any(device_id, home=home)
                                if a is not home]
                home.forget()
                return changed
            community = self._get(KnownCommunity, KnownCommunity.id_for(
                str(data.get("community_id") or envelope["stream_id"])))
            if community is None:
                log.warning("devices: %s for a community it never saw (%s)", kind,
                            data.get("community_id"))
                return []
            if kind == "CommunityDeleted":
                if community.deleted:
                    return []
                changed = [community, *self._uninstall_public(community, None)]
                community.forget()
                return changed
            elif kind in ("BuildingAdded", "BuildingEdited"):
                name = data.get("name") or (data.get("changes") or {}).get("name")
                building = envelope["stream_id"]
                if kind == "BuildingEdited" and (name is None or building
                                                 not in community.buildings):
                    return []
                if community.buildings.get(building) == name:
                    return []
                community.know_building(building_id=building, name=name or "")
            elif kind == "BuildingDeleted":
                if envelope["stream_id"] not in community.buildings:
                    return []
                changed = [community, *self._uninstall_public(community, envelope["stream_id"])]
                community.forget_building(building_id=envelope["stream_id"])
                return changed
            return [community]
        except (KeyError, Invalid, Conflict) as exc:
            log.error("devices refused topology %s of %s (position %s): %r", kind,
                      envelope.get("stream_id"), envelope.get("position"), exc)
            return []

    def _reset(self, home: KnownApartment, cause: str) -> list[Any]:
        """The manual's Reset wipes the APT's PINs, faces, NFC tags and Bluetooth phones: in
        the APT's credential history and in each of its devices' histories; the devices that
        serve the APT get a config sync."""
        removed = home.wipe(RESET_WIPES)
        changed: list[Any] = [home, *self._free_claims(home, removed)]
        for device_id in home.devices:
            device = self._get(Device, _uuid(device_id))
            if device is not None and not device.removed:
                device.credentials_wiped(apartment_id=home.apartment_id,
                                         kinds=list(RESET_WIPES), removed=len(removed))
                changed.append(device)
        return changed + self._config_syncs(self._serving(home), cause)

    def _uninstall_public(self, site: KnownCommunity, building_id: str | None) -> list[Any]:
        """A deleted building's public devices (or, None, every public device of a deleted
        community) go with it, and their MACs are free again."""
        changed: list[Any] = []
        for device_id in site.devices_of(building_id):
            changed += [a for a in self._remove_any(device_id, site=site) if a is not site]
        return changed

    def _remove_any(self, device_id: str, home: KnownApartment | None = None,
                    site: KnownCommunity | None = None) -> list[Any]:
        """An intercom or third-party device of an area that goes: removed, its MAC or lock
        free again."""
        found = self._get(Device, _uuid(device_id)) or self._get(ThirdPartyDevice,
                                                                 _uuid(device_id))
        if isinstance(found, Device) and not found.removed:
            return self._uninstall(found, home, site)
        if isinstance(found, ThirdPartyDevice) and not found.removed:
            return self._remove_third_party(found, home, site)
        if home is not None:
            home.device_removed(device_id=device_id)
        if site is not None:
            site.public_device_removed(device_id=device_id)
        return []

    def _install_monitor(self, home: KnownApartment, data: Mapping[str, Any],
                         envelope: Mapping[str, Any]) -> list[Any]:
        """The indoor monitor an APT was added (or edited) with, as a device of the APT: its
        MAC was kept for this APT when topology asked (`reserve_mac`)."""
        mac_text = data.get("indoor_monitor_mac")
        if not mac_text:
            return []
        community = self._get(KnownCommunity, KnownCommunity.id_for(home.community_id))
        mac = self._get(Mac, Mac.id_for(str(mac_text)))
        if community is None or mac is None:
            log.error("devices cannot install the indoor monitor %s of APT %s: %s unknown",
                      mac_text, home.apartment_id, "its MAC" if community else "its community")
            return []
        settings = checked(DeviceCreate, {
            "type": 2, "mac": mac_text,
            "name": data.get("indoor_monitor_name") or MONITOR_NAME,
            "network_group": data.get("indoor_monitor_network_group") or 1,
            "arming": bool(data.get("indoor_monitor_arming_function")),
            "builtin_relays": list(data.get("indoor_monitor_relays") or [])})
        device = Device.install(sip=new_sip(), installer_id=home.installer_id,
                                community=community, area="apartment",
                                building_id=home.building_id, apartment_id=home.apartment_id,
                                settings=settings)
        mac.assign(str(device.id), home.installer_id, _moment(envelope), home.apartment_id)
        home.device_installed(device_id=str(device.id), monitor=True)
        return [device, mac]

    def _monitor_changed(self, home: KnownApartment, changes: Mapping[str, Any],
                         envelope: Mapping[str, Any]) -> list[Any]:
        """Edit APT changed the indoor monitor's MAC: the old monitor goes, the new comes."""
        if "indoor_monitor_mac" not in changes:
            return []
        changed: list[Any] = [home]
        old = self._get(Device, _uuid(home.monitor_id)) if home.monitor_id else None
        if old is not None and not old.removed:
            if old.mac == changes["indoor_monitor_mac"]:
                return []
            changed += [a for a in self._uninstall(old, home) if a is not home]
        monitor = {"indoor_monitor_name": old.name if old is not None else None,
                   "indoor_monitor_network_group": old.network_group if old else 1,
                   "indoor_monitor_arming_function": old.arming if old else False,
                   "indoor_monitor_relays": old.builtin_relays if old else [],
                   **changes}
        return changed + self._install_monitor(home, monitor, envelope)

    def on_accounts_event(self, envelope: Mapping[str, Any]) -> list[Any]:
        """Installer accounts as accounts announces them: which distributor each belongs to."""
        data = envelope["data"]
        if data.get("role") != INSTALLER:
            return []
        installer_id = envelope["stream_id"]
        if self._get(KnownInstaller, KnownInstaller.id_for(installer_id)):
            return []
        created_by = data.get("created_by")
        return [KnownInstaller(installer_id=installer_id,
                               distributor_id=str(created_by) if created_by else None)]


_THIRD_PARTY: dict[str, tuple[Any, Any]] = {"camera": (CameraCreate, CameraEdit),
                                            "lock": (LockCreate, LockEdit)}


def _third_party_view(device: ThirdPartyDevice) -> dict[str, Any]:
    """A camera's or lock's settings; a camera's password is never answered back."""
    view: dict[str, Any] = {
        "id": str(device.id), "kind": device.kind, "area": device.area,
        "community_id": device.community_id, "building_id": device.building_id,
        "apartment_id": device.apartment_id, "name": device.name,
        "linked_device_id": device.linked_device_id,
        "created_at": device.created_on.isoformat()}
    if device.kind == "camera":
        view.update(rtsp_url=device.rtsp_url, username=device.username,
                    password_set=bool(device.password), allow_monitor=device.allow_monitor,
                    monitoring_terminal=device.monitoring_terminal)
    else:
        view.update(brand=device.brand, lock_id=device.lock_id)
    return view


def _moment(envelope: Mapping[str, Any]) -> datetime:
    """When the event happened (a reservation is judged at the time of the APT's event)."""
    value = envelope.get("occurred_at")
    try:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.now(UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _mac_item(mac: Mac) -> dict[str, Any]:
    return {"mac": mac.mac, "installer_id": mac.installer_id, "device_id": mac.device_id,
            "registered_at": mac.registered_at.isoformat()}


def _command_view(command: Command) -> dict[str, Any]:
    return {"id": str(command.id), "device_id": command.device_id, "mac": command.mac,
            "kind": command.kind, "params": command.params, "state": command.state,
            "detail": command.detail, "queued_at": command.created_on.isoformat(),
            "updated_at": command.history[-1]["at"], "deadline": command.deadline}
