"""How the lists, searches and commands grow with a site: reads at 1k, 10k and 50k apartments.

One community of 50 buildings is filled through topology's application (the service's own
commands, with its checks, without the HTTP and RPC hops: 50,000 requests through the gateway
take longer than every other benchmark together); at each size the read models are rebuilt
(`concierge rebuild topology`, timed: the figure for the largest size is the rebuild at that
size), then each read runs REPEAT times through the application as the service's RPC entrypoints
call it. The baseline of each size is a key lookup (one apartment), which does not grow.
Prints one JSON line. Usage: python bench/scale.py [--communities N] [SIZES...] (default
1000 10000 50000 APTs in one community; with N, spread over N communities of one installer).
Environment: BENCH_DATABASE_URL (PostgreSQL; empty = SQLite); BENCH_KEEP=1 keeps the schemas.
"""

from __future__ import annotations

from concierge import green

green.patch()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import eventlet  # noqa: E402

from bench.rebuild_rate import drop_schemas  # noqa: E402
from bench.stats import summary  # noqa: E402
from concierge import context, heap  # noqa: E402
from concierge.config import Settings  # noqa: E402
from concierge.rebuild import rebuild  # noqa: E402
from services.topology.declaration import CONTEXT as TOPOLOGY  # noqa: E402

BUILDINGS = 50
REPEAT = 40
CLIENTS = 8
REGISTERED_EVERY = 10
FIRST = ("Ana", "Bo", "Chen", "Dana", "Eli", "Farah", "Goran", "Hana", "Ivo", "Jun")


