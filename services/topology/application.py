"""Topology's application: the installer's commands and queries on communities, buildings, APTs.

Every call is scoped to the installer in the call context: another installer's community,
building or apartment is "not found", never "forbidden", so ids cannot be probed. A parent and
the child it reserves a name or number for are saved in one transaction, so a concurrent change
to either loses with a conflict instead of both winning. A command's payload is checked against
its contract schema first (its one shape check, whoever calls), then run through `execute`:
concurrent ones commit together (group commit), each with its own outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError

from concierge import context
from concierge.envelope import Publishable
from concierge.envelope import build as build_envelope
from concierge.records import plain
from concierge.store import ServiceApplication
from concierge.vault import Personal, PersonalData
from contracts import checked
from contracts.accounts import INSTALLER_ROLES, PROPERTY_MANAGER
from contracts.errors import Busy, ConciergeError, Conflict, Forbidden, NotFound
from contracts.topology import (
    EVENT_SCHEMAS,
    ApartmentCreate,
    ApartmentEdit,
    BuildingCreate,
    BuildingEdit,
    CommunityCreate,
    CommunityEdit,
)
from services.topology.domain import Apartment, Building, Community
from services.topology.projections import PER_PAGE_DEFAULT, TopologyViews

A = TypeVar("A", Community, Building, Apartment)

_LABELS = {Community: "Community", Building: "Building", Apartment: "APT"}


def _installer() -> UUID:
    """The calling installer's id; topology is managed by installers (manual: Sites), and read
    and kept by property managers in their communities (`_load`, `_not_manager`)."""
    ctx = context.current()
    if ctx.role not in (*INSTALLER_ROLES, PROPERTY_MANAGER):
        raise Forbidden("Only an installer manages communities, buildings and apartments.")
    try:
        return UUID(str(ctx.installer_id))
    except ValueError:
        raise Forbidden("The call carries no installer account.") from None


def _assigned() -> list[str] | None:
    """A property manager's communities (None: every one of the installer's)."""
    communities = context.current().communities
    return None if communities is None else sorted(communities)


def _not_manager() -> None:
    """What only an installer does: a property manager works inside the sites it is given."""
    if context.current().role == PROPERTY_MANAGER:
        raise Forbidden("A property manager does not change its communities' structure.")


def _community_of(aggregate: Any) -> Any:
    return aggregate.id if isinstance(aggregate, Community) else aggregate.community_id


def _when(aggregate: Any, name: str) -> str | None:
    value = getattr(aggregate, name, None)
    return value.isoformat() if value is not None else None


def _as_uuid(item_id: Any) -> UUID | None:
    """The id as a UUID, or None when it cannot be one (which `_load` answers as not found)."""
    try:
        return item_id if isinstance(item_id, UUID) else UUID(str(item_id))
    except ValueError:
        return None


def tenant(attributes: dict[str, Any]) -> str:
    """The key of the APT's tenant an event is about (each reset starts the next tenancy)."""
    return f"tenant:{attributes['apartment_id']}:{int(attributes.get('tenancy') or 0)}"


# The residents' personal fields, sealed with their tenant's key (concierge.vault): a reset or
# a delete destroys it, and from then on no route, replay or rebuild reads them.
PERSONAL_FIELDS = ("first_name", "last_name", "email", "mobile", "landlines", "country")
PERSONAL_DATA = PersonalData({
    "Apartment.ResidentAdded": Personal(tenant, PERSONAL_FIELDS),
    "Apartment.ResidentEdited": Personal(tenant, PERSONAL_FIELDS, nested=("changes",)),
    "Apartment.ApartmentReset": Personal(tenant, ("first_name", "last_name")),
})


