"""`concierge rebuild` while the service serves and takes writes: the read models are rebuilt
into new tables and swapped in with one transaction, so readers never see a missing, empty or
partial model; the rebuild shows its progress; interrupted, it leaves the live model as it was.
On RabbitMQ with PostgreSQL and with SQLite, every service in its own process."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select

from bench.cluster import Platform
from concierge import context, green
from concierge.config import Settings
from concierge.database import projection_tracking, service_engine
from concierge.projection import advisory_key
from concierge.rebuild import rebuild
from concierge.subscription import projection_handlers
from services.topology.declaration import CONTEXT as TOPOLOGY
from services.topology.projections import apartments
from tests.support.harness import ROOT, eventually, free_port
from tests.support.toy import CountersView, counters

CONCIERGE = str(Path(sys.executable).with_name("concierge"))
QUIET = ("UndefinedTable", "psycopg.errors", "Traceback", " ERROR ", " CRITICAL ")




@pytest.fixture
def platform_factory(tmp_path: Path, rabbit_uri: str) -> Iterator[Any]:
    started: list[Platform] = []

    def start(database_url: str) -> Platform:
        platform = Platform(rabbit_uri, database_url, tmp_path / "var", free_port(),
                            services=("accounts", "topology", "devices", "gateway"),
                            log_dir=tmp_path / "logs")
        started.append(platform)
        return platform.start()

    yield start
    for platform in started:
        platform.stop()
        if platform.env["CONCIERGE_DATABASE_URL"]:
            drop_schemas(platform.env["CONCIERGE_DATABASE_URL"],
                         platform.env["CONCIERGE_SCHEMA_PREFIX"])


def drop_schemas(url: str, prefix: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                                    (prefix + "%",)).fetchall():
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


class Site:
    """One installer's community with buildings, through the gateway, and the creates it
    answered 201."""

    def __init__(self, platform: Platform, buildings: int = 3) -> None:
        self.platform = platform
        self.token = platform.installer_session(f"rebuild-{uuid.uuid4().hex[:6]}")
        status, community = self.call("POST", "/api/v1/communities",
                                      {"name": "Rebuild Towers", "feature_plan": "premium",
                                       "time_zone": "Europe/Paris"})
        assert status == 201, community
        self.community = community["id"]
        self.buildings: list[str] = []
        for i in range(buildings):
            status, building = self.call(
                "POST", f"/api/v1/communities/{self.community}/buildings", {"name": f"B{i}"})
            assert status == 201, building
            self.buildings.append(building["id"])
        self.apartments = 0
        self.failures: list[tuple[int, Any]] = []
        self._numbers = iter(range(1000, 10**6))
        self._turn = threading.Lock()

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return self.platform.call(method, path, body, token=self.token)

    def add_apartment(self) -> None:
        with self._turn:
            number = next(self._numbers)
        building = self.buildings[number % len(self.buildings)]
        status, answer = self.call("POST", f"/api/v1/buildings/{building}/apartments", {
            "number": str(number), "floor": 1, "name": f"APT {number}",
            "resident": {"first_name": "R", "last_name": f"N{number}",
                         "email": f"r{number}@example.org"}})
        with self._turn:
            if status == 201:
                self.apartments += 1
            else:
                self.failures.append((status, answer))

    def counts(self) -> tuple[list[int], dict[str, int]]:
        """What the three lists say: the community's counts, the buildings, the residents."""
        statuses, counts = [], {}
        status, page = self.call("GET", "/api/v1/communities?per_page=100")
        statuses.append(status)
        if status == 200:
            [item] = [i for i in page["items"] if i["id"] == self.community] or [{}]
            for key in ("building_count", "apartment_count", "resident_count"):
                counts[key] = item.get(key, 0)
        status, page = self.call("GET", f"/api/v1/communities/{self.community}/buildings"
                                        "?per_page=1")
        statuses.append(status)
        counts["buildings"] = page["total"] if status == 200 else 0
        status, page = self.call("GET", f"/api/v1/communities/{self.community}/residents"
                                        "?per_page=1")
        statuses.append(status)
        counts["residents"] = page["total"] if status == 200 else 0
        return statuses, counts

    def expected(self) -> dict[str, int]:
        return {"building_count": len(self.buildings), "apartment_count": self.apartments,
                "resident_count": self.apartments, "buildings": len(self.buildings),
                "residents": self.apartments}

    def residents(self) -> list[dict[str, Any]]:
        items, page = [], 1
        while True:
            status, answer = self.call("GET", f"/api/v1/communities/{self.community}/residents"
                                              f"?per_page=100&page={page}")
            assert status == 200, answer
            items += answer["items"]
            if len(items) >= answer["total"] or not answer["items"]:
                return items
            page += 1

    def settled(self) -> bool:
        """Every 201 is in the lists, and every resident has its master account (accounts'
        events, which reach topology over the bus)."""
        _, counts = self.counts()
        assert counts == self.expected()
        return all(item["master_account_id"] for item in self.residents())


