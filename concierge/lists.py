"""Pages of read-model lists that cost about the same on page 1, page 100 and the last page.

The pattern every list follows (docs/chassis.md, "Lists"):

- The page is read from the listed table alone, filtered and ordered by an index that starts
  with the filter's columns and ends with the sort's expressions, so PostgreSQL walks the index
  and stops after the page; what the page shows from other tables (a building's name, an app
  status) is read for the page's rows only, by key, after the limit (`enrich`).
- A page in the back half of the list is read from the end, in the reverse order, and turned
  round: the last page skips as few rows as the first.
- The total is given by the caller when a projection keeps it; otherwise it is counted over the
  listed table alone, without the joins.
- Sort and search expressions hold no bound parameters (`literal_column`): an index is used for
  an expression only when the query's is the same tree, and a parameter never is. LIMIT and
  OFFSET are written into the statement too (the plan is made for the page asked), and so is a
  search's pattern (`containing`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from marshmallow import fields, validate
from sqlalchemy import (
    DDL,
    String,
    Table,
    bindparam,
    event,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from contracts.errors import Invalid

Item = dict[str, Any]


def sorted_by(expressions: Sequence[ColumnElement[Any]], descending: bool
              ) -> list[ColumnElement[Any]]:
    return [e.desc() if descending else e.asc() for e in expressions]


def sort_field(keys: Sequence[str], default: str) -> fields.String:
    """A list query's `sort`: one of the keys, '-' before it to reverse."""
    options = [*keys, *(f"-{key}" for key in keys)]
    return fields.String(load_default=default, validate=validate.OneOf(options))


def sort_key(sort: str, allowed: Sequence[str]) -> tuple[str, bool]:
    """The key a `sort` names and whether it is reversed; Invalid naming `sort` otherwise."""
    key = sort.removeprefix("-")
    if key not in allowed:
        options = ", ".join(allowed)
        raise Invalid.field("sort", f"Must be one of: {options} (prefix '-' to reverse).")
    return key, sort.startswith("-")


def page_of(conn: Connection, query: Any, order: Sequence[ColumnElement[Any]],
            descending: bool, page: int, per_page: int, shape: Callable[[Any], Item],
            total: int | None = None,
            enrich: Callable[[Connection, list[Item]], None] | None = None) -> dict[str, Any]:
    """One page of `query` (the listed table's own columns and filters) in `order`.

    `order` ends with a unique column (the key), so every row has one place in the list.
    """
    if total is None:
        total = int(conn.execute(select(func.count()).select_from(query.subquery())).scalar()
                    or 0)
    skip = (page - 1) * per_page
    rows: list[Any] = []
    if skip < total:
        take = min(per_page, total - skip)
        from_end = total - skip - take
        if from_end < skip:  # the back half: read from the end, in the reverse order
            found = conn.execute(query.order_by(*sorted_by(order, not descending))
                                 .limit(_number(take)).offset(_number(from_end)))
            rows = list(found)[::-1]
        else:
            rows = list(conn.execute(query.order_by(*sorted_by(order, descending))
                                     .limit(_number(take)).offset(_number(skip))))
    items = [shape(row) for row in rows]
    if enrich is not None and items:
        enrich(conn, items)
    return {"items": items, "total": total, "page": page, "per_page": per_page}


def _number(value: int) -> Any:
    return literal_column(str(int(value)))


def containing(column: ColumnElement[Any], text: str) -> ColumnElement[bool]:
    """`column LIKE '%text%'`, the pattern written into the statement (escaped). As a parameter,
    a prepared statement's generic plan would not know it and would walk the sort's index for
    a text that one row holds, instead of the trigram index."""
    escaped = text.replace("/", "//").replace("%", "/%").replace("_", "/_")
    pattern = bindparam(None, f"%{escaped}%", type_=String(), literal_execute=True)
    return column.like(pattern, escape="/")


# --- search ------------------------------------------------------------------------------------

TRIGRAM_EXTENSION = "pg_trgm"


def trigram_index(table: Table, name: str, expression: ColumnElement[Any]) -> None:
    """A GIN trigram index on `expression` (PostgreSQL with pg_trgm): `LIKE '%text%'` on the
    same expression uses it when the text has three characters or more. Without the extension
    (or on SQLite) there is no such index and the search scans the filtered rows instead."""

    def create(target: Table, conn: Connection, **_: Any) -> None:
        if conn.dialect.name != "postgresql":
            return
        schema = _trigram_schema(conn)
        if schema is None:
            return
        sql = str(expression.compile(dialect=conn.dialect,
                                     compile_kwargs={"literal_binds": True}))
        quote = conn.dialect.identifier_preparer.quote
        conn.execute(DDL(f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {quote(target.name)} "
                         f"USING gin (({sql}) {quote(schema)}.gin_trgm_ops) "
                         # No pending list: without autovacuum it would grow to 4 MB, every
                         # search scanning it and an insert now and then merging it all.
                         "WITH (fastupdate = off)"))

    event.listen(table, "after_create", create)


def _trigram_schema(conn: Connection) -> str | None:
    """The schema of pg_trgm, installed in `public` if missing and allowed (a trusted extension
    since PostgreSQL 13: the database owner may create it); None when it cannot be had."""
    found = conn.execute(text("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                              "ON n.oid = e.extnamespace WHERE e.extname = :name"),
                         {"name": TRIGRAM_EXTENSION}).scalar()
    if found is not None:
        return str(found)
    savepoint = conn.begin_nested()
    try:
        # One creator at a time across every deployment of the database.
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('concierge:pg_trgm'))"))
        conn.execute(text(f"CREATE EXTENSION IF NOT EXISTS {TRIGRAM_EXTENSION} "
                          "WITH SCHEMA public"))
        savepoint.commit()
    except Exception:  # not installed on this server, or not allowed: search scans instead
        savepoint.rollback()
        return None
    return "public"
