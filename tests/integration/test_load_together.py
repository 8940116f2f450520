"""A command on an apartment or a building fast-forwards its cached building and community
with one query on PostgreSQL, and still sees everything another replica recorded since."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from concierge import context
from concierge.config import Settings
from concierge.storage import store_env
from contracts.errors import Conflict, Invalid, NotFound
from services.topology.application import TopologyApplication
from tests.unit.test_topology_application import a_site

LUNA = str(uuid.uuid4())
MARK = str(uuid.uuid4())


def acting(installer_id: str = LUNA) -> Any:
    return context.acting({"actor": f"installer:{installer_id}", "installer_id": installer_id,
                           "correlation_id": str(uuid.uuid4()), "role": "installer"})


@pytest.fixture
def replicas(postgres_url: str, data_dir: Path,
             schema_prefix: str) -> Iterator[tuple[TopologyApplication, TopologyApplication]]:
    settings = Settings(data_dir=data_dir, database_url=postgres_url,
                        schema_prefix=schema_prefix)
    one = TopologyApplication(env=store_env("topology", settings))
    two = TopologyApplication(env=store_env("topology", settings))
    yield one, two
    one.close()
    two.close()


class Queries:
    """Counts the fast-forward queries of one application: the repository's own, one stream
    each, and `load_together`'s, several streams at once."""

    def __init__(self, app: TopologyApplication) -> None:
        self.single: list[uuid.UUID] = []
        self.together: list[list[uuid.UUID]] = []
        store = app.repository.inner.event_store
        get, rows = store.get, app._postgres_rows

        def counted_get(originator_id: uuid.UUID, **kwargs: Any) -> Any:
            if kwargs.get("gt") is not None:  # a fast-forward, not a first load
                self.single.append(originator_id)
            return get(originator_id, **kwargs)

        def counted_rows(name: str, query: str, params: Any, **kwargs: Any) -> Any:
            if name == "newer":
                self.together.append(list(params[0]))
            return rows(name, query, params, **kwargs)

        store.get = counted_get  # type: ignore[method-assign]
        app._postgres_rows = counted_rows  # type: ignore[method-assign]

    def clear(self) -> None:
        self.single.clear()
        self.together.clear()


def resident(last_name: str) -> dict[str, Any]:
    return {"first_name": "Lily", "last_name": last_name}


def test_one_query_brings_the_cached_building_and_community_up_to_date(
        replicas: tuple[TopologyApplication, TopologyApplication]) -> None:
    one, two = replicas
    with acting():
        community, building, _ = a_site(one)  # APT 101 added: building and community cached
        queries = Queries(one)

        one.add_apartment(building, {"number": "102", "resident": resident("B")})
        assert queries.single == []
        assert sorted(queries.together) == [sorted([uuid.UUID(building), uuid.UUID(community)])]

        # Another replica takes APT 103 and turns the community to the Basic plan.
        two.add_apartment(building, {"number": "103", "resident": resident("C")})
        two.edit_community(community, {"feature_plan": "basic"})
        queries.clear()
        with pytest.raises(Conflict):
            one.add_apartment(building, {"number": "103", "resident": resident("D"),
                                         "indoor_monitor_mac": "0C11050B9814"})
        with pytest.raises(Invalid) as caught:  # Basic: an indoor monitor in every apartment
            one.add_apartment(building, {"number": "104", "resident": resident("E")})
        assert "indoor_monitor_mac" in caught.value.errors
        assert queries.single == [] and len(queries.together) == 2

        apartment = one.add_apartment(building, {"number": "104", "resident": resident("E"),
                                                 "indoor_monitor_mac": "0C11050B9815"})
        assert one.get_apartment(apartment)["number"] == "104"
        two.get_apartment(apartment)  # the other replica's cache learns it too

        # An apartment's command: apartment, building and community in one query.
        two.edit_apartment(apartment, {"name": "Corner"})
        queries.clear()
        one.edit_apartment(apartment, {"remark": "gate code at the desk"})
        assert queries.single == []
        assert sorted(queries.together) == [sorted(
            [uuid.UUID(apartment), uuid.UUID(building), uuid.UUID(community)])]
        got = one.get_apartment(apartment)
        assert (got["name"], got["remark"]) == ("Corner", "gate code at the desk")


def test_another_installers_ids_stay_not_found(
        replicas: tuple[TopologyApplication, TopologyApplication]) -> None:
    one, _ = replicas
    with acting():
        community, building, apartment = a_site(one)
        one.edit_apartment(apartment, {"name": "Cached"})
    with acting(MARK):  # cached ids of Luna's: loaded together, then refused as unknown
        with pytest.raises(NotFound):
            one.add_apartment(building, {"number": "102", "resident": resident("B")})
        with pytest.raises(NotFound):
            one.edit_apartment(apartment, {"name": "Mine"})
        with pytest.raises(NotFound):
            one.add_apartment(community, {"number": "102", "resident": resident("B")})
        with pytest.raises(NotFound):
            one.edit_apartment("not-an-id", {"name": "Mine"})
    with acting():
        assert one.get_apartment(apartment)["name"] == "Cached"


# The store's own queries over many aggregates: (name, its parameters for EXPLAIN)
MANY_STREAMS = {
    "newer": "('{%s,%s}', '{1,1}')",  # load_together
    "exists": "('{%s,%s}')",  # absent_streams
    "many": "('{%s,%s}')",  # get_many
}


@pytest.mark.parametrize("name", list(MANY_STREAMS))
def test_a_query_over_many_streams_uses_the_events_key_whatever_the_statistics(
        replicas: tuple[TopologyApplication, TopologyApplication], postgres_url: str,
        name: str) -> None:
    """The prepared statement's generic plan (what PostgreSQL reuses after five executions)
    reads index ranges, on a big events table that was never analysed: as a plain join,
    `load_together`'s scanned the whole table (40 ms at 150,000 events, against 0.09 ms)."""
    import psycopg

    one, _ = replicas
    with acting():
        _, building, _ = a_site(one)
        one.add_apartment(building, {"number": "102", "resident": resident("B")})
    one.absent_streams([uuid.uuid4()])
    one.get_many([uuid.uuid4()])
    statement = one.__dict__["_pg_statements"][name]
    datastore = one._postgres_datastore()
    table = f'"{datastore.schema}"."{one.recorder.events_table_name}"'
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        query = statement.as_string(conn)
        parameters = query.count("%s")
        for number in range(1, parameters + 1):
            query = query.replace("%s", f"${number}", 1)
        types = ", ".join(["uuid[]", "int8[]"][:parameters])
        # 150,000 events of 15,000 other aggregates, and no ANALYZE (autovacuum may be off)
        conn.execute(f"INSERT INTO {table} (originator_id, originator_version, topic, state) "
                     "SELECT md5((n / 10)::text)::uuid, n % 10 + 1, 'x', '\\x00'::bytea "
                     "FROM generate_series(1, 150000) AS n")
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE q ({types}) AS {query}")
        values = MANY_STREAMS[name] % (uuid.uuid4(), uuid.uuid4())
        plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN EXECUTE q {values}"))

    assert "Index" in plan and "Seq Scan" not in plan, plan
