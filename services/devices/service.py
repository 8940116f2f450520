"""The devices nameko service: the MAC library and intercom devices over RPC. Thin by design:
commands pass their payload to the application, which checks it; queries load theirs here."""

from __future__ import annotations

from typing import Any

from concierge.rpc import command, rpc
from concierge.runtime import Runtime, ServiceBase
from contracts import load
from services.devices.application import DevicesApplication
from services.devices.declaration import CONTEXT
from services.devices.projections import (
    CommandQuery,
    DeviceListQuery,
    HistoryQuery,
    MacListQuery,
    ThirdPartyListQuery,
    TrafficLogQuery,
)

Ctx = dict[str, Any] | None


class DevicesService(ServiceBase):
    name = CONTEXT.name
    runtime = Runtime(CONTEXT.wire)

    @property
    def app(self) -> DevicesApplication:
        return self.runtime.app

    # -- MAC library ------------------------------------------------------------------------
    @rpc
    @command
    def register_mac(self, ctx: Ctx, installer_id: Any, payload: Any) -> dict[str, Any]:
        return self.app.register_mac(installer_id, payload)

    @rpc
    @command
    def import_macs(self, ctx: Ctx, installer_id: Any, payload: Any) -> dict[str, Any]:
        return self.app.import_macs(installer_id, payload)

    @rpc
    @command
    def reserve_mac(self, ctx: Ctx, mac: Any, apartment_id: Any) -> dict[str, Any]:
        return self.app.reserve_mac(mac, apartment_id)

    @rpc
    @command
    def list_macs(self, ctx: Ctx, query: Any = None) -> dict[str, Any]:
        return self.app.list_macs(**load(MacListQuery, query or {}))

    @rpc
    @command
    def remove_mac(self, ctx: Ctx, mac: Any) -> None:
        self.app.remove_mac(mac)

    # -- devices ----------------------------------------------------------------------------
    @rpc
    @command
    def add_device(self, ctx: Ctx, area: Any, area_id: Any, payload: Any) -> dict[str, Any]:
        return self.app.add_device(str(area), area_id, payload)

    @rpc
    @command
    def import_devices(self, ctx: Ctx, area: Any, area_id: Any, payload: Any
                       ) -> dict[str, Any]:
        return self.app.import_devices(str(area), area_id, payload)

    @rpc
    @command
    def get_device(self, ctx: Ctx, device_id: Any) -> dict[str, Any]:
        return self.app.get_device(device_id)

    @rpc
    @command
    def edit_device(self, ctx: Ctx, device_id: Any, payload: Any) -> dict[str, Any]:
        return self.app.edit_device(device_id, payload)

    @rpc
    @command
    def remove_device(self, ctx: Ctx, device_id: Any) -> None:
        self.app.remove_device(device_id)

    @rpc
    @command
    def list_devices(self, ctx: Ctx, area: Any, area_id: Any, query: Any = None
                     ) -> dict[str, Any]:
        return self.app.list_devices(str(area), area_id, **load(DeviceListQuery, query or {}))

    @rpc
    @command
    def device_history(self, ctx: Ctx, device_id: Any, query: Any = None) -> dict[str, Any]:
        return self.app.device_history(device_id, **load(HistoryQuery, query or {}))

    @rpc
    @command
    def traffic_log(self, ctx: Ctx, kind: Any, scope: Any, scope_id: Any, query: Any = None
                    ) -> dict[str, Any]:
        return self.app.traffic_log(str(kind), str(scope), scope_id,
                                    **load(TrafficLogQuery, query or {}))

    # -- remote operations ------------------------------------------------------------------
    @rpc
    @command
    def queue_command(self, ctx: Ctx, device_id: Any, payload: Any) -> dict[str, Any]:
        return self.app.queue_command(device_id, payload)

    @rpc
    @command
    def get_command(self, ctx: Ctx, command_id: Any) -> dict[str, Any]:
        return self.app.get_command(command_id)

    @rpc
    @command
    def list_commands(self, ctx: Ctx, device_id: Any, query: Any = None) -> dict[str, Any]:
        return self.app.list_commands(device_id, **load(CommandQuery, query or {}))

    # -- resident credentials ---------------------------------------------------------------
    @rpc
    @command
    def add_credential(self, ctx: Ctx, apartment_id: Any, payload: Any) -> dict[str, Any]:
        return self.app.add_credential(apartment_id, payload)

    @rpc
    @command
    def list_credentials(self, ctx: Ctx, apartment_id: Any) -> dict[str, Any]:
        return self.app.list_credentials(apartment_id)

    @rpc
    @command
    def remove_credential(self, ctx: Ctx, apartment_id: Any, credential_id: Any) -> None:
        self.app.remove_credential(apartment_id, credential_id)

    # -- third-party cameras and locks ----------------------------------------------------
    @rpc
    @command
    def add_third_party(self, ctx: Ctx, kind: Any, area: Any, area_id: Any, payload: Any
                        ) -> dict[str, Any]:
        return self.app.add_third_party(str(kind), str(area), area_id, payload)

    @rpc
    @command
    def list_third_party(self, ctx: Ctx, kind: Any, area: Any, area_id: Any,
                         query: Any = None) -> dict[str, Any]:
        return self.app.list_third_party(str(kind), str(area), area_id,
                                         **load(ThirdPartyListQuery, query or {}))

    @rpc
    @command
    def get_third_party(self, ctx: Ctx, kind: Any, device_id: Any) -> dict[str, Any]:
        return self.app.get_third_party(str(kind), device_id)

    @rpc
    @command
    def edit_third_party(self, ctx: Ctx, kind: Any, device_id: Any, payload: Any
                         ) -> dict[str, Any]:
        return self.app.edit_third_party(str(kind), device_id, payload)

    @rpc
    @command
    def remove_third_party(self, ctx: Ctx, kind: Any, device_id: Any) -> None:
        self.app.remove_third_party(str(kind), device_id)
