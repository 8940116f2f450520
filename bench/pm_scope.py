"""What a property manager's scope check costs on a list route, at 20 clients.

Four services (accounts, topology, notify, gateway) each in its own process on RabbitMQ and
PostgreSQL, as in production; the clients are threads of this process on keep-alive HTTP
connections. One installer with a few communities, each a building of APTs with a resident
(with an email) each; one property manager made by the installer through the gateway on one of
them with every permission (app, delete account, log access control), its password read from
the emailed `.eml` as the recipient would, logged in with its email.

The same routes on the same community, with the installer's token and with the property
manager's: GET /api/v1/communities/{id}/residents (the whole community on one page) and
GET /api/v1/communities (the installer's answer lists every community, the property manager's
its one). A property manager's session carries its communities and permissions (accounts reads
them with the session, which the gateway caches for a few seconds); topology checks the
community against them when it loads it, and narrows the community list to them in its query.
The baselines: GET one APT with the installer's token at 20 clients (what the hops alone cost),
and the check by itself in this process (the call context a service makes of the gateway's
`ctx`, and its scope test), with either `ctx`, in microseconds.

Each kind runs for a fixed time with 20 clients; the kinds run in many short rounds, each round
in another order, the installer's and the property manager's phases of a route always side by
side and each first in every other round, so the machine's drift falls on both alike; a rate is
the count over the summed time. The difference is also given round by round (its spread shows
the drift) and as the services' CPU per request, which queueing at 20 clients does not blur.
Prints a summary on stderr and one JSON line.
Usage: python bench/pm_scope.py [SECONDS_PER_KIND_PER_ROUND] [ROUNDS] [APTS_PER_COMMUNITY]
(default 1 s, 12 rounds: 12 s of each kind; 20 APTs, in 3 communities)
Environment: BENCH_AMQP_URI, BENCH_DATABASE_URL, BENCH_PORT.
"""

from __future__ import annotations

import email
import email.policy
import http.client
import json
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.cluster import Platform
from bench.stats import summary

CLIENTS = 20
COMMUNITIES = 3
PASSWORD_LINE = re.compile(r"^\s*Password:\s*(\S+)\s*$", re.MULTILINE)
# (route, token): what each kind times; the last is the baseline.
KINDS = ("residents_installer", "residents_property_manager", "communities_installer",
         "communities_property_manager", "apartment_get_installer")


def mailed_password(platform: Platform, address: str, timeout: float = 60) -> str:
    """The password emailed to `address`, read from the mail folder as the recipient would."""
    folder = platform.data_dir / "mail"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in folder.glob("*.eml") if folder.exists() else []:
            message: Any = email.message_from_bytes(path.read_bytes(),
                                                    policy=email.policy.default)
            if message["To"] == address:
                found = PASSWORD_LINE.findall(message.get_body(("plain",)).get_content())
                if found:
                    return str(found[0])
        time.sleep(0.1)
    raise RuntimeError(f"no password email to {address} within {timeout:g} s")


def until(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        time.sleep(0.1)


def site(platform: Platform, token: str, name: str, apartments: int) -> tuple[str, str]:
    """A community with one building of `apartments` APTs, a resident with an email in each:
    the community's id and one APT's."""
    community, building = platform.community_with_building(token, name)
    apartment = ""
    for i in range(apartments):
        number = f"{i + 101}"
        tag = f"{name.lower().replace(' ', '')}{number}"
        status, added = platform.call(
            "POST", f"/api/v1/buildings/{building}/apartments",
            {"number": number, "floor": 1 + i // 10, "name": f"APT {number}",
             "resident": {"first_name": "Bench", "last_name": f"R{tag}",
                          "email": f"r{tag}.{uuid.uuid4().hex[:6]}@example.org"}}, token)
        assert status == 201, added
        apartment = apartment or added["id"]
    return community, apartment


def hammer(port: int, token: str, path: str, seconds: float) -> tuple[float, list[float]]:
    """CLIENTS threads GET `path` back to back for `seconds`: the time taken and every
    request's latency (ms). Every answer must be 200."""
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    errors: list[BaseException] = []
    go = threading.Event()
    stop_at = [0.0]

    def client(mine: list[float]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": f"Bearer {token}"}
        try:
            go.wait()
            while time.perf_counter() < stop_at[0]:
                start = time.perf_counter()
                conn.request("GET", path, None, headers)
                response = conn.getresponse()
                raw = response.read()
                mine.append((time.perf_counter() - start) * 1000)
                if response.status != 200:
                    raise RuntimeError(f"GET {path} answered {response.status}: {raw[:300]!r}")
        except BaseException as exc:  # reported after the run
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(mine,)) for mine in latencies]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    stop_at[0] = start + seconds
    go.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed, [ms for mine in latencies for ms in mine]