class TopologyApplication(ServiceApplication):
    service_name = "topology"

    personal_data = PERSONAL_DATA

    def __init__(self, env: dict[str, str] | None = None, engine: Any = None) -> None:
        super().__init__(env=env, engine=engine)
        # The read models' queries (lists, counts, app status); none without a read side.
        self.views = TopologyViews(engine) if engine is not None else None
        # Keeps an indoor monitor's MAC of the installer's library for an APT (devices'
        # `reserve_mac`), set when wired with devices to ask; None: nothing to ask (a test of
        # topology alone), and the MAC is taken as the contract loaded it.
        self.monitor_macs: Callable[[str, str], Any] | None = None

    # -- loading, scoped to the caller ------------------------------------------------------
    def _load(self, cls: type[A], item_id: Any) -> A:
        """The live aggregate of this type that belongs to the caller, or NotFound."""
        installer = _installer()
        missing = NotFound(f"{_LABELS[cls]} not found.")
        uid = _as_uuid(item_id)
        if uid is None:
            raise missing
        try:
            aggregate = self.repository.get(uid)
        except AggregateNotFoundError:
            raise missing from None
        if (not isinstance(aggregate, cls) or aggregate.installer_id != installer
                or aggregate.deleted
                or not context.current().in_scope(_community_of(aggregate))):
            raise missing
        return aggregate

    def _building_and_community(self, building_id: Any) -> tuple[Building, Community]:
        self.load_related(_as_uuid(building_id), "community_id")
        building = self._load(Building, building_id)
        return building, self._load(Community, building.community_id)

    def _apartment_tree(self, apartment_id: Any) -> tuple[Apartment, Building, Community]:
        self.load_related(_as_uuid(apartment_id), "building_id", "community_id")
        apartment = self._load(Apartment, apartment_id)
        building, community = self._building_and_community(apartment.building_id)
        return apartment, building, community

    # -- community --------------------------------------------------------------------------
    def create_community(self, payload: dict[str, Any]) -> str:
        _not_manager()
        payload = checked(CommunityCreate, payload)

        def command() -> tuple[str, list[Any]]:
            community = Community.create(installer_id=_installer(), **payload)
            return str(community.id), [community]

        return self.execute(command)

    def edit_community(self, community_id: Any, payload: dict[str, Any]) -> dict[str, Any]:
        """The community as the edit left it (the answer a retry gets again)."""
        _not_manager()
        payload = checked(CommunityEdit, payload)

        def command() -> tuple[dict[str, Any], list[Any]]:
            community = self._load(Community, community_id)
            community.edit(**payload)
            return self._community_view(community), [community]

        return self.execute(command)

    def delete_community(self, community_id: Any, cascade: bool = False) -> None:
        """Refused (Conflict, saying what it holds) while the community holds buildings, unless
        `cascade`: then each building goes first with its APTs (a command each, so a large
        community is never one huge transaction; a retry after a failure goes on where it
        stopped), and every other context reacts to those events (accounts closes the
        residents' accounts, devices removes the devices and frees their MACs)."""
        _not_manager()
        if cascade:
            community = self._load(Community, community_id)
            for building_id in list(community.buildings):
                self.delete_building(building_id, cascade=True)

        def command() -> tuple[None, list[Any]]:
            community = self._load(Community, community_id)
            if community.buildings:
                raise self._holds(community)
            community.delete()
            return None, [community]

        self.execute(command)

    def _holds(self, community: Community) -> Conflict:
        buildings = len(community.buildings)
        apartments = sum(len(self._load(Building, b).apartments) for b in community.buildings)
        message = (f"The community still holds {buildings} building(s) and {apartments} APT(s):"
                   " delete them first, or confirm with cascade=true to delete them with it.")
        return Conflict(message, {"cascade": [message]})

    # -- building ---------------------------------------------------------------------------
    def add_building(self, community_id: Any, payload: dict[str, Any]) -> str:
        _not_manager()
        payload = checked(BuildingCreate, payload)

        def command() -> tuple[str, list[Any]]:
            community = self._load(Community, community_id)
            building = community.add_building(**payload)
            return str(building.id), [community, building]

        return self.execute(command)

    def edit_building(self, building_id: Any, payload: dict[str, Any]) -> dict[str, Any]:
        _not_manager()
        payload = checked(BuildingEdit, payload)

        def command() -> tuple[dict[str, Any], list[Any]]:
            building, community = self._building_and_community(building_id)
            building.edit(community, **payload)
            return self._building_view(building), [building, community]

        return self.execute(command)

    def delete_building(self, building_id: Any, cascade: bool = False) -> None:
        """Refused (Conflict) while it holds APTs, unless `cascade`: then its APTs are deleted
        with it, in the same transaction."""
        _not_manager()

        def command() -> tuple[None, list[Any]]:
            building, community = self._building_and_community(building_id)
            changed: list[Any] = [building, community]
            if building.apartments and not cascade:
                message = (f"The building still holds {len(building.apartments)} APT(s): "
                           "delete them first, or confirm with cascade=true to delete them "
                           "with it.")
                raise Conflict(message, {"cascade": [message]})
            held = self.get_many(list(building.apartments.values()))
            for apartment_id in list(building.apartments.values()):
                apartment = held.get(apartment_id)
                if apartment is None:
                    apartment = self._load(Apartment, apartment_id)
                apartment.delete(building)
                changed.append(apartment)
            building.delete(community)
            return None, changed

        self.execute(command)

    # -- apartment --------------------------------------------------------------------------
    def add_apartment(self, building_id: Any, payload: dict[str, Any]) -> str:
        _not_manager()
        payload = checked(ApartmentCreate, payload)
        apartment_id = uuid4()
        if payload.get("indoor_monitor_mac") and self.monitor_macs is not None:
            # Everything topology itself would refuse first, then the MAC: an APT is never
            # recorded with a monitor whose MAC is not the installer's or is in use.
            building, community = self._building_and_community(building_id)
            building.check_new_apartment(community, **payload)
            self._keep_monitor_mac(payload["indoor_monitor_mac"], apartment_id)

        def command() -> tuple[str, list[Any]]:
            building, community = self._building_and_community(building_id)
            apartment = building.add_apartment(community, apartment_id=apartment_id, **payload)
            return str(apartment.id), [building, apartment]

        return self.execute(command)

    def _keep_monitor_mac(self, mac: str, apartment_id: UUID) -> None:
        """Devices keeps the MAC for this APT, or says why not, named as this API names it."""
        assert self.monitor_macs is not None
        try:
            self.monitor_macs(mac, str(apartment_id))
        except ConciergeError as exc:
            errors = dict(exc.errors or {})
            if "mac" in errors:
                errors["indoor_monitor_mac"] = errors.pop("mac")
            raise type(exc)(exc.detail, errors or None) from None
        except Exception as exc:
            raise Busy("The devices service did not answer; try again in a moment.") from exc

    def edit_apartment(self, apartment_id: Any, payload: dict[str, Any]) -> dict[str, Any]:
        payload = checked(ApartmentEdit, payload)
        if payload.get("indoor_monitor_mac") and self.monitor_macs is not None:
            apartment = self._load(Apartment, apartment_id)
            if payload["indoor_monitor_mac"] != apartment.indoor_monitor_mac:
                self._keep_monitor_mac(payload["indoor_monitor_mac"], apartment.id)

        # Linked sites are accounts' knowledge; until it is asked, no resident counts as linked.
        def command() -> tuple[dict[str, Any], list[Any]]:
            apartment, building, community = self._apartment_tree(apartment_id)
            apartment.edit(building, community, **payload)
            return self._apartment_view(apartment), [apartment, building]

        return self.execute(command)

    def reset_apartment(self, apartment_id: Any) -> dict[str, Any]:
        def command() -> tuple[dict[str, Any], list[Any]]:
            apartment = self._load(Apartment, apartment_id)
            if not context.current().may(apartment.community_id, "delete_account"):
                raise Forbidden("Resetting an APT removes its resident's account: it takes "
                                "the Delete Account Permission in this community.")
            apartment.reset()
            return self._apartment_view(apartment), [apartment]

        return self.execute(command)

    def delete_apartment(self, apartment_id: Any) -> None:
        _not_manager()

        def command() -> tuple[None, list[Any]]:
            apartment, building, _community = self._apartment_tree(apartment_id)
            apartment.delete(building)
            return None, [apartment, building]

        self.execute(command)

    # -- reactions to other contexts' events ------------------------------------------------
    def on_devices_event(self, envelope: dict[str, Any]) -> list[Any]:
        """Devices wiped an APT's credentials for its reset: the APT's history records it."""
        data = envelope["data"]
        try:
            apartment = self.repository.get(UUID(str(data["apartment_id"])))
        except (AggregateNotFoundError, ValueError, KeyError):
            return []
        if not isinstance(apartment, Apartment) or apartment.deleted:
            return []
        apartment.note_credentials_wiped(list(data.get("kinds") or []),
                                         int(data.get("removed") or 0))
        return [apartment]

    # -- queries ----------------------------------------------------------------------------
    def get_community(self, community_id: Any) -> dict[str, Any]:
        return self._community_view(self._load(Community, community_id))

    def _community_view(self, community: Community) -> dict[str, Any]:
        counts = self.views.community_counts(str(community.id)) if self.views else {}
        return plain({
            "id": community.id,
            "installer_id": community.installer_id,
            **community.settings(),
            "building_count": community.building_count,
            "apartment_count": counts.get("apartment_count", 0),
            "resident_count": counts.get("resident_count", 0),
            "device_count": counts.get("device_count", 0),
            "property_manager_count": counts.get("property_manager_count", 0),
            "property_managers": counts.get("property_managers", []),
            "created_at": _when(community, "created_on"),
            "modified_at": _when(community, "modified_on"),
        })

    def get_building(self, building_id: Any) -> dict[str, Any]:
        return self._building_view(self._load(Building, building_id))

    def _building_view(self, building: Building) -> dict[str, Any]:
        return plain({
            "id": building.id,
            "community_id": building.community_id,
            "installer_id": building.installer_id,
            **building.settings(),
            "apartment_count": building.apartment_count,
            "created_at": _when(building, "created_on"),
            "modified_at": _when(building, "modified_on"),
        })

    def get_apartment(self, apartment_id: Any) -> dict[str, Any]:
        """The APT, its resident, and the resident's app status from the read model."""
        return self._apartment_view(self._load(Apartment, apartment_id))

    def _apartment_view(self, apartment: Apartment) -> dict[str, Any]:
        status = self.views.app_status(str(apartment.id)) if self.views else {}
        return plain({
            "id": apartment.id,
            "building_id": apartment.building_id,
            "community_id": apartment.community_id,
            "installer_id": apartment.installer_id,
            **apartment.settings(),
            "resident": apartment.resident(),
            "app_status": status.get("app_status"),
            "master_account_id": status.get("master_account_id"),
            "created_at": _when(apartment, "created_on"),
            "modified_at": _when(apartment, "modified_on"),
        })

    def apartment_history(self, apartment_id: Any, page: int = 1,
                          per_page: int = PER_PAGE_DEFAULT) -> dict[str, Any]:
        """A page of the APT's events, oldest first: what changed, when, and who did it.

        An aggregate's versions run 1, 2, 3, ... without gaps, so page `p` is the versions
        after `(p - 1) * per_page` and its version is the total: one page is read, not the
        whole stream (a busy APT had 1,942 events in one answer).
        """
        apartment = self._load(Apartment, apartment_id)
        publishable = Publishable(EVENT_SCHEMAS)
        items = []
        for record in self.stream(apartment.id, after=(page - 1) * per_page, limit=per_page):
            envelope = build_envelope(self.service_name, record, publishable=publishable)
            items.append({
                "type": envelope["type"],
                "version": envelope["stream_version"],
                "occurred_at": envelope["occurred_at"],
                "actor": envelope["actor"],
                "data": envelope["data"],
            })
        return {"items": items, "total": apartment.version, "page": page,
                "per_page": per_page}

    def unknown_communities(self, community_ids: list[Any]) -> list[str]:
        """Those of the named communities that are not the caller's live ones."""
        _not_manager()
        installer = _installer()
        unknown = []
        for community_id in community_ids:
            uid = _as_uuid(community_id)
            found = self._get_any(uid) if uid is not None else None
            if (not isinstance(found, Community) or found.installer_id != installer
                    or found.deleted):
                unknown.append(str(community_id))
        return unknown

    def _get_any(self, uid: UUID) -> Any:
        try:
            return self.repository.get(uid)
        except AggregateNotFoundError:
            return None

    def list_communities(self, **query: Any) -> dict[str, Any]:
        return self._views().list_communities(str(_installer()), only=_assigned(), **query)

    def list_buildings(self, community_id: Any, **query: Any) -> dict[str, Any]:
        community = self._load(Community, community_id)
        return self._views().list_buildings(str(community.installer_id), str(community.id),
                                            **query)

    def list_residents(self, community_id: Any, **query: Any) -> dict[str, Any]:
        community = self._load(Community, community_id)
        if query.get("building_id") is not None:
            query["building_id"] = str(query["building_id"])
            if _as_uuid(query["building_id"]) not in {_as_uuid(b) for b in community.buildings}:
                # Not a building of this community: as for one that exists nowhere, whose
                # ever it is (its APT count is not the caller's to learn).
                return {"items": [], "total": 0, "page": query.get("page", 1),
                        "per_page": query.get("per_page", PER_PAGE_DEFAULT)}
        return self._views().list_residents(str(community.installer_id), str(community.id),
                                            **query)

    def dashboard(self) -> dict[str, Any]:
        return self._views().dashboard(str(_installer()), only=_assigned())

    def _views(self) -> TopologyViews:
        if self.views is None:
            raise RuntimeError("this application was built without a read side (no engine)")
        return self.views
