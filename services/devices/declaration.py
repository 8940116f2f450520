"""Devices' declaration: the MAC library and intercom devices (the manual's MAC Library and
Device Management).

It learns the sites from topology's events and the installers' distributors from accounts'
(policies recorded with tracking), and lets a command catch up with both when it names a site
or installer it has not heard of yet.
"""

from __future__ import annotations

from concierge.contexts import BoundedContext, Policy
from concierge.runtime import Wiring
from contracts.accounts import EVENT_SCHEMAS as ACCOUNTS_SCHEMAS
from contracts.devices import EVENT_SCHEMAS
from contracts.topology import EVENT_SCHEMAS as TOPOLOGY_SCHEMAS
from services.devices.application import ACCOUNTS_EVENTS, TOPOLOGY_EVENTS, DevicesApplication
from services.devices.projections import READ_MODELS


def catch_up_on_miss(wiring: Wiring) -> None:
    """A command that names an unknown site reads topology's and accounts' logs up to now."""
    app = wiring.app
    assert isinstance(app, DevicesApplication)

    def catch_up() -> None:
        for source in ("accounts", "topology"):
            for subscription in wiring.subscriptions.get(source, []):
                subscription.catch_up()

    app.catch_up_sources = catch_up


CONTEXT = BoundedContext(
    name="devices",
    service="services.devices.service:DevicesService",
    application=DevicesApplication,
    read_models=lambda app: [model() for model in READ_MODELS],
    policies=[
        Policy("topology", TOPOLOGY_EVENTS, "on_topology_event",
               schemas={kind: TOPOLOGY_SCHEMAS[kind] for kind in TOPOLOGY_EVENTS}),
        Policy("accounts", ACCOUNTS_EVENTS, "on_accounts_event",
               schemas={kind: ACCOUNTS_SCHEMAS[kind] for kind in ACCOUNTS_EVENTS}),
    ],
    event_schemas=EVENT_SCHEMAS,
    started=[catch_up_on_miss],
)
