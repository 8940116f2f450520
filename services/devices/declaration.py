"""Devices' declaration: the MAC library and intercom devices (the manual's MAC Library and
Device Management).

It learns the sites from topology's events and the installers' distributors from accounts'
(policies recorded with tracking), and lets a command catch up with both when it names a site
or installer it has not heard of yet.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from concierge.config import Settings
from concierge.contexts import BoundedContext, Policy
from concierge.ingest import IngestLoop
from concierge.leader import LeaderTask
from concierge.locks import leader_lock
from concierge.runtime import Wiring
from contracts.accounts import EVENT_SCHEMAS as ACCOUNTS_SCHEMAS
from contracts.devices import EVENT_SCHEMAS
from contracts.notify import EVENT_SCHEMAS as NOTIFY_SCHEMAS
from contracts.topology import EVENT_SCHEMAS as TOPOLOGY_SCHEMAS
from services.devices.application import (
    ACCOUNTS_EVENTS,
    NOTIFY_EVENTS,
    TOPOLOGY_EVENTS,
    DevicesApplication,
)
from services.devices.projections import READ_MODELS
from services.devices.traffic import INGEST, OfflineDetector, TrafficIngest, create_tables

log = logging.getLogger(__name__)


def catch_up_on_miss(wiring: Wiring) -> None:
    """A command that names an unknown site reads topology's and accounts' logs up to now."""
    app = wiring.app
    assert isinstance(app, DevicesApplication)

    def catch_up() -> None:
        for source in ("accounts", "topology"):
            for subscription in wiring.subscriptions.get(source, []):
                subscription.catch_up()

    def sync_sites() -> None:
        for subscription in wiring.subscriptions.get("topology", []):
            try:
                subscription.sync()
            except Exception as exc:  # topology unreachable: answer from what is known
                log.warning("devices cannot read topology's log before a read (%s)",
                            type(exc).__name__)

    app.catch_up_sources = catch_up
    app.sync_sites = sync_sites


def start_traffic(wiring: Wiring) -> None:
    """Device traffic: the ingest of `devices.traffic` (every replica consumes) and the
    offline detector (one replica at a time)."""
    app = wiring.app
    assert isinstance(app, DevicesApplication)
    settings = wiring.settings
    create_tables(wiring.engine)
    ingest = TrafficIngest(wiring.engine, app.devices_came_online,
                           replay_seconds=settings.traffic_replay_seconds,
                           acknowledged=app.commands_acknowledged)
    loop = IngestLoop(settings.amqp_uri, f"{settings.amqp_prefix}{INGEST}", ingest.handle)
    wiring.add_loop(loop)
    detector = OfflineDetector(wiring.engine, app.devices_went_offline, app.devices_came_online,
                               offline_after=settings.offline_after,
                               retention_days=settings.traffic_retention_days,
                               acknowledged=app.commands_acknowledged,
                               expire=app.expire_commands)
    wiring.add_loop(LeaderTask("offline detector", leader_lock(
        "devices", settings, wiring.engine, "offline-detector"), detector.step,
        idle_seconds=min(1.0, settings.offline_after / 10)))


# MACs in the demo installer's library, so that a newcomer can add a device straight away.
DEMO_MACS = ("0C1105000001", "0C1105000002", "0C1105000003", "0C1105000004", "0C1105000005")


DEMO_SITE = "Demo Court"
# The demo installer's door phones in Demo Court's building A, the first demo MACs.
DEMO_DEVICES = (("Gate", 0, DEMO_MACS[0]), ("Lobby", 0, DEMO_MACS[1]),
                ("Back door", 50, DEMO_MACS[2]))


def demo_macs(settings: Settings) -> list[str]:
    """`concierge up`: the bootstrap distributor registers a few MACs to the demo installer
    (accounts' demo made both; registering again changes nothing). In the embedded mode a
    demo site's door phones then send heartbeats and open doors now and then, so that the
    device list shows statuses and the door log fills without anything else running."""
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
        principal = rpc.accounts.authenticate(mine["token"])
        installer = principal["installer_id"]
        ctx = {"actor": f"distributor:{distributor}", "role": "distributor",
               "installer_id": None, "account_id": dist["account_id"]}
        rpc.devices.import_macs(ctx, installer, {"csv": "\n".join(DEMO_MACS)})
        lines = [f"MAC library:  {', '.join(DEMO_MACS[len(DEMO_DEVICES):])} (the demo "
                 "installer's, for devices)"]
        if settings.embedded_bus:
            mine_ctx = {"actor": f"installer:{username}", "role": "installer",
                        "installer_id": installer, "account_id": principal["account_id"]}
            macs = demo_site(rpc, mine_ctx)
            from concierge import green

            green.spawn(demo_traffic, settings, macs)
            lines.append(f"devices:      {DEMO_SITE} has {len(macs)} door phones online "
                         "(simulated heartbeats and door openings; they answer reboots and "
                         "other commands)")
    return lines


def demo_site(rpc: Any, ctx: dict[str, Any]) -> list[str]:
    """Demo Court, its building A and the demo door phones, made once; their MACs."""
    found = rpc.topology.list_communities(ctx, {"q": DEMO_SITE})["items"]
    if found:
        community = found[0]["id"]
        building = rpc.topology.list_buildings(ctx, community, {})["items"][0]["id"]
    else:
        community = rpc.topology.create_community(
            ctx, {"name": DEMO_SITE, "feature_plan": "premium", "time_zone": "Europe/Paris"})["id"]
        building = rpc.topology.add_building(ctx, community, {"name": "A"})["id"]
    have = {d["mac"] for d in rpc.devices.list_devices(ctx, "building", building,
                                                       {"per_page": 100})["items"]}
    for name, kind, mac in DEMO_DEVICES:
        if mac not in have:
            rpc.devices.add_device(ctx, "building", building,
                                   {"type": kind, "mac": mac, "name": name})
    return [mac for _, _, mac in DEMO_DEVICES]


def demo_traffic(settings: Settings, macs: list[str]) -> None:
    """What a few real door phones send: status once, then a heartbeat per interval each
    and, now and then, a door opened by PIN, card or face (contracts/traffic.py); and what
    they answer to the commands pushed to them: "received", then "succeeded"."""
    import json
    import random
    import time

    import kombu

    from concierge.devicesim import message
    from concierge.ingest import ingest_exchange
    from concierge.mailboxes import Mailboxes
    from contracts.traffic import PUSH_EXCHANGE, PUSH_QUEUE_ARGUMENTS, push_queue_name

    rng = random.Random()
    prefix = settings.amqp_prefix
    exchange = ingest_exchange(f"{prefix}{INGEST}")
    mailboxes = Mailboxes(settings.amqp_uri, f"{prefix}{PUSH_EXCHANGE}",
                          lambda mac: push_queue_name(mac, prefix), PUSH_QUEUE_ARGUMENTS)
    with kombu.Connection(settings.amqp_uri) as conn:
        producer = kombu.Producer(conn.channel(), exchange=exchange)

        def send(mac: str, kind: str, **fields: Any) -> None:
            producer.publish(json.dumps(message(kind, rng, **fields)).encode(),
                             routing_key=f"{mac}.{kind}", serializer=None,
                             content_type="application/json", content_encoding="binary")

        def answer(mac: str) -> Any:
            def on_push(body: Any, push_message: Any) -> None:
                raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
                command_id = str(json.loads(raw)["command_id"])
                for outcome in ("received", "succeeded"):
                    send(mac, "ack", command_id=command_id, outcome=outcome, detail=None)
                push_message.ack()

            return on_push

        consumers = [kombu.Consumer(conn.channel(), queues=[mailboxes.queue(mac)],
                                    callbacks=[answer(mac)], accept=None) for mac in macs]
        for consumer in consumers:
            consumer.consume()
        for mac in macs:
            send(mac, "status")
        beat = 0
        while True:
            for mac in macs:
                send(mac, "heartbeat")
            if beat % 3 == 0:
                send(rng.choice(macs), "door")
            beat += 1
            until = time.monotonic() + settings.heartbeat_seconds
            while (left := until - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=min(left, 1.0))


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
        # The pushes notify delivered: a command is "sent", or expired before it could be.
        Policy("notify", NOTIFY_EVENTS, "on_notify_event",
               schemas={kind: NOTIFY_SCHEMAS[kind] for kind in NOTIFY_EVENTS}),
    ],
    event_schemas=EVENT_SCHEMAS,
    options=lambda settings: {"offline_after": settings.offline_after},
    started=[catch_up_on_miss, start_traffic],
    demo="services.devices.declaration:demo_macs",
)
