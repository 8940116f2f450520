"""Replicas of a service start together: each creates the service's schema and tables if they
are missing, and none may fail because another is doing the same at that moment."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg

from concierge import green
from concierge.config import Settings
from concierge.runtime import open_store
from tests.support.toy import LedgerApp

REPLICAS = 4


def test_replicas_starting_at_once_on_a_new_schema_all_start(postgres_url: str,
                                                             tmp_path: Path) -> None:
    prefixes = [f"s{uuid.uuid4().hex[:8]}_" for _ in range(3)]
    try:
        for prefix in prefixes:  # a few rounds: the race is a matter of timing
            settings = Settings(data_dir=tmp_path, database_url=postgres_url,
                                schema_prefix=prefix)
            starts = [green.spawn(open_store, "ledger", settings, LedgerApp)
                      for _ in range(REPLICAS)]
            opened = [start.wait() for start in starts]  # raises what a start raised
            for app, engine in opened:
                app.close()
                engine.dispose()
            assert len(opened) == REPLICAS
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            for prefix in prefixes:
                conn.execute(f'DROP SCHEMA IF EXISTS "{prefix}ledger" CASCADE')
