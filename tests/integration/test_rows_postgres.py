"""Rows' bulk writes on PostgreSQL (one `unnest` statement with binary arrays per table and kind)
keep every value: text that would need quoting in an array literal, NULLs, numbers, booleans,
instants; patches change only existing rows and only their given columns."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
import pytest
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


class StatementCount:
    """Statements psycopg sends (an executemany counts one per row, as it sends them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent = 0
        execute, executemany = psycopg.Cursor.execute, psycopg.Cursor.executemany

        def counted(cursor: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
            self.sent += 1
            return execute(cursor, query, params, **kwargs)

        def counted_many(cursor: Any, query: Any, params_seq: Any, **kwargs: Any) -> Any:
            params_seq = list(params_seq)
            self.sent += len(params_seq)
            return executemany(cursor, query, params_seq, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", counted)
        monkeypatch.setattr(psycopg.Cursor, "executemany", counted_many)

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


def test_bulk_writes_keep_every_value_and_change_rows_by_key(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
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

        with engine.begin() as conn:
            rows = Rows(conn)
            for i, label in enumerate(reversed(AWKWARD)):  # patches of two columns, many rows
                if i % 3 == 0:
                    continue
                change = {"label": label if i % 2 else None,
                          "seen": moment - dt.timedelta(days=i) if i % 4 else None}
                rows.update(samples, ("k", str(i)), **change)
                expected[("k", str(i))].update(change)
            # No such row: nothing happens (same two columns, so in the same statement).
            rows.update(samples, ("k", "missing"), label="x", seen=moment)
            rows.update(samples, ("other", "0"), label="y", seen=None)
            for i in (0, 3):  # deletions, several in one statement
                rows.delete(samples, "k", str(i))
                del expected[("k", str(i))]
            rows.delete(samples, "k", "missing")
            count = StatementCount(monkeypatch)
            rows.flush()
            statements = count.sent
            monkeypatch.undo()
        with engine.connect() as conn:
            stored = {(r.kind, r.id): dict(r._mapping) for r in conn.execute(select(samples))}
        assert stored == expected
        assert statements == 2  # one UPDATE for all patches, one DELETE for all deletions
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