def apartment(i: int, buildings: int = BUILDINGS) -> dict[str, Any]:
    """The i-th APT, added to building i % buildings (its number unique there)."""
    return {"number": str(100 + i // buildings), "floor": 1 + (i // buildings) % 30,
            "name": f"APT {i}",
            "resident": {"first_name": FIRST[i % len(FIRST)], "last_name": f"Resident{i}",
                         "email": f"resident{i}@example.org"}}


class AccountsLog:
    """Accounts' log as the topology service reads it (`read_remote`): a master account for
    each APT's resident, one in REGISTERED_EVERY registered, so the Residents list's app status
    filter and the Dashboard's app counts have data to read. Accounts is not run: its own
    figures are another benchmark's."""

    def __init__(self, installer_id: str) -> None:
        self.installer_id = installer_id
        self.entries: list[dict[str, Any]] = []

    def append(self, kind: str, stream_id: str, **data: Any) -> None:
        position = len(self.entries) + 1
        self.entries.append({
            "event_id": str(uuid.uuid4()), "type": kind, "version": 1, "source": "accounts",
            "stream_id": stream_id, "stream_version": 1, "position": position,
            "occurred_at": "2026-12-07T00:00:00.000000+00:00", "actor": "accounts:bench",
            "correlation_id": "", "data": data})

    def apartment_added(self, i: int, apartment_id: str, community_id: str) -> None:
        account = str(uuid.uuid4())
        resident = apartment(i)["resident"]
        self.append("MasterAccountCreated", account, apartment_id=apartment_id,
                    community_id=community_id, installer_id=self.installer_id, **resident)
        if i % REGISTERED_EVERY == 0:
            self.append("MasterAccountRegistered", account)

    def read(self, source: str, after: int, limit: int) -> list[dict[str, Any]]:
        if source != "accounts":  # devices is not run either: its log stays empty
            return []
        return self.entries[after:after + limit]


def rss_mib() -> float:
    """This process's resident memory (the filler's and the serving application's caches)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def timed(call: Callable[[], Any], repeat: int = REPEAT) -> dict[str, float]:
    call()  # warm: the first call compiles the statement
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return summary(samples)


def add_rate(app: Any, buildings: list[str], start: int, count: int) -> float:
    """Apartments added per second by CLIENTS concurrent callers (each fails loudly)."""
    caller = context.current()

    def add(i: int) -> None:
        with context.acting(caller):  # a green thread starts with no call context
            app.add_apartment(buildings[i % len(buildings)], apartment(i, len(buildings)))

    pool = eventlet.GreenPool(CLIENTS)
    began = time.perf_counter()
    for result in pool.imap(add, range(start, start + count)):
        assert result is None
    return count / (time.perf_counter() - began)


def reads(app: Any, community: str, sample: str) -> dict[str, Any]:
    residents = app.list_residents
    size = residents(community)["total"]
    last = -(-size // 10)
    last_registered = -(-residents(community, app_status="registered")["total"] // 10)
    return {
        "apartment_get_baseline": timed(lambda: app.get_apartment(sample)),
        "residents_page_1": timed(lambda: residents(community)),
        "residents_page_100": timed(lambda: residents(community, page=min(100, last))),
        "residents_last_page": timed(lambda: residents(community, page=last)),
        "residents_sort_name": timed(lambda: residents(community, sort="name")),
        "residents_sort_resident_desc": timed(lambda: residents(community, sort="-resident")),
        "residents_sort_created_last_page": timed(
            lambda: residents(community, sort="created_at", page=last)),
        "search_full_email": timed(lambda: residents(community, q=f"resident{size // 2}@"
                                                                "example.org")),
        "search_name_prefix": timed(lambda: residents(community, q="Farah")),
        "search_substring_many": timed(lambda: residents(community, q="an")),
        "residents_registered_page_1": timed(
            lambda: residents(community, app_status="registered")),
        "residents_registered_last_page": timed(
            lambda: residents(community, app_status="registered", page=last_registered)),
        "residents_unregistered_sort_name": timed(
            lambda: residents(community, app_status="unregistered", sort="name")),
        "community_list": timed(lambda: app.list_communities()),
        "dashboard": timed(lambda: app.dashboard()),
    }


def gateway_hop() -> dict[str, float]:
    """What a route adds to the application's answer: GET of one APT through the gateway (HTTP,
    session check, RPC to topology) on a platform of its own. Key lookups do not grow with
    the site (the baseline above), so a route at any size is its read here plus this."""
    from bench.cluster import Platform

    platform = Platform(os.environ.get("BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/"),
                        os.environ.get("BENCH_DATABASE_URL", ""),
                        Path(tempfile.mkdtemp(prefix="bench-scale-gw-")),
                        int(os.environ.get("BENCH_PORT", "8812")),
                        services=("accounts", "topology", "devices", "gateway")).start()
    try:
        token = platform.installer_session()
        _, building = platform.community_with_building(token, "Hop Towers")
        status, added = platform.call("POST", f"/api/v1/buildings/{building}/apartments",
                                      {"number": "101", "resident": apartment(1)["resident"]},
                                      token)
        assert status == 201, added
        path = f"/api/v1/apartments/{added['id']}"

        def get() -> None:
            status, body = platform.call("GET", path, token=token)
            assert status == 200, body

        return timed(get)
    finally:
        platform.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[1000, 10000, 50000])
    parser.add_argument("--hop", action="store_true",
                        help="also measure a route's hop through the gateway (RabbitMQ)")
    parser.add_argument("--communities", type=int, default=1,
                        help="spread the APTs over this many communities of one installer "
                             f"({BUILDINGS} buildings in all); the reads are the first one's")
    args = parser.parse_args()
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="bench-scale-")),
                        database_url=os.environ.get("BENCH_DATABASE_URL", ""),
                        schema_prefix=f"bench{uuid.uuid4().hex[:6]}_")
    installer_id = str(uuid.uuid4())
    accounts = AccountsLog(installer_id)
    filler = TOPOLOGY.open(settings)  # no read models: the fill records events only
    wired = TOPOLOGY.wire(settings, read_remote=accounts.read)
    app = wired.app
    figures: dict[str, Any] = {}
    with context.acting({"actor": "installer:bench", "installer_id": installer_id,
                         "role": "installer"}):
        sites = [filler.create_community({"name": f"Scale Towers {c:02d}",
                                          "feature_plan": "premium", "time_zone": "UTC"})
                 for c in range(args.communities)]
        per_site = max(1, BUILDINGS // args.communities)
        buildings = [filler.add_building(site, {"name": f"Building {b:02d}"})
                     for site in sites for b in range(per_site)]
        count = len(buildings)
        community = sites[0]
        site_of = {b: sites[n // per_site] for n, b in enumerate(buildings)}
        sample = filler.add_apartment(buildings[0], apartment(0, count))
        accounts.apartment_added(0, sample, community)
        filled = 1
        for size in args.sizes:
            began = time.perf_counter()
            for i in range(filled, size):
                building = buildings[i % count]
                added = filler.add_apartment(building, apartment(i, count))
                accounts.apartment_added(i, added, site_of[building])
            fill_s = time.perf_counter() - began
            filled = max(filled, size)  # the previous size's commands may have gone past it
            # A service settles its collector at start (`concierge.heap`), and `concierge
            # rebuild` runs in a process of its own; this one also holds the filler's
            # aggregates and accounts' log: keep the collector off them, or each size's
            # rebuild and timings pay for re-scanning them.
            heap.settle()
            began = time.perf_counter()
            events = rebuild(wired)
            rebuild_s = time.perf_counter() - began
            stage: dict[str, Any] = {
                "fill_apartments_per_s": round((size - 1) / fill_s) if fill_s else None,
                "rebuild_s": round(rebuild_s, 2), "rebuild_events": events}
            stage.update(reads(app, community, sample))
            # Commands at this size, through the wired application (projections included);
            # the apartments they add are counted in the next size's fill. Its cached
            # buildings first catch up with what the filler recorded, as a serving replica's
            # have (each command's own writes keep them current).
            for building in buildings:
                app.get_building(building)
            i = filled
            adds = []
            for _ in range(REPEAT):
                start = time.perf_counter()
                app.add_apartment(buildings[i % count], apartment(i, count))
                adds.append((time.perf_counter() - start) * 1000)
                i += 1
            stage["add_apartment_1_client"] = summary(adds)
            stage["process_rss_mib"] = rss_mib()
            # Three rounds, the median: one round's rate drifts by 15% on a shared machine.
            rounds = [add_rate(app, buildings, i + 200 * n, 200) for n in range(3)]
            stage["add_apartment_8_clients_per_s"] = round(statistics.median(rounds), 1)
            filled = i + 600
            figures[str(size)] = stage
            print(f"size {size}: {json.dumps(stage)}", file=sys.stderr, flush=True)
    wired.close()
    filler.close()
    if not os.environ.get("BENCH_KEEP"):  # kept: to EXPLAIN the reads at the last size
        drop_schemas(settings)
    store = "postgres" if settings.uses_postgres else "sqlite"
    hop = gateway_hop() if args.hop else None
    print(json.dumps({"schema_prefix": settings.schema_prefix, "scale": figures,
                      "gateway_apartment_get": hop, "store": store}))


if __name__ == "__main__":
    main()
