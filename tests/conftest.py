"""Test wiring: eventlet first, then real RabbitMQ / PostgreSQL fixtures.

Broker and database tests run against the machine's real servers. Locally they are skipped when
a server is down; with CI=true they fail instead, so CI can never pass without them.
"""

from concierge import green

green.patch()

import os  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

RABBIT_URI = os.environ.get("TEST_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_TEST_DB = os.environ.get("TEST_POSTGRES_DB", "concierge_test")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable: {exc}"
    if IN_CI:
        pytest.fail(f"{message} (CI requires it)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def rabbit_uri() -> str:
    import kombu

    try:
        with kombu.Connection(RABBIT_URI, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=2)
    except Exception as exc:
        _unavailable("RabbitMQ", exc)
    return RABBIT_URI


@pytest.fixture(scope="session")
def postgres_url() -> str:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (PG_TEST_DB,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{PG_TEST_DB}"')
    except Exception as exc:
        _unavailable("PostgreSQL", exc)
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{PG_TEST_DB}"


@pytest.fixture
def schema_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh set of PostgreSQL schemas per test, dropped afterwards."""
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    yield prefix
    if "postgres_url" in request.fixturenames:
        import psycopg

        url = request.getfixturevalue("postgres_url")
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (prefix + "%",)
            ).fetchall()
            for (name,) in rows:
                conn.execute(f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"
