"""The read-model engine's pool pings a connection only after it sat idle, and a connection the
server closed meanwhile is replaced, not handed out. Real PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text

from concierge.database import ping_when_idle


@pytest.fixture
def engine(postgres_url: str) -> Any:
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1),
                           pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def counting_pings(engine: Any) -> list[int]:
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_conn: Any) -> bool:
        pings.append(1)
        return ping(dbapi_conn)

    engine.dialect.do_ping = counted
    return pings


def backend_pid(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar())


def test_a_connection_in_steady_use_is_not_pinged(engine: Any) -> None:
    ping_when_idle(engine, idle_seconds=60)
    pings = counting_pings(engine)

    pids = {backend_pid(engine) for _ in range(20)}

    assert pings == []
    assert len(pids) == 1  # the one pooled connection, reused each time


def test_a_connection_the_server_closed_while_idle_is_replaced_on_checkout(
        engine: Any, postgres_url: str) -> None:
    ping_when_idle(engine, idle_seconds=0.05)
    pings = counting_pings(engine)
    first = backend_pid(engine)
    with psycopg.connect(postgres_url, autocommit=True) as admin:  # as a database restart does
        admin.execute("SELECT pg_terminate_backend(%s)", (first,))
    time.sleep(0.1)

    second = backend_pid(engine)  # no error: the ping found it closed and the pool reconnected

    assert pings == [1]
    assert second != first


def test_a_service_transaction_left_idle_is_ended_by_the_server(
        postgres_url: str, data_dir: Any, schema_prefix: str) -> None:
    """Should a green thread stall inside a transaction, the server ends it and frees its
    locks, so other replicas are not held up for good."""
    from concierge.config import Settings
    from concierge.database import IDLE_IN_TX_MS, service_engine

    engine = service_engine("ledger", Settings(data_dir=data_dir, database_url=postgres_url,
                                               schema_prefix=schema_prefix))
    try:
        with engine.connect() as conn:
            setting = conn.execute(text("SELECT setting FROM pg_settings WHERE name = "
                                        "'idle_in_transaction_session_timeout'")).scalar()
        assert int(setting) == IDLE_IN_TX_MS
    finally:
        engine.dispose()
