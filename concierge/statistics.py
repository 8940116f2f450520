"""The planner's statistics of a service's read models, kept fresh by the service itself.

PostgreSQL plans a list's query from the statistics of its tables (how many rows a community
has, how often a text occurs); a table never analysed looks to it like a few dozen rows, and the
plan it picks for a 50,000-row list (a bitmap of the whole community, then a sort) grows with
the list. Autovacuum's analyze keeps them fresh, but a server may run without it (this machine's
does): so each service analyses its own read-model tables on autovacuum's rule (rows changed
since the last analyze above 50 + 10% of the live rows), every `interval` seconds, and a rebuild
analyses its new tables before swapping them in. Where autovacuum runs, it has usually done so
already and this finds nothing to do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

THRESHOLD = 50  # autovacuum_analyze_threshold's default
SCALE = 0.1  # autovacuum_analyze_scale_factor's default
INTERVAL_SECONDS = 30.0


def stale_tables(conn: Connection, tables: Sequence[str]) -> list[str]:
    """The tables of the connection's schema that autovacuum's rule would analyse now."""
    if conn.dialect.name != "postgresql" or not tables:
        return []
    found = conn.execute(text(
        "SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema() "
        "AND relname = ANY(:tables) AND n_mod_since_analyze > :threshold + :scale * n_live_tup "
        "ORDER BY relname"), {"tables": list(tables), "threshold": THRESHOLD, "scale": SCALE})
    return [str(name) for name in found.scalars()]


def analyse(conn: Connection, tables: Sequence[str]) -> None:
    """ANALYZE these tables (PostgreSQL; SQLite's planner is not misled by a missing one)."""
    if conn.dialect.name != "postgresql":
        return
    quote = conn.dialect.identifier_preparer.quote
    for table in tables:
        conn.exec_driver_sql(f"ANALYZE {quote(table)}")


class Statistics:
    """A background loop: analyse the read-model tables that have changed enough."""

    def __init__(self, engine: Engine, tables: Sequence[str],
                 interval: float = INTERVAL_SECONDS) -> None:
        self.engine = engine
        self.tables = list(tables)
        self.interval = interval
        self._stop = threading.Event()

    def refresh(self) -> list[str]:
        """Analyse what is stale now; return the tables analysed."""
        if self.engine.dialect.name != "postgresql":
            return []
        with self.engine.connect() as conn:
            stale = stale_tables(conn, self.tables)
            analyse(conn, stale)
            conn.commit()
        return stale

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception as exc:  # the next round tries again; lists are only slower
                log.warning("analysing read models failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
