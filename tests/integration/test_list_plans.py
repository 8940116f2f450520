"""The residents list reads its page from the sort's index and stops after it, whatever the
page, the sort or the direction: no plan sorts the community (docs/chassis.md, "Lists").

Each statement the list runs is captured, prepared and EXPLAINed as a generic plan (what a
statement run often gets) on a community of 20,000 APTs, with the statistics a service keeps
(concierge.statistics)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from concierge.config import Settings
from concierge.runtime import Wiring
from concierge.statistics import analyse
from services.topology.declaration import CONTEXT as TOPOLOGY
from services.topology.projections import TopologyViews

APTS = 20_000


@pytest.fixture
def views(postgres_url: str, schema_prefix: str, tmp_path: Path
          ) -> Iterator[tuple[Wiring, str]]:
    settings = Settings(data_dir=tmp_path, database_url=postgres_url, schema_prefix=schema_prefix)
    wiring = TOPOLOGY.wire(settings, read_remote=lambda source, after, limit: [])
    community = str(uuid.uuid4())
    with wiring.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO topology_apartments (id, building_id, community_id, installer_id, "
            "number, name, first_name, last_name, email, created_at, search, registered) "
            "SELECT md5(n::text), 'b' || (n % 50), :c, 'i', (100 + n / 50)::text, "
            "'APT ' || n, 'Ana', 'R' || n, 'r' || n || '@example.org', "
            "to_char(n, 'FM0000000'), 'ana r' || n || chr(10) || 'r' || n || '@example.org', "
            "n % 10 = 0 FROM generate_series(1, :n) n"), {"c": community, "n": APTS})
        conn.execute(text("INSERT INTO topology_apartment_totals VALUES (:c, :n), (:r, :m)"),
                     {"c": community, "n": APTS, "r": f"{community}/registered",
                      "m": APTS // 10})
        analyse(conn, ["topology_apartments", "topology_apartment_totals"])
    try:
        yield wiring, community
    finally:
        wiring.close()


def literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def plans(wiring: Wiring, call: Any) -> list[str]:
    """The plan of each statement over topology_apartments that `call` runs."""
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM topology_apartments" in statement and not statement.startswith("EXPLAIN"):
            seen.append((statement, parameters))

    event.listen(wiring.engine, "before_cursor_execute", capture)
    try:
        call()
    finally:
        event.remove(wiring.engine, "before_cursor_execute", capture)
    found = []
    with wiring.engine.connect() as conn:
        # The plan PostgreSQL keeps for a prepared statement run often (psycopg prepares it
        # after five runs): generic, parameters unknown. Only literals match an index's
        # expression then.
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        for n, (statement, parameters) in enumerate(seen):
            names = re.findall(r"%\((\w+)\)s", statement)
            numbered = statement
            for k, name in enumerate(dict.fromkeys(names), 1):
                numbered = numbered.replace(f"%({name})s", f"${k}")
            conn.exec_driver_sql(f"PREPARE listed{n} AS {numbered}")
            values = ", ".join(literal(parameters[name]) for name in dict.fromkeys(names))
            rows = conn.exec_driver_sql(f"EXPLAIN EXECUTE listed{n}({values})"
                                        ).scalars().all()
            found.append("\n".join(rows))
            conn.exec_driver_sql(f"DEALLOCATE listed{n}")
        conn.exec_driver_sql("RESET plan_cache_mode")
    return found


SORTS = ("number", "-number", "name", "-name", "resident", "-resident", "created_at",
         "-created_at")


def test_every_sort_reads_its_index_on_the_first_a_middle_and_the_last_page(
        views: tuple[Wiring, str]) -> None:
    wiring, community = views
    lists = TopologyViews(wiring.engine)
    for sort in SORTS:
        for page in (1, 100, APTS // 20, APTS // 10):
            found = plans(wiring, lambda s=sort, p=page: lists.list_residents(
                "i", community, page=p, sort=s))
            assert len(found) == 1, found  # the total is kept: no count
            (plan,) = found
            assert "Sort" not in plan and "Seq Scan" not in plan, (sort, page, plan)
            assert f"ix_topology_apartments_by_{sort.lstrip('-')}" in plan, (sort, page, plan)


def test_a_status_filter_reads_the_sort_index_and_a_search_the_trigram_index(
        views: tuple[Wiring, str]) -> None:
    wiring, community = views
    lists = TopologyViews(wiring.engine)
    (plan,) = plans(wiring, lambda: lists.list_residents("i", community, page=200,
                                                         app_status="registered"))
    assert "Sort" not in plan and "ix_topology_apartments_by_number" in plan, plan
    count, page = plans(wiring, lambda: lists.list_residents("i", community,
                                                             q="r12345@example.org"))
    assert "ix_topology_apartments_search" in count and "Seq Scan" not in count, count
    assert "ix_topology_apartments_search" in page, page
