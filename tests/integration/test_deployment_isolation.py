"""Two deployments on one RabbitMQ virtual host and one PostgreSQL database, told apart by
their names alone (`CONCIERGE_DEPLOYMENT`): neither sees the other's writes, emails, leaders,
read-model locks or broker objects (issue 14, finding 6).

Each deployment runs accounts, topology, notify and the gateway, every one its own process.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import kombu
import psycopg
import pytest

from bench.cluster import Platform
from concierge.projection import advisory_key
from tests.support.harness import eventually, free_port

APARTMENTS = 4
TOPOLOGY_MODELS = ["topology_sites", "topology_buildings", "topology_residents"]




@pytest.fixture(scope="module")
def deployments(rabbit_uri: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[dict[str, Platform]]:
    """Both deployments, shared by the tests of this module (each writes in its own site)."""
    tmp_path = tmp_path_factory.mktemp("isolation")
    tag = uuid.uuid4().hex[:6]
    platforms: dict[str, Platform] = {}
    try:
        for side in ("a", "b"):
            name = f"iso{side}{tag}"
            # A generous deadline: one test below holds a deployment's commit on purpose.
            platforms[name] = Platform(
                rabbit_uri, postgres_url, tmp_path / name / "var", free_port(),
                deployment=name, log_dir=tmp_path / name / "logs",
                extra_env={"CONCIERGE_GATEWAY_TIMEOUT_SECONDS": "30"}).start()
        yield platforms
    finally:
        for platform in platforms.values():
            platform.stop()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            for name in platforms:
                for (schema,) in conn.execute("SELECT nspname FROM pg_namespace "
                                              "WHERE nspname LIKE %s", (f"{name}\\_%",)):
                    conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def installer(platform: Platform) -> str:
    """The same installer name in each deployment: each has its own accounts."""
    distributor = platform.distributor_token()
    status, body = platform.call("POST", "/api/v1/installers",
                                 {"username": "installer", "password": "installer-pw-1",
                                  "email": f"installer@{platform.deployment}.example.org"},
                                 distributor)
    assert status in (201, 409), (platform.deployment, status, body)
    status, session = platform.call("POST", "/api/v1/auth/login",
                                    {"username": "installer", "password": "installer-pw-1"})
    assert status == 200, (platform.deployment, status, session)
    return str(session["token"])


def add_apartment(platform: Platform, token: str, building: str, number: int) -> int:
    status, body = platform.call(
        "POST", f"/api/v1/buildings/{building}/apartments",
        {"number": str(number), "floor": 1, "name": f"APT {number}",
         "resident": {"first_name": "Res", "last_name": f"R{number}",
                      "email": f"r{number}@{platform.deployment}.example.org"}}, token)
    assert status == 201, (platform.deployment, status, body)
    return status


def mail_recipients(platform: Platform) -> list[str]:
    folder = platform.data_dir / "mail"
    found = []
    for mail in sorted(folder.glob("*.eml")) if folder.exists() else []:
        to = next(line for line in mail.read_text().splitlines() if line.startswith("To:"))
        found.append(to.split(":", 1)[1].strip())
    return found


def residents(platform: Platform, token: str, community: str) -> list[dict[str, Any]]:
    status, page = platform.call("GET", f"/api/v1/communities/{community}/residents"
                                 "?per_page=100", None, token)
    assert status == 200, page
    return page["items"]


def advisory_holders(postgres_url: str) -> dict[str, int]:
    """Granted advisory locks by the application name of the session holding them."""
    with psycopg.connect(postgres_url) as conn:
        return dict(conn.execute(
            "SELECT a.application_name, count(*) FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
            "GROUP BY 1").fetchall())


def waiting_for_advisory_lock(postgres_url: str, application_name: str) -> bool:
    with psycopg.connect(postgres_url) as conn:
        return bool(conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name = %s",
            (application_name,)).fetchone()[0])  # type: ignore[index]


def test_two_deployments_on_one_vhost_and_one_database_never_meet(
        deployments: dict[str, Platform], rabbit_uri: str, postgres_url: str) -> None:
    sites: dict[str, tuple[str, str, str]] = {}
    for name, platform in deployments.items():
        token = installer(platform)
        status, community = platform.call(
            "POST", "/api/v1/communities",
            {"name": f"{name} Towers", "feature_plan": "premium", "time_zone": "UTC"}, token)
        assert status == 201, (name, status, community)
        status, building = platform.call(
            "POST", f"/api/v1/communities/{community['id']}/buildings", {"name": "A"}, token)
        assert status == 201, (name, status, building)
        for number in range(101, 101 + APARTMENTS):
            add_apartment(platform, token, building["id"], number)
        sites[name] = (token, community["id"], building["id"])

    for name, platform in deployments.items():
        token, community, _ = sites[name]
        _, listing = platform.call("GET", "/api/v1/communities?per_page=100", None, token)
        assert f"{name} Towers" in [c["name"] for c in listing["items"]]
        assert all(c["name"].startswith(name) for c in listing["items"]), listing
        # Each resident got a master account: topology's relay published to this deployment's
        # accounts, whose relay published back to this deployment's topology.
        eventually(lambda p=platform, t=token, c=community: len(
            [r for r in residents(p, t, c) if r["master_account_id"]]) == APARTMENTS)
        assert sorted(r["email"] for r in residents(platform, token, community)) == [
            f"r{n}@{name}.example.org" for n in range(101, 101 + APARTMENTS)]
    expected = {name: {f"r{n}@{name}.example.org" for n in range(101, 101 + APARTMENTS)}
                for name in deployments}
    for name, platform in deployments.items():
        eventually(lambda p=platform, n=name: expected[n] <= set(mail_recipients(p)))
    for name, platform in deployments.items():
        assert all(to.endswith(f"@{name}.example.org") for to in mail_recipients(platform))

    # Every relay (and notify's mailer and pusher) leads in its own deployment, all at the
    # same time. A projection's transaction-scoped lock may be held for a moment on top of the
    # leaders' session locks (notify records the last emails as sent), so the count is polled.
    def leaders_in_each_deployment() -> bool:
        held = advisory_holders(postgres_url)
        for name in deployments:
            assert {service: held.get(f"concierge-{name}-{service}")
                    for service in ("accounts", "topology", "notify")} == {
                "accounts": 1, "topology": 1, "notify": 3}, held
        return True

    eventually(leaders_in_each_deployment)

    # Every exchange and queue carries its deployment's name, and only its own services
    # consume its queues.
    with kombu.Connection(rabbit_uri) as conn:
        channel = conn.channel()
        for name in deployments:
            for queue in ["rpc-accounts", "rpc-topology", "rpc-notify",
                          "concierge.accounts--topology", "concierge.topology--accounts",
                          "concierge.notify--accounts"]:
                _, _, consumers = channel.queue_declare(f"{name}.{queue}", passive=True)
                assert consumers == 1, (name, queue)
            for exchange in ["nameko-rpc", "accounts.events", "topology.events",
                             "notify.events"]:
                channel.exchange_declare(f"{name}.{exchange}", "topic", passive=True)
        channel.close()


def test_a_read_model_lock_of_one_deployment_does_not_stop_the_other(
        deployments: dict[str, Platform], postgres_url: str) -> None:
    (first, one), (second, other) = deployments.items()
    sites = {}
    for platform in (one, other):
        token = installer(platform)
        _, community = platform.call("POST", "/api/v1/communities",
                                     {"name": f"{platform.deployment} Locked",
                                      "feature_plan": "premium",
                                      "time_zone": "UTC"}, token)
        _, building = platform.call("POST", f"/api/v1/communities/{community['id']}/buildings",
                                    {"name": "A"}, token)
        sites[platform.deployment] = (token, community["id"], building["id"])

    outcome: list[int] = []
    with psycopg.connect(postgres_url) as holder:  # one transaction, open until the block ends
        for model in TOPOLOGY_MODELS:
            holder.execute("SELECT pg_advisory_xact_lock(%s)",
                           (advisory_key(model, f"{first}_"),))
        token, _, building = sites[first]
        blocked = threading.Thread(
            target=lambda: outcome.append(add_apartment(one, token, building, 201)))
        blocked.start()
        # The first deployment's commit waits for the models this transaction locked ...
        eventually(lambda: waiting_for_advisory_lock(postgres_url,
                                                     f"concierge-{first}-topology"))
        # ... and the second's projects meanwhile: its write is in its own lists at once.
        token, community, building = sites[second]
        add_apartment(other, token, building, 202)
        assert [r["email"] for r in residents(other, token, community)] == [
            f"r202@{second}.example.org"]
        assert blocked.is_alive()
    blocked.join(60)  # the lock is released: the first deployment's write goes through
    assert outcome == [201]
    token, community, _ = sites[first]
    assert [r["email"] for r in residents(one, token, community)] == [
        f"r201@{first}.example.org"]
