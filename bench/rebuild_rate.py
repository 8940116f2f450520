"""Rebuild speed of topology's read models (residents, sites, buildings), in events per second.

The store is filled through the topology application with communities, buildings and
apartments with residents; then `concierge.runtime.rebuild` drops and rebuilds every read model.
The residents read model is rebuilt alone first (the figure the issue asks for), then all three.
Prints one JSON line. Usage: python bench/rebuild_rate.py [EVENTS]
Environment: BENCH_DATABASE_URL (PostgreSQL; empty = SQLite).
"""

from __future__ import annotations

from concierge import green

green.patch()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

from concierge import context  # noqa: E402
from concierge.config import Settings  # noqa: E402
from concierge.rebuild import rebuild  # noqa: E402
from services.topology.declaration import CONTEXT as TOPOLOGY  # noqa: E402


def fill(app: object, events: int) -> int:
    installer = str(uuid.uuid4())
    with context.acting({"actor": "installer:bench", "installer_id": installer,
                         "role": "installer"}):
        n = 0
        while app.max_position() < events:  # type: ignore[attr-defined]
            community = app.create_community(  # type: ignore[attr-defined]
                {"name": f"C{n}", "feature_plan": "premium", "time_zone": "UTC"})
            for b in range(5):
                building = app.add_building(community, {"name": f"B{b}"})  # type: ignore
                for a in range(100):
                    app.add_apartment(building, {  # type: ignore[attr-defined]
                        "number": str(100 + a), "floor": 1, "name": f"APT {a}",
                        "resident": {"first_name": "R", "last_name": f"{n}-{b}-{a}",
                                     "email": f"r{n}.{b}.{a}@example.org"}})
            n += 1
    return app.max_position()  # type: ignore[attr-defined]


def drop_schemas(settings: Settings) -> None:
    """Leave the benchmark database as it was found."""
    if not settings.uses_postgres:
        return
    import psycopg

    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                                    (settings.schema_prefix + "%",)).fetchall():
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 30000
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="bench-rebuild-")),
                        database_url=os.environ.get("BENCH_DATABASE_URL", ""),
                        schema_prefix=f"bench{uuid.uuid4().hex[:6]}_")
    app = TOPOLOGY.open(settings)  # no read models attached while filling: only events
    total = fill(app, events)
    wired = TOPOLOGY.wire(settings, app=app, read_remote=lambda source, after, limit: [])
    start = time.perf_counter()
    rebuild(wired, only={"topology_residents"})
    residents_seconds = time.perf_counter() - start
    start = time.perf_counter()
    rebuild(wired)
    all_seconds = time.perf_counter() - start
    wired.close()
    drop_schemas(settings)
    print(json.dumps({
        "rebuild_events": total,
        "rebuild_events_per_s": round(total / residents_seconds),
        "rebuild_all_read_models_events_per_s": round(total / all_seconds),
        "store": "postgres" if settings.uses_postgres else "sqlite"}))


if __name__ == "__main__":
    main()