class Loop:
    """Calls `work` over and over in green threads until stopped."""

    def __init__(self, work: Any, threads: int) -> None:
        self.work = work
        self.running = True
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        while self.running:
            self.work()

    def stop(self) -> None:
        self.running = False
        for thread in self.threads:
            thread.join(60)


def add(site: Site, count: int, threads: int = 4) -> None:
    target = site.apartments + count
    writers = Loop(lambda: site.add_apartment() if site.apartments < target else time.sleep(0.01),
                   threads)
    eventually(lambda: site.apartments >= target, timeout=300, interval=0.2)
    writers.stop()


def assert_quiet(platform: Platform) -> None:
    for service in ("topology", "accounts"):
        log = platform.log(service).decode(errors="replace")
        found = [word for word in QUIET if word in log]
        assert not found, f"{service} logged {found}:\n{log[-4000:]}"


@pytest.mark.parametrize(("store", "seed"), [("postgres", 600), ("sqlite", 150)])
def test_a_rebuild_while_topology_serves_and_takes_writes_never_shows_less(
        store: str, seed: int, platform_factory: Any, request: pytest.FixtureRequest) -> None:
    database = request.getfixturevalue("postgres_url") if store == "postgres" else ""
    platform = platform_factory(database)
    site = Site(platform)
    add(site, seed)
    eventually(site.settled, timeout=120, interval=0.5)
    _, before = site.counts()

    reads: list[tuple[float, str, list[int], dict[str, int]]] = []

    def read() -> None:
        statuses, counts = site.counts()
        reads.append((time.monotonic(), threading.current_thread().name, statuses, counts))

    readers = Loop(read, 2)
    writers = Loop(site.add_apartment, 2)
    started = time.monotonic()
    done = run_rebuild(platform, timeout=300)
    ended = time.monotonic()
    made_during = site.apartments - seed
    green.sleep(1.0)  # a few more reads and writes on the swapped-in tables
    writers.stop()
    readers.stop()

    during = [read for read in reads if started <= read[0] <= ended]
    assert during, "no read ran while the rebuild did"
    assert made_during > 0 and not site.failures, site.failures
    assert all(statuses == [200, 200, 200] for _, _, statuses, _ in reads), reads[-5:]
    # Never less than before the rebuild, nor than the same reader's read before.
    floors = {thread.name: dict(before) for thread in readers.threads}
    for _, reader, _, counts in reads:
        for key, value in counts.items():
            assert value >= floors[reader][key], (key, value, floors[reader][key])
            floors[reader][key] = value
    assert done.returncode == 0, done.stderr
    assert "swapping the new tables in" in done.stderr
    progress = [line for line in done.stderr.splitlines() if "events/s" in line]
    assert progress and all("left" in line for line in progress), done.stderr
    assert ("rebuilt topology_sites, topology_buildings, topology_residents of topology"
            in done.stdout)
    eventually(site.settled, timeout=120, interval=0.5)
    assert_quiet(platform)


def test_a_rebuild_of_the_embedded_platform_reads_the_other_services_stores(
        tmp_path: Path) -> None:
    """`make run`'s platform has its bus inside its own process: the rebuild reads accounts'
    log from accounts' store in the same data folder, while the platform serves (before, it
    could not reach accounts and gave up)."""
    platform = Platform("", "", tmp_path / "var", free_port(), embedded=True).start()
    try:
        site = Site(platform, buildings=2)
        add(site, 30, threads=2)
        eventually(site.settled, timeout=120, interval=0.5)
        _, before = site.counts()

        done = run_rebuild(platform, timeout=300)

        assert done.returncode == 0, done.stderr
        assert "rebuilt topology_sites" in done.stdout
        _, after = site.counts()
        assert after == before == site.expected()
        assert all(item["master_account_id"] for item in site.residents())
    finally:
        platform.stop()


