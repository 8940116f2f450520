"""Each service's relational database: read models, relay position, projection tracking.

SQLite file beside the event store by default; in PostgreSQL, the service's own schema (the same
one its event store uses), selected with `search_path` so table definitions stay schema-free.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import BigInteger, Column, MetaData, String, Table, create_engine, event, exc
from sqlalchemy.engine import Engine

from concierge.config import Settings
from concierge.storage import ensure_postgres_schema

chassis_metadata = MetaData()

# A pooled connection idle longer than this is pinged before use (a database restart while it
# sat in the pool would otherwise fail its next statement). One in steady use is not: a ping
# on every checkout was a tenth of all statements the services sent.
PING_AFTER_IDLE_SECONDS = 1.0
IDLE_IN_TX_MS = 60_000

relay_position = Table(
    "concierge_relay_position",
    chassis_metadata,
    Column("service", String(50), primary_key=True),
    Column("position", BigInteger, nullable=False),
)

projection_tracking = Table(
    "concierge_projection_tracking",
    chassis_metadata,
    Column("projection", String(100), primary_key=True),
    Column("source", String(50), primary_key=True),
    Column("position", BigInteger, nullable=False),
)

# An engine's execution option: what its advisory lock keys start with (`Settings.lock_namespace`,
# read by `concierge.projection.lock_namespace`).
LOCK_NAMESPACE_OPTION = "concierge_lock_namespace"

# The shape each read model's tables were created with (ReadModel.version).
read_model_versions = Table(
    "concierge_read_model_versions",
    chassis_metadata,
    Column("name", String(100), primary_key=True),
    Column("version", BigInteger, nullable=False),
)


def service_engine(service: str, settings: Settings) -> Engine:
    if settings.uses_postgres:
        schema = settings.schema_for(service)
        ensure_postgres_schema(settings, schema)
        url = settings.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
        url = url.replace("postgres://", "postgresql+psycopg://", 1)
        engine = create_engine(
            url,
            # No overflow: SQLAlchemy closes an overflow connection as soon as it is returned,
            # so a pool at its size under load would connect anew for every statement.
            pool_size=settings.db_pool_size,
            max_overflow=0,
            # A transaction left idle this long is ended by the server, releasing its locks
            # (the event store's own pool does the same after 5 s): should a green thread of
            # this process ever stall inside one, the other replicas are not held up for good.
            connect_args={"options": f"-csearch_path={schema} "
                                     f"-cidle_in_transaction_session_timeout={IDLE_IN_TX_MS}",
                          "application_name": settings.application_name(service)},
            execution_options={LOCK_NAMESPACE_OPTION: settings.lock_namespace},
        )
        ping_when_idle(engine)
    else:
        path = settings.service_dir(service) / "readmodel.sqlite3"
        engine = create_engine(
            f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 30}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    chassis_metadata.create_all(engine)
    return engine


def ping_when_idle(engine: Engine, idle_seconds: float = PING_AFTER_IDLE_SECONDS) -> None:
    """SQLAlchemy's pre-ping, only for connections that sat in the pool `idle_seconds` or more.

    A failed ping invalidates the whole pool, as pre-ping does, and the checkout goes on with a
    new connection; a statement failing on a connection used moments before a restart is
    invalidated by SQLAlchemy's own disconnect handling, and the caller's retry gets a new one.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("checked_in_at")
        if since is None or time.monotonic() - since < idle_seconds:
            return  # new, or in steady use
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as error:
            if not engine.dialect.is_disconnect(error, dbapi_conn, None):
                raise
            alive = False
        if not alive:
            raise exc.InvalidatePoolError("the database closed this connection")
