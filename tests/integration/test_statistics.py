"""A service keeps its read models' planner statistics itself (concierge.statistics): this
machine's PostgreSQL runs without autovacuum, and a list planned without statistics sorts the
whole community for every page. A rebuild builds the indexes after its replay."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import text

from concierge import context
from concierge.config import Settings
from concierge.rebuild import rebuild
from concierge.statistics import Statistics
from services.topology.declaration import CONTEXT as TOPOLOGY
from tests.support.harness import eventually


def analysed(engine: object, table: str) -> bool:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stats WHERE schemaname = current_schema() "
            "AND tablename = :t"), {"t": table}).scalar())


def indexes(engine: object) -> dict[str, str]:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return dict(conn.execute(text(
            "SELECT indexname, replace(indexdef, current_schema() || '.', '') FROM pg_indexes "
            "WHERE schemaname = current_schema() AND tablename LIKE 'topology_%'")).tuples().all())


def test_read_models_are_analysed_when_they_have_changed_enough_and_after_a_rebuild(
        postgres_url: str, schema_prefix: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=postgres_url, schema_prefix=schema_prefix)
    wiring = TOPOLOGY.wire(settings, read_remote=lambda source, after, limit: [])
    try:
        loop = wiring.loop(Statistics)
        engine = wiring.engine
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO topology_apartments (id, building_id, community_id, installer_id, "
                "number, created_at, search, registered) SELECT 'a' || n, 'b', 'c', 'i', n::text, "
                "'', '', false "
                "FROM generate_series(1, 300) n"))
        assert not analysed(engine, "topology_apartments")
        # The server's counters of changed rows reach the statistics views within a second.
        eventually(lambda: "topology_apartments" in loop.refresh(), timeout=10)
        assert analysed(engine, "topology_apartments")
        assert "topology_apartments" not in loop.refresh()  # nothing changed since
    finally:
        wiring.close()


def test_a_rebuild_analyses_its_new_tables_before_they_serve(
        postgres_url: str, schema_prefix: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=postgres_url, schema_prefix=schema_prefix)
    wiring = TOPOLOGY.wire(settings, read_remote=lambda source, after, limit: [])
    try:
        app = wiring.app
        with context.acting({"actor": "installer:luna", "installer_id": str(uuid.uuid4()),
                             "role": "installer"}):
            community = app.create_community({"name": "Seaside", "feature_plan": "premium"})
            building = app.add_building(community, {"name": "A"})
            for n in range(5):
                app.add_apartment(building, {"number": str(100 + n), "resident": {
                    "first_name": "Lily", "last_name": "Green", "email": f"l{n}@example.com"}})
        assert not analysed(wiring.engine, "topology_apartments")
        indexes_before = indexes(wiring.engine)
        assert "ix_topology_apartments_search" in indexes_before  # pg_trgm is on this server
        rebuild(wiring)
        assert analysed(wiring.engine, "topology_apartments")
        # Built after the replay (concierge.rebuild defers them): the same indexes serve.
        assert indexes(wiring.engine) == indexes_before
        assert analysed(wiring.engine, "topology_community_counts")
    finally:
        wiring.close()