def order(n: int) -> list[str]:
    """Round `n`'s kinds: the two tokens of a route always one right after the other (what
    is compared is measured side by side in time), the installer first in even rounds and the
    property manager first in odd ones, and the routes and the baseline in turn."""
    units = [list(KINDS[0:2]), list(KINDS[2:4]), [KINDS[4]]]
    units = units[n % len(units):] + units[:n % len(units)]
    return [kind for unit in units for kind in (unit[::-1] if n % 2 else unit)]


def check_alone(community: str, calls: int = 20_000, blocks: int = 10) -> dict[str, float]:
    """The check by itself, in this process (microseconds a call): the call context a service
    makes of the gateway's `ctx` and its scope test for the community, as topology does when
    it loads the community, for an installer's `ctx` and a property manager's (its one
    community with every permission), in alternating blocks."""
    from concierge.context import CallContext

    common = {"correlation_id": str(uuid.uuid4()), "installer_id": str(uuid.uuid4()),
              "account_id": str(uuid.uuid4()), "client_address": "127.0.0.1",
              "deadline": time.time() + 10}
    contexts = {
        "installer": {**common, "actor": "installer:bench", "role": "installer",
                      "communities": None},
        "property_manager": {**common, "actor": "property_manager:pm@example.org",
                             "role": "property_manager",
                             "communities": {community: {"app": True, "delete_account": True,
                                                         "log_access_control": True}}},
    }
    spent = dict.fromkeys(contexts, 0.0)
    for block in range(blocks):
        for who in sorted(contexts, reverse=bool(block % 2)):
            ctx = contexts[who]
            start = time.perf_counter()
            seen = 0
            for _ in range(calls // blocks):
                seen += CallContext.from_dict(ctx).in_scope(community)
            spent[who] += time.perf_counter() - start
            if seen != calls // blocks:
                raise AssertionError(f"the {who} is out of its community's scope")
    return {who: round(seconds / calls * 1e6, 2) for who, seconds in spent.items()}


def services_cpu(figures: dict[str, Any]) -> float:
    """CPU per request of the platform's own processes (not RabbitMQ's or PostgreSQL's)."""
    return sum(ms for process, ms in figures["cpu_ms_per_request"].items()
               if process not in ("rabbitmq", "postgresql"))


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    apartments = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    amqp = os.environ.get("BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
    database = os.environ.get("BENCH_DATABASE_URL",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
    port = int(os.environ.get("BENCH_PORT", "8816"))
    platform = Platform(amqp, database, Path(tempfile.mkdtemp(prefix="bench-pm-scope-")), port,
                        services=("accounts", "topology", "notify", "gateway")).start()
    try:
        distributor = platform.distributor_token()
        name = f"pmbench{uuid.uuid4().hex[:6]}"
        status, installer = platform.call("POST", "/api/v1/installers",
                                          {"username": name, "password": "installer-pw-1",
                                           "email": f"{name}@example.org"}, distributor)
        assert status == 201, installer
        _, session = platform.call("POST", "/api/v1/auth/login",
                                   {"username": name, "password": "installer-pw-1"})
        token = session["token"]
        sites = [site(platform, token, f"Site {n}", apartments) for n in range(COMMUNITIES)]
        community, apartment = sites[0]

        address = f"pm.{uuid.uuid4().hex[:8]}@example.org"
        status, manager = platform.call(
            "POST", "/api/v1/property-managers",
            {"first_name": "Pat", "last_name": "Bench", "email": address,
             "communities": [{"community_id": community, "app": True, "delete_account": True,
                              "log_access_control": True}]}, token)
        assert status == 201, manager
        status, session = platform.call("POST", "/api/v1/auth/login",
                                        {"username": address,
                                         "password": mailed_password(platform, address)})
        assert status == 200 and session["role"] == "property_manager", session
        pm = session["token"]

        residents = f"/api/v1/communities/{community}/residents?per_page={min(apartments, 100)}"
        communities = "/api/v1/communities"
        paths = {"residents_installer": (residents, token),
                 "residents_property_manager": (residents, pm),
                 "communities_installer": (communities, token),
                 "communities_property_manager": (communities, pm),
                 "apartment_get_installer": (f"/api/v1/apartments/{apartment}", token)}

        # The read models hold every APT; both tokens see the same residents page.
        def listed(kind: str) -> Any:
            path, who = paths[kind]
            status, body = platform.call("GET", path, token=who)
            return body if status == 200 else None

        until(lambda: (listed("residents_installer") or {}).get("total") == apartments,
              "the residents list holds every APT")
        until(lambda: listed("residents_property_manager") == listed("residents_installer"),
              "the property manager sees the installer's residents page")
        shown = {kind: len(listed(kind)["items"]) for kind in KINDS[:4]}
        assert shown["communities_installer"] == COMMUNITIES, shown
        assert shown["communities_property_manager"] == 1, shown

        for kind in KINDS:  # warm each route's queries and caches; not counted
            hammer(port, paths[kind][1], paths[kind][0], min(seconds, 0.5))
        samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
        spent = dict.fromkeys(KINDS, 0.0)
        cpu = {kind: dict[str, float]() for kind in KINDS}
        round_p50: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for n in range(rounds):
            for kind in order(n):
                path, who = paths[kind]
                before = platform.cpu_seconds()
                elapsed, latencies = hammer(port, who, path, seconds)
                after = platform.cpu_seconds()
                for process, used in after.items():
                    cpu[kind][process] = (cpu[kind].get(process, 0.0)
                                          + used - before.get(process, 0.0))
                samples[kind] += latencies
                spent[kind] += elapsed
                round_p50[kind].append(summary(latencies)["p50"])

        figures: dict[str, Any] = {}
        for kind in KINDS:
            count = len(samples[kind])
            figures[kind] = {
                "per_s": round(count / spent[kind], 1), "ms": summary(samples[kind]),
                "seconds": round(spent[kind], 1), "items_per_answer": shown.get(kind),
                "cpu_ms_per_request": {p: round(s * 1000 / count, 2)
                                       for p, s in cpu[kind].items()},
                "p50_by_round": round_p50[kind],
            }
        difference = {}
        for route in ("residents", "communities"):
            mine, theirs = figures[f"{route}_property_manager"], figures[f"{route}_installer"]
            difference[route] = {
                "p50_ms": round(mine["ms"]["p50"] - theirs["ms"]["p50"], 2),
                "p50_share": round(mine["ms"]["p50"] / theirs["ms"]["p50"] - 1, 3),
                "p50_ms_by_round": [round(a - b, 2) for a, b in
                                    zip(mine["p50_by_round"], theirs["p50_by_round"],
                                        strict=True)],
                # Our processes only: the broker and the database may serve others too.
                "services_cpu_ms_per_request": round(
                    services_cpu(mine) - services_cpu(theirs), 2),
            }
        alone = check_alone(community)
        for kind in KINDS:
            one = figures[kind]
            print(f"{kind}: {one['per_s']} req/s, p50 {one['ms']['p50']} / p99 "
                  f"{one['ms']['p99']} ms, services' CPU {services_cpu(one):.2f} ms/request",
                  file=sys.stderr)
        for route, found in difference.items():
            print(f"{route}: property manager minus installer at p50 {found['p50_ms']:+} ms "
                  f"({found['p50_share']:+.1%}; by round {found['p50_ms_by_round']}), services' "
                  f"CPU {found['services_cpu_ms_per_request']:+} ms/request",
                  file=sys.stderr)
        print(f"the check alone, in process: installer {alone['installer']} us, property "
              f"manager {alone['property_manager']} us a call", file=sys.stderr, flush=True)
        print(json.dumps({
            "clients": CLIENTS, "rounds": rounds, "seconds_per_kind_per_round": seconds,
            "communities": COMMUNITIES, "apartments_per_community": apartments,
            **figures, "pm_minus_installer": difference, "check_alone_us": alone,
        }))
    finally:
        platform.stop()


if __name__ == "__main__":
    main()
