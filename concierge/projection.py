"""Read models: SQLAlchemy tables fed by events, which can be dropped and rebuilt at any time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import MetaData, Table, bindparam, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from concierge.database import projection_tracking
from concierge.subscription import ProjectFn, ProjectionHandler


class ReadModel:
    """A named set of tables and, per source service, the event handlers that write them."""

    name = "read_model"
    metadata: MetaData

    def handlers(self) -> dict[str, dict[str, ProjectFn]]:
        """{source service: {event type: fn(connection, envelope)}}."""
        raise NotImplementedError

    def create(self, engine: Engine) -> None:
        self.metadata.create_all(engine)

    def drop(self, engine: Engine) -> None:
        """Drop the tables and forget every position, so the next catch-up starts from zero."""
        self.metadata.drop_all(engine)
        with engine.begin() as conn:
            conn.execute(delete(projection_tracking).where(
                projection_tracking.c.projection == self.name))

    def projection_handlers(self, engine: Engine) -> dict[str, ProjectionHandler]:
        return {
            source: ProjectionHandler(f"{self.name}", engine, fns)
            for source, fns in self.handlers().items()
        }


Progress = Callable[[str, int, int], None]

_UPSERTS: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], Any] = {}


def upsert(conn: Connection, table: Table, keys: Sequence[str], row: dict[str, Any]) -> None:
    """Insert or overwrite a row (a replayed event writes the same row again).

    The statement is built once per table and column set with bound parameters, so SQLAlchemy
    compiles it once: building it with the values inside costs a compile per row, which made
    rebuilds ten times slower.
    """
    dialect = conn.dialect.name
    columns = tuple(sorted(row))
    cache_key = (dialect, table.fullname, tuple(keys), columns)
    compiled = _UPSERTS.get(cache_key)
    if compiled is None:
        module = postgresql if dialect == "postgresql" else sqlite
        insert = module.insert(table).values({c: bindparam(c) for c in columns})
        changes = {c: insert.excluded[c] for c in columns if c not in keys}
        if changes:
            stmt = insert.on_conflict_do_update(index_elements=list(keys), set_=changes)
        else:
            stmt = insert.on_conflict_do_nothing(index_elements=list(keys))
        # SQLAlchemy does not cache dialect ON CONFLICT statements: compile once here.
        compiled = stmt.compile(dialect=conn.dialect)
        _UPSERTS[cache_key] = compiled
    params = compiled.construct_params(row)
    if compiled.positional:
        conn.exec_driver_sql(compiled.string, tuple(params[name]
                                                    for name in compiled.positiontup))
    else:
        conn.exec_driver_sql(compiled.string, params)
