"""The topology nameko service: communities, buildings and APTs over RPC. Thin by design.

Each entrypoint takes the caller's context first and returns plain JSON-safe data. Commands pass
their payload to the application, which checks it against its contract schema for every caller;
queries load theirs here (a marshmallow error becomes Invalid in `command`).
"""

from __future__ import annotations

from typing import Any

from concierge.rpc import command, rpc
from concierge.runtime import Runtime, ServiceBase
from contracts import load
from services.topology.application import TopologyApplication
from services.topology.declaration import CONTEXT
from services.topology.projections import (
    BuildingListQuery,
    CommunityListQuery,
    PageQuery,
    ResidentListQuery,
)

Ctx = dict[str, Any] | None


class TopologyService(ServiceBase):
    name = CONTEXT.name
    runtime = Runtime(CONTEXT.wire)

    @property
    def app(self) -> TopologyApplication:
        return self.runtime.app

    # -- community --------------------------------------------------------------------------
    @rpc
    @command
    def create_community(self, ctx: Ctx, payload: Any) -> dict[str, str]:
        return {"id": self.app.create_community(payload)}

    @rpc
    @command
    def get_community(self, ctx: Ctx, community_id: Any) -> dict[str, Any]:
        return self.app.get_community(community_id)

    @rpc
    @command
    def unknown_communities(self, ctx: Ctx, community_ids: list[Any]) -> list[str]:
        """Accounts asks, assigning a property manager: which of these are not the caller's."""
        return self.app.unknown_communities(list(community_ids or []))

    @rpc
    @command
    def list_communities(self, ctx: Ctx, query: Any = None) -> dict[str, Any]:
        return self.app.list_communities(**load(CommunityListQuery, query or {}))

    @rpc
    @command
    def edit_community(self, ctx: Ctx, community_id: Any, payload: Any) -> dict[str, Any]:
        return self.app.edit_community(community_id, payload)

    @rpc
    @command
    def delete_community(self, ctx: Ctx, community_id: Any, cascade: Any = False) -> None:
        self.app.delete_community(community_id, cascade=cascade is True)

    # -- building ---------------------------------------------------------------------------
    @rpc
    @command
    def add_building(self, ctx: Ctx, community_id: Any, payload: Any) -> dict[str, str]:
        return {"id": self.app.add_building(community_id, payload)}

    @rpc
    @command
    def list_buildings(self, ctx: Ctx, community_id: Any, query: Any = None) -> dict[str, Any]:
        return self.app.list_buildings(community_id, **load(BuildingListQuery, query or {}))

    @rpc
    @command
    def get_building(self, ctx: Ctx, building_id: Any) -> dict[str, Any]:
        return self.app.get_building(building_id)

    @rpc
    @command
    def edit_building(self, ctx: Ctx, building_id: Any, payload: Any) -> dict[str, Any]:
        return self.app.edit_building(building_id, payload)

    @rpc
    @command
    def delete_building(self, ctx: Ctx, building_id: Any, cascade: Any = False) -> None:
        self.app.delete_building(building_id, cascade=cascade is True)

    # -- apartment and resident -------------------------------------------------------------
    @rpc
    @command
    def add_apartment(self, ctx: Ctx, building_id: Any, payload: Any) -> dict[str, str]:
        return {"id": self.app.add_apartment(building_id, payload)}

    @rpc
    @command
    def get_apartment(self, ctx: Ctx, apartment_id: Any) -> dict[str, Any]:
        return self.app.get_apartment(apartment_id)

    @rpc
    @command
    def edit_apartment(self, ctx: Ctx, apartment_id: Any, payload: Any) -> dict[str, Any]:
        return self.app.edit_apartment(apartment_id, payload)

    @rpc
    @command
    def reset_apartment(self, ctx: Ctx, apartment_id: Any) -> dict[str, Any]:
        return self.app.reset_apartment(apartment_id)

    @rpc
    @command
    def delete_apartment(self, ctx: Ctx, apartment_id: Any) -> None:
        self.app.delete_apartment(apartment_id)

    @rpc
    @command
    def apartment_history(self, ctx: Ctx, apartment_id: Any, query: Any = None
                          ) -> dict[str, Any]:
        return self.app.apartment_history(apartment_id, **load(PageQuery, query or {}))

    @rpc
    @command
    def list_residents(self, ctx: Ctx, community_id: Any, query: Any = None) -> dict[str, Any]:
        return self.app.list_residents(community_id, **load(ResidentListQuery, query or {}))

    @rpc
    @command
    def dashboard(self, ctx: Ctx) -> dict[str, Any]:
        return self.app.dashboard()
