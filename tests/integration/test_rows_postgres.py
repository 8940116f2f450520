"""Rows' bulk upsert on PostgreSQL (one `unnest` statement with binary arrays) keeps every value:
text that would need quoting in an array literal, NULLs, numbers, booleans, instants."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    select,
    text,
)

from concierge.projection import Rows

metadata = MetaData()
samples = Table(
    "rows_samples", metadata,
    Column("kind", String(10), primary_key=True),
    Column("id", String(36), primary_key=True),
    Column("label", Text, nullable=True),
    Column("size", Integer, nullable=True),
    Column("open", Boolean, nullable=True),
    Column("seen", DateTime(timezone=True), nullable=True),
)

AWKWARD = ['plain', 'a,b', '{braces}', 'quote " and \\ backslash', "", "NULL", "tab\tnew\nline",
           "中文 é"]


def test_bulk_upsert_keeps_every_value_and_overwrites_by_key(postgres_url: str) -> None:
    schema = f"rows_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1),
                           connect_args={"options": f"-csearch_path={schema}"})
    try:
        metadata.create_all(engine)
        moment = dt.datetime(2026, 11, 24, 12, 30, tzinfo=dt.UTC)
        expected: dict[tuple[str, str], dict[str, Any]] = {}
        with engine.begin() as conn:
            rows = Rows(conn)
            for i, label in enumerate(AWKWARD):
                row = {"kind": "k", "id": str(i), "label": label, "size": i if i % 2 else None,
                       "open": bool(i % 3) if i % 4 else None,
                       "seen": moment + dt.timedelta(minutes=i) if i % 2 else None}
                rows.put(samples, **row)
                expected[("k", str(i))] = row
            rows.flush()
        with engine.begin() as conn:
            rows = Rows(conn)
            for i in (1, 2):  # a second flush overwrites by key
                row = {**expected[("k", str(i))], "label": f"again {i}", "size": 100 + i}
                rows.put(samples, **row)
                expected[("k", str(i))] = row
            rows.flush()
        with engine.connect() as conn:
            stored = {(r.kind, r.id): dict(r._mapping) for r in conn.execute(select(samples))}
        assert stored == expected
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
