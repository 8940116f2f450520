"""Devices' declaration: the MAC library and intercom devices (the manual's MAC Library and
Device Management).

It learns the sites from topology's events and the installers' distributors from accounts'
(policies recorded with tracking), and lets a command catch up with both when it names a site
or installer it has not heard of yet.
"""

from __future__ import annotations

from concierge.config import Settings
from concierge.contexts import BoundedContext, Policy
from concierge.ingest import IngestLoop
from concierge.leader import LeaderTask
from concierge.locks import leader_lock
from concierge.runtime import Wiring
from contracts.accounts import EVENT_SCHEMAS as ACCOUNTS_SCHEMAS
from contracts.devices import EVENT_SCHEMAS
from contracts.topology import EVENT_SCHEMAS as TOPOLOGY_SCHEMAS
from services.devices.application import ACCOUNTS_EVENTS, TOPOLOGY_EVENTS, DevicesApplication
from services.devices.projections import READ_MODELS
from services.devices.traffic import INGEST, OfflineDetector, TrafficIngest, create_tables


def catch_up_on_miss(wiring: Wiring) -> None:
    """A command that names an unknown site reads topology's and accounts' logs up to now."""
    app = wiring.app
    assert isinstance(app, DevicesApplication)

    def catch_up() -> None:
        for source in ("accounts", "topology"):
            for subscription in wiring.subscriptions.get(source, []):
                subscription.catch_up()

    app.catch_up_sources = catch_up


def start_traffic(wiring: Wiring) -> None:
    """Device traffic: the ingest of `devices.traffic` (every replica consumes) and the
    offline detector (one replica at a time)."""
    app = wiring.app
    assert isinstance(app, DevicesApplication)
    settings = wiring.settings
    create_tables(wiring.engine)
    ingest = TrafficIngest(wiring.engine, app.devices_came_online,
                           replay_seconds=settings.traffic_replay_seconds)
    loop = IngestLoop(settings.amqp_uri, f"{settings.amqp_prefix}{INGEST}", ingest.handle)
    wiring.add_loop(loop)
    detector = OfflineDetector(wiring.engine, app.devices_went_offline, app.devices_came_online,
                               offline_after=settings.offline_after,
                               retention_days=settings.traffic_retention_days)
    wiring.add_loop(LeaderTask("offline detector", leader_lock(
        "devices", settings, wiring.engine, "offline-detector"), detector.step,
        idle_seconds=min(1.0, settings.offline_after / 10)))


# MACs in the demo installer's library, so that a newcomer can add a device straight away.
DEMO_MACS = ("0C1105000001", "0C1105000002", "0C1105000003", "0C1105000004", "0C1105000005")


def demo_macs(settings: Settings) -> list[str]:
    """`concierge up`: the bootstrap distributor registers a few MACs to the demo installer
    (accounts' demo made both; registering again changes nothing)."""
    from concierge.rpc import ClusterRpcProxy

    # The demo's logins are accounts' (its declaration); the calls are over RPC as any
    # client's. Demo tooling only: no service imports another's code at run time.
    from services.accounts.declaration import DEMO_INSTALLER, parse_bootstrap_distributor

    distributor, password = parse_bootstrap_distributor(settings.bootstrap_distributor)
    username, installer_password, _ = DEMO_INSTALLER
    with ClusterRpcProxy(settings.nameko_config(), timeout=30) as rpc:
        session = rpc.accounts.login({"username": distributor, "password": password})
        dist = rpc.accounts.authenticate(session["token"])
        mine = rpc.accounts.login({"username": username, "password": installer_password})
        installer = rpc.accounts.authenticate(mine["token"])["installer_id"]
        ctx = {"actor": f"distributor:{distributor}", "role": "distributor",
               "installer_id": None, "account_id": dist["account_id"]}
        rpc.devices.import_macs(ctx, installer, {"csv": "\n".join(DEMO_MACS)})
    return [f"MAC library:  {', '.join(DEMO_MACS)} (the demo installer's, for devices)"]


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
    options=lambda settings: {"offline_after": settings.offline_after},
    started=[catch_up_on_miss, start_traffic],
    demo="services.devices.declaration:demo_macs",
)
