"""Topology's declaration: communities, buildings, apartments and residents (the manual's Sites)."""

from __future__ import annotations

from typing import Any

from concierge import context
from concierge.contexts import BoundedContext, Policy
from concierge.runtime import Wiring
from contracts.devices import EVENT_SCHEMAS as DEVICES_SCHEMAS
from contracts.topology import EVENT_SCHEMAS
from services.topology.application import TopologyApplication
from services.topology.projections import READ_MODELS


def ask_devices_for_monitor_macs(wiring: Wiring) -> None:
    """An APT's indoor monitor MAC must be in the installer's MAC library and free: devices
    keeps it for the APT before topology records it (over RPC, as the caller)."""
    remote = wiring.remote
    if remote is None:
        return  # wired on a test's logs: no devices to ask

    def keep(mac: str, apartment_id: str) -> Any:
        return remote.call("devices", "reserve_mac", context.current().to_dict(), mac,
                           apartment_id)

    app = wiring.app
    assert isinstance(app, TopologyApplication)
    app.monitor_macs = keep


CONTEXT = BoundedContext(
    name="topology",
    service="services.topology.service:TopologyService",
    application=TopologyApplication,
    read_models=lambda app: [model() for model in READ_MODELS],
    event_schemas=EVENT_SCHEMAS,
    policies=[Policy("devices", {"CredentialsWiped"}, "on_devices_event",
                     schemas={"CredentialsWiped": DEVICES_SCHEMAS["CredentialsWiped"]})],
    started=[ask_devices_for_monitor_macs],
)
