"""The read-model unit of work: one final write per row, grouped, same result as row by row."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    select,
)
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine

from concierge.database import chassis_metadata, projection_tracking
from concierge.projection import ReadModel, Rows

metadata = MetaData()
things = Table(
    "things", metadata,
    Column("id", String(10), primary_key=True),
    Column("name", String(50), nullable=False),
    Column("size", Integer, nullable=True),
    Column("flag", Boolean, nullable=True),
)
pairs = Table(
    "pairs", metadata,
    Column("kind", String(10), primary_key=True),
    Column("ref", String(10), primary_key=True),
    Column("seen", DateTime, nullable=True),
)


@pytest.fixture
def engine() -> Engine:
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    chassis_metadata.create_all(engine)
    return engine


def _all(engine: Engine, table: Table) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table).order_by(*table.primary_key))]


def _count_statements(engine: Engine) -> list[str]:
    statements: list[str] = []

    @sa_event.listens_for(engine, "before_cursor_execute")
    def _record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split()[0].upper())

    return statements


def test_put_then_update_is_one_insert(engine: Engine) -> None:
    statements = _count_statements(engine)
    with engine.begin() as conn:
        rows = Rows(conn)
        for i in range(50):
            rows.put(things, id=f"t{i}", name="a", size=1)
            rows.update(things, f"t{i}", size=2, flag=True)
        rows.flush()
    assert statements == ["INSERT"]  # fifty rows, one executemany
    stored = _all(engine, things)
    assert len(stored) == 50
    assert stored[0] == {"id": "t0", "name": "a", "size": 2, "flag": True}


def test_update_of_unread_row_is_a_patch_and_missing_rows_stay_missing(engine: Engine) -> None:
    with engine.begin() as conn:
        Rows(conn).put(things, id="x", name="old", size=1)
        rows = Rows(conn)
        rows.put(things, id="x", name="old", size=1)
        rows.flush()
    with engine.begin() as conn:
        rows = Rows(conn)
        rows.update(things, "x", name="new")
        rows.update(things, "ghost", name="nobody")
        rows.flush()
    assert _all(engine, things) == [{"id": "x", "name": "new", "size": 1, "flag": None}]


def test_get_sees_pending_writes_and_merges_patches(engine: Engine) -> None:
    with engine.begin() as conn:
        rows = Rows(conn)
        rows.put(things, id="x", name="n", size=1)
        rows.flush()
    with engine.begin() as conn:
        rows = Rows(conn)
        rows.update(things, "x", size=5)
        assert rows.get(things, "x") == {"id": "x", "name": "n", "size": 5, "flag": None}
        rows.put(things, id="y", name="m")
        assert rows.get(things, "y")["name"] == "m"
        rows.delete(things, "y")
        assert rows.get(things, "y") is None
        rows.update(things, "y", name="after delete")  # like SQL: nothing to update
        assert rows.get(things, "nobody") is None
        rows.flush()
    assert _all(engine, things) == [{"id": "x", "name": "n", "size": 5, "flag": None}]


def test_rows_handed_out_are_copies_and_a_row_changed_after_a_flush_is_written_again(
        engine: Engine) -> None:
    """Rows changes the rows it holds in place; nothing a caller keeps may alias them."""
    with engine.begin() as conn:
        rows = Rows(conn)
        rows.put(things, id="x", name="first", size=1)
        seen = rows.get(things, "x")
        assert seen is not None
        seen["name"] = "changed by the caller"
        rows.update(things, "x", size=2)
        assert rows.get(things, "x") == {"id": "x", "name": "first", "size": 2, "flag": None}
        rows.flush()
        rows.update(things, "x", flag=True)
        rows.flush()
        assert seen["size"] == 1  # what the caller kept did not follow either
    assert _all(engine, things) == [{"id": "x", "name": "first", "size": 2, "flag": True}]


def test_delete_then_put_leaves_the_new_row_and_composite_keys_work(engine: Engine) -> None:
    import datetime as dt

    moment = dt.datetime(2026, 11, 24, 12, 0, 0)
    with engine.begin() as conn:
        rows = Rows(conn)
        rows.put(pairs, kind="a", ref="1", seen=moment)
        rows.put(pairs, kind="b", ref="1")
        rows.flush()
        rows.delete(pairs, "a", "1")
        rows.delete(pairs, "b", "1")
        rows.put(pairs, kind="b", ref="1", seen=moment)
        rows.flush()
    assert _all(engine, pairs) == [{"kind": "b", "ref": "1", "seen": moment}]


def test_execute_flushes_pending_writes_first(engine: Engine) -> None:
    with engine.begin() as conn:
        rows = Rows(conn)
        rows.put(things, id="x", name="n")
        assert rows.execute(select(things.c.name)).scalars().all() == ["n"]


def test_batched_result_equals_row_by_row(engine: Engine) -> None:
    """A random mix of writes gives the same table flushed once or after every step."""
    import random

    rng = random.Random(7)
    ops = []
    for _ in range(400):
        key = f"k{rng.randrange(20)}"
        op = rng.choice(["put", "update", "delete", "get"])
        ops.append((op, key, rng.randrange(100)))

    def run(flush_each: bool) -> list[dict[str, Any]]:
        engine = create_engine("sqlite://")
        metadata.create_all(engine)
        with engine.begin() as conn:
            rows = Rows(conn)
            for op, key, value in ops:
                if op == "put":
                    rows.put(things, id=key, name=f"n{value}", size=value)
                elif op == "update":
                    rows.update(things, key, size=value)
                elif op == "delete":
                    rows.delete(things, key)
                else:
                    found = rows.get(things, key)
                    if found is not None:
                        rows.update(things, key, name=found["name"] + "+")
                if flush_each:
                    rows.flush()
            rows.flush()
        return _all(engine, things)

    assert run(flush_each=False) == run(flush_each=True)


class _Versioned(ReadModel):
    name = "versioned"
    metadata = metadata

    def handlers(self) -> dict[str, dict[str, Any]]:
        return {}


def test_a_new_read_model_version_drops_tables_and_positions(engine: Engine) -> None:
    model = _Versioned()
    assert model.create(engine) is False
    with engine.begin() as conn:
        rows = Rows(conn)
        rows.put(things, id="x", name="n")
        rows.flush()
        conn.execute(projection_tracking.insert().values(projection="versioned", source="s",
                                                         position=9))
    assert model.create(engine) is False  # same version: kept
    assert len(_all(engine, things)) == 1
    model.version = 2
    assert model.create(engine) is True
    assert _all(engine, things) == []
    assert _all(engine, projection_tracking) == []
    assert model.create(engine) is False