def run_rebuild(platform: Platform, timeout: float) -> subprocess.CompletedProcess[str]:
    """`concierge rebuild topology` as an operator runs it; one that hangs is killed and
    reported as such."""
    try:
        return subprocess.run([CONCIERGE, "rebuild", "topology"], env=platform.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as hung:
        return subprocess.CompletedProcess(hung.cmd, -9, str(hung.stdout or ""),
                                           f"hung for {timeout} s: {hung.stderr or ''}")


def test_an_interrupted_rebuild_leaves_the_live_model_and_the_next_one_finishes(
        platform_factory: Any, postgres_url: str) -> None:
    platform = platform_factory(postgres_url)
    site = Site(platform, buildings=2)
    add(site, 40)
    eventually(site.settled, timeout=120, interval=0.5)
    before = (site.counts(), site.residents())
    shadow = Settings.from_env(platform.env).schema_for("topology__rebuild")  # the new tables

    def shadow_exists() -> bool:
        with psycopg.connect(postgres_url) as conn:
            return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                                (shadow,)).fetchone() is not None

    # Someone holds one of the read models' locks (a stuck transaction): the rebuild builds
    # its tables, then waits to swap them in, and says who it waits for.
    holder = psycopg.connect(postgres_url, autocommit=True)
    namespace = Settings.from_env(platform.env).lock_namespace  # the platform's deployment's
    holder.execute("SELECT pg_advisory_lock(%s)", (advisory_key("topology_sites", namespace),))
    try:
        for stop in (signal.SIGKILL, signal.SIGINT):
            proc = subprocess.Popen([CONCIERGE, "rebuild", "topology"], env=platform.env,
                                    cwd=ROOT, stderr=subprocess.PIPE, text=True)
            lines: list[str] = []
            reading = threading.Thread(target=lambda p=proc, out=lines: out.extend(p.stderr))
            reading.start()
            eventually(lambda out=lines: any("waiting" in line for line in out)
                       or (site.counts(), site.residents()) != before, timeout=120, interval=0.2)
            assert (site.counts(), site.residents()) == before  # the live model serves on
            assert any("held by pid" in line for line in lines), lines
            proc.send_signal(stop)
            code = proc.wait(60)
            reading.join(10)
            assert (site.counts(), site.residents()) == before
            if stop == signal.SIGKILL:
                assert shadow_exists()  # left behind: the next rebuild drops it
            else:
                assert code == 130, lines
                assert any("nothing was swapped in" in line for line in lines), lines
                assert not shadow_exists()
    finally:
        holder.close()

    done = run_rebuild(platform, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not shadow_exists()
    assert (site.counts(), site.residents()) == before
    add(site, 5)
    eventually(site.settled, timeout=60, interval=0.5)
    assert_quiet(platform)


def no_remote(source: str, after: int, limit: int) -> list[Any]:
    return []


def test_prepared_statements_of_a_live_connection_read_the_old_tables_then_the_new(
        postgres_url: str, schema_prefix: str, data_dir: Path, opened: Any) -> None:
    """psycopg prepares a statement run five times on a connection; PostgreSQL plans it again
    for the tables swapped in under the same name. Meanwhile it reads the old ones, whole."""
    settings = Settings(data_dir=data_dir, database_url=postgres_url, schema_prefix=schema_prefix)
    live = opened(TOPOLOGY.wire(settings, read_remote=no_remote))
    with context.acting({"actor": "installer:test", "installer_id": str(uuid.uuid4()),
                         "role": "installer"}):
        community = live.app.create_community({"name": "C", "feature_plan": "premium",
                                               "time_zone": "UTC"})
        building = live.app.add_building(community, {"name": "B"})

        def add(number: int) -> None:
            live.app.add_apartment(building, {"number": str(number), "floor": 1,
                                              "resident": {"first_name": "R",
                                                           "last_name": str(number)}})

        for number in range(100, 160):
            add(number)
        count = select(func.count()).select_from(apartments)
        with live.engine.connect() as conn:
            seen = []
            for _ in range(6):
                seen.append(conn.execute(count).scalar())
                conn.commit()
            assert conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar()
            conn.commit()

            operator = opened(TOPOLOGY.wire(settings, read_remote=no_remote))
            job = green.spawn(rebuild, operator)
            while not job.dead:
                seen.append(conn.execute(count).scalar())
                conn.commit()
                green.sleep(0)
            assert job.wait() > 0
            seen.append(conn.execute(count).scalar())
            conn.commit()
        assert len(seen) > 8 and set(seen) == {60}, seen
        add(160)  # the live service's own prepared writes go to the new tables
        assert live.app.list_residents(community, per_page=1)["total"] == 61


def test_on_sqlite_a_projection_reads_its_position_under_the_write_lock(data_dir: Path) -> None:
    """Another process (a rebuild's swap) moves a model to position 6 while this process's
    cached position says 3: the events 4 and 5 it hands over are already in, and must change
    nothing, nor move the position back."""
    settings = Settings(data_dir=data_dir)
    engine = service_engine("tally", settings)
    try:
        model = CountersView()
        model.create(engine)
        [(_, handler)] = projection_handlers(model, engine).items()
        stream = str(uuid.uuid4())
        events = [{"type": "CounterCreated", "source": "ledger", "position": 1,
                   "stream_id": stream, "data": {"name": "lobby"}}]
        events += [{"type": "CounterIncremented", "source": "ledger", "position": p,
                    "stream_id": stream, "data": {"by": 1}} for p in range(2, 7)]
        handler.apply_batch(events[:3])  # value 2 at position 3
        swap = subprocess.Popen([sys.executable, "-c", SWAP, str(engine.url.database), stream],
                                stdout=subprocess.PIPE, text=True)
        assert swap.stdout is not None and swap.stdout.readline().strip() == "locked"
        handler.apply_batch(events[3:5])  # positions 4 and 5, from a cached position of 3
        assert swap.wait(30) == 0
        with engine.connect() as conn:
            value = conn.execute(select(counters.c.value)).scalar()
            position = conn.execute(select(projection_tracking.c.position)).scalar()
        assert (value, position) == (5, 6)
    finally:
        engine.dispose()


SWAP = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE toy_counters SET value = 5, increments = 5 WHERE id = ?", (sys.argv[2],))
conn.execute("UPDATE concierge_projection_tracking SET position = 6")
print("locked", flush=True)
time.sleep(1.0)
conn.execute("COMMIT")
"""
