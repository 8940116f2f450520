"""Where each service's event store lives: a SQLite file under the data folder by default, with
CONCIERGE_DATABASE_URL the service's own schema in PostgreSQL (the eventsourcing settings)."""

from __future__ import annotations

from concierge.config import Settings

# Aggregates are cached and fast-forwarded with the events stored since, so a long stream is not
# replayed from its start on every command (also correct when other replicas write).
CACHE_ENV = {"AGGREGATE_CACHE_MAXSIZE": "5000", "AGGREGATE_CACHE_FASTFORWARD": "y"}



def store_env(service: str, settings: Settings) -> dict[str, str]:
    """The eventsourcing settings of one service's store."""
    return {**CACHE_ENV, **_persistence_env(service, settings)}



def _persistence_env(service: str, settings: Settings) -> dict[str, str]:
    if settings.uses_postgres:
        pg = settings.postgres_parts()
        schema = settings.schema_for(service)
        ensure_postgres_schema(settings, schema)
        return {
            # The library's factory, naming its connections (`application_name`).
            "PERSISTENCE_MODULE": "concierge.pgrecorder:PostgresFactory",
            "CONCIERGE_APPLICATION_NAME": settings.application_name(service),
            "POSTGRES_DBNAME": pg["dbname"],
            "POSTGRES_HOST": pg["host"],
            "POSTGRES_PORT": pg["port"],
            "POSTGRES_USER": pg["user"],
            "POSTGRES_PASSWORD": pg["password"],
            "POSTGRES_SCHEMA": schema,
            # One connection kept; up to CONCIERGE_DB_POOL_SIZE under load, each closed
            # after ten idle minutes (psycopg_pool's max_idle).
            "POSTGRES_POOL_SIZE": "1",
            "POSTGRES_MAX_OVERFLOW": str(settings.db_pool_size - 1),
            # Not POSTGRES_ENABLE_DB_FUNCTIONS: in eventsourcing 9.5.6 that faster path skips the
            # tracking record, so a subscriber would lose its idempotence on PostgreSQL
            # (tests/integration/test_store.py proves tracking is kept).
            "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
            "PROCESS_RECORDER_TOPIC": "concierge.pgrecorder:QuietProcessRecorder",
            "CREATE_TABLE": "y",
        }
    path = settings.service_dir(service) / "events.sqlite3"
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(path),
        "PROCESS_RECORDER_TOPIC": "concierge.sqliterecorder:AnsweringProcessRecorder",
        "CREATE_TABLE": "y",
    }



def ensure_postgres_schema(settings: Settings, schema: str) -> None:
    import psycopg

    pg = settings.postgres_parts()
    with psycopg.connect(
        host=pg["host"],
        port=int(pg["port"]),
        user=pg["user"],
        password=pg["password"] or None,
        dbname=pg["dbname"],
        autocommit=True,
        application_name=settings.application_name("setup"),
    ) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')

