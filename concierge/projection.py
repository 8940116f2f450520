"""Read models: SQLAlchemy tables fed by events, which can be dropped and rebuilt at any time.

Handlers write through `Rows`, a unit of work addressed by primary key: it folds every change a
batch of events makes to one row into a single final write, and sends the writes of a batch as
one `executemany` per table and statement. A rebuild then costs a few statements per thousand
events instead of several per event, and a command's own projection stays a short transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import ARRAY, MetaData, Table, and_, bindparam, delete, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from concierge import library
from concierge.database import LOCK_NAMESPACE_OPTION, projection_tracking, read_model_versions

Key = tuple[Any, ...]
_ABSENT = "absent"
_ROW = "row"
_PATCH = "patch"


class Rows:
    """Key-addressed reads and writes of read-model tables inside one transaction.

    Each touched row is held in one of three states: a whole row (to be written as an upsert),
    absent (to be deleted), or a patch of some columns (the row was never read: an UPDATE that
    changes nothing when the row does not exist). Only the final state of each row is written,
    so the order of writes across rows does not matter and they can be grouped freely.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._state: dict[tuple[str, Key], tuple[str, dict[str, Any] | None]] = {}
        self._dirty: dict[tuple[str, Key], Table] = {}

    # -- reads -----------------------------------------------------------------------------
    def get(self, table: Table, *key: Any) -> dict[str, Any] | None:
        """The row with this primary key as the batch has left it, or None."""
        slot = (table.fullname, tuple(key))
        state = self._state.get(slot)
        if state is not None and state[0] != _PATCH:
            return dict(state[1]) if state[0] == _ROW and state[1] is not None else None
        stored = self.conn.execute(select(table).where(_key_clause(table, key))).first()
        if stored is None:
            self._state[slot] = (_ABSENT, None)
            self._dirty.pop(slot, None)
            return None
        row = dict(stored._mapping)
        if state is not None:  # a pending patch on a row read only now: it stays to be written
            row.update(state[1] or {})
        self._state[slot] = (_ROW, row)
        return dict(row)

    def prefetch(self, table: Table, keys: Iterable[Any]) -> None:
        """Read the rows of these keys (a one-column primary key) in one query, so that the
        handlers' `get`s of them cost no round trip: a batch of new APTs is one query, not
        one per APT. Keys the batch already holds are left as they are."""
        (column,) = table.primary_key.columns
        wanted = [key for key in dict.fromkeys(keys)
                  if key is not None and (table.fullname, (key,)) not in self._state]
        postgres = self.conn.dialect.name == "postgresql"
        for start in range(0, len(wanted), 1000):
            chunk = wanted[start:start + 1000]
            # PostgreSQL: one array parameter (= ANY): an IN list of a thousand parameters
            # cost 14 ms a query to parse and plan, more than the rows it found.
            match = (column == func.any(bindparam("keys", chunk, type_=ARRAY(column.type)))
                     if postgres else column.in_(chunk))
            found = {row._mapping[column.name]: dict(row._mapping)
                     for row in self.conn.execute(select(table).where(match))}
            for key in chunk:
                row = found.get(key)
                self._state[(table.fullname, (key,))] = ((_ROW, row) if row is not None
                                                         else (_ABSENT, None))

    def execute(self, statement: Any, *args: Any) -> Any:
        """Run any other statement (a query over many rows): pending writes go first."""
        self.flush()
        return self.conn.execute(statement, *args)

    # -- writes ----------------------------------------------------------------------------
    def put(self, table: Table, **row: Any) -> None:
        """Insert or replace the whole row; columns not given become NULL (or their default)."""
        shape = _shape(table)
        whole = {**shape.defaults, **row}
        self._write(table, tuple([whole[name] for name in shape.keys]), (_ROW, whole))

    def update(self, table: Table, key: Key | Any, **values: Any) -> None:
        """Change some columns of the row, if it exists (a no-op otherwise, as in SQL)."""
        if not values:
            return
        key = key if isinstance(key, tuple) else (key,)
        slot = (table.fullname, key)
        state = self._state.get(slot)
        if state is None:
            self._write(table, key, (_PATCH, dict(values)))
        elif state[0] == _ABSENT:
            return
        else:
            # The held dict is never handed out (`get` copies it): change it in place.
            state[1].update(values)  # type: ignore[union-attr]
            self._dirty[slot] = table

    def delete(self, table: Table, *key: Any) -> None:
        self._write(table, tuple(key), (_ABSENT, None))

    def _write(self, table: Table, key: Key, state: tuple[str, dict[str, Any] | None]) -> None:
        slot = (table.fullname, key)
        self._state[slot] = state
        self._dirty[slot] = table

    # -- flushing --------------------------------------------------------------------------
    def flush(self) -> None:
        """Write every pending change: one executemany per table and kind of statement."""
        if not self._dirty:
            return
        groups: dict[tuple[str, str, tuple[str, ...]], tuple[Table, list[dict[str, Any]]]] = {}
        for slot, table in self._dirty.items():
            kind, row = self._state[slot]
            shape = _shape(table)
            key_names = shape.keys
            if kind == _ROW:
                # Written before anything can change it again: no copy.
                params = row  # type: ignore[assignment]
                # A whole row holds every column (put starts from the defaults), sorted once.
                columns: tuple[str, ...] = (shape.columns if len(params) == len(shape.columns)
                                            else tuple(sorted(params)))
            elif kind == _ABSENT:
                params = {f"k_{name}": value for name, value in zip(key_names, slot[1],
                                                                     strict=True)}
                columns = ()
            else:
                params = {f"v_{name}": value for name, value in (row or {}).items()}
                params.update({f"k_{name}": value for name, value in zip(key_names, slot[1],
                                                                          strict=True)})
                columns = tuple(sorted(row or {}))
            groups.setdefault((table.fullname, kind, columns), (table, []))[1].append(params)
        self._dirty.clear()
        postgres = self.conn.dialect.name == "postgresql"
        for (_name, kind, columns), (table, batch) in groups.items():
            if postgres:
                # Even one row: straight to the driver, so a caller can queue the writes in
                # a pipeline (`concierge.subscription.pipelined`) and wait once for them all.
                if kind == _ROW:
                    _upsert_many_values(self.conn, table, columns, batch)
                else:
                    _change_many_values(self.conn, table, kind, columns, batch)
                continue
            if kind == _ROW:
                statement = _compiled_upsert(self.conn, table, columns)
            elif kind == _ABSENT:
                statement = _compiled_delete(self.conn, table)
            else:
                statement = _compiled_update(self.conn, table, columns)
            _execute_many(self.conn, statement, batch)
        # What was written is now the database's state; keep whole rows and absences for
        # later reads in this transaction, forget patches (their row may not exist).
        self._state = {slot: state for slot, state in self._state.items()
                       if state[0] != _PATCH}


class _Shape(NamedTuple):
    defaults: dict[str, Any]  # every column, with its scalar default or None
    keys: tuple[str, ...]  # the primary key's columns, in order
    columns: tuple[str, ...]  # every column, sorted: a whole row's statement shape


_SHAPES: dict[str, _Shape] = {}


def _shape(table: Table) -> _Shape:
    """A table's column defaults and key column names (SQLAlchemy rebuilds these lists on
    every access, which showed in rebuild profiles)."""
    shape = _SHAPES.get(table.fullname)
    if shape is None:
        defaults = {column.name: _default(column) for column in table.columns}
        shape = _Shape(defaults, tuple(column.name for column in table.primary_key.columns),
                       tuple(sorted(defaults)))
        _SHAPES[table.fullname] = shape
    return shape


def _default(column: Any) -> Any:
    default = column.default
    if default is not None and getattr(default, "is_scalar", False):
        return default.arg
    return None


def _key_clause(table: Table, key: Sequence[Any]) -> Any:
    columns = list(table.primary_key.columns)
    if len(columns) != len(key):
        raise ValueError(f"{table.name} has a key of {len(columns)} columns, got {len(key)}")
    return and_(*(column == value for column, value in zip(columns, key, strict=True)))


_COMPILED: dict[tuple[str, str, str, tuple[str, ...]], Any] = {}


def _cached(conn: Connection, kind: str, table: Table, columns: tuple[str, ...],
            build: Callable[[], Any]) -> Any:
    """SQLAlchemy does not cache dialect ON CONFLICT statements: compile each shape once."""
    cache_key = (conn.dialect.name, kind, table.fullname, columns)
    compiled = _COMPILED.get(cache_key)
    if compiled is None:
        compiled = build().compile(dialect=conn.dialect)
        _COMPILED[cache_key] = compiled
    return compiled


def _compiled_upsert(conn: Connection, table: Table, columns: tuple[str, ...]) -> Any:
    def build() -> Any:
        module = postgresql if conn.dialect.name == "postgresql" else sqlite
        keys = [c.name for c in table.primary_key.columns]
        insert = module.insert(table).values({c: bindparam(c) for c in columns})
        changes = {c: insert.excluded[c] for c in columns if c not in keys}
        if changes:
            return insert.on_conflict_do_update(index_elements=keys, set_=changes)
        return insert.on_conflict_do_nothing(index_elements=keys)

    return _cached(conn, "upsert", table, columns, build)


def _compiled_delete(conn: Connection, table: Table) -> Any:
    def build() -> Any:
        return delete(table).where(and_(*(c == bindparam(f"k_{c.name}")
                                          for c in table.primary_key.columns)))

    return _cached(conn, "delete", table, (), build)


def _compiled_update(conn: Connection, table: Table, columns: tuple[str, ...]) -> Any:
    def build() -> Any:
        return (table.update()
                .where(and_(*(c == bindparam(f"k_{c.name}") for c in table.primary_key.columns)))
                .values({c: bindparam(f"v_{c}") for c in columns}))

    return _cached(conn, "update", table, columns, build)


def _execute_many(conn: Connection, compiled: Any, batch: list[dict[str, Any]]) -> None:
    """Bound values go through the column types (datetimes, booleans), then to the driver."""
    processors = library.bind_processors(compiled)
    rows = []
    for params in batch:
        values = compiled.construct_params(params)
        for name, process in processors.items():
            if name in values and values[name] is not None:
                values[name] = process(values[name])
        if compiled.positional:
            rows.append(tuple(values[name] for name in compiled.positiontup))
        else:
            rows.append(values)
    if len(rows) == 1:
        conn.exec_driver_sql(compiled.string, rows[0])
    else:
        conn.exec_driver_sql(compiled.string, rows)


def _upsert_many_values(conn: Connection, table: Table, columns: tuple[str, ...],
                        batch: list[dict[str, Any]]) -> None:
    """Many rows in one upsert: each column goes as one array, zipped back by `unnest`.

    psycopg's executemany pipelines a statement per row, and every wait in the pipeline goes
    through eventlet's hub (a thousand rows cost 75 ms that way); a multi-row VALUES list makes
    psycopg parse a huge query each time. Here the statement text is short and the same for
    every batch. Each key appears once in a flush, as ON CONFLICT DO UPDATE requires.
    """
    found = _UNNEST_UPSERTS.get((table.fullname, columns))
    if found is None:
        quote = conn.dialect.identifier_preparer.quote
        keys = [c.name for c in table.primary_key.columns]
        arrays = ", ".join(f"%b::{table.c[c].type.compile(dialect=conn.dialect)}[]"
                           for c in columns)
        changes = [c for c in columns if c not in keys]
        conflict = f" ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO "
        conflict += ("UPDATE SET " + ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}"
                                               for c in changes)) if changes else "NOTHING"
        found = _UNNEST_UPSERTS[(table.fullname, columns)] = (
            f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
            f"SELECT * FROM unnest({arrays}){conflict}",
            [table.c[c].type.bind_processor(conn.dialect) for c in columns])
    sql, processors = found
    values = []
    for column, process in zip(columns, processors, strict=True):
        cells = [row.get(column) for row in batch]
        if process is not None:
            cells = [process(v) if v is not None else v for v in cells]
        values.append(cells)
    # The arrays go in binary (%b): psycopg's text array format quotes each element with a
    # regular expression, and `binary=True` alone only asks for binary results.
    with conn.connection.driver_connection.cursor() as cursor:
        cursor.execute(sql, tuple(values), binary=True)


_UNNEST_UPSERTS: dict[tuple[str, tuple[str, ...]], tuple[str, list[Any]]] = {}


def _change_many_values(conn: Connection, table: Table, kind: str, columns: tuple[str, ...],
                        batch: list[dict[str, Any]]) -> None:
    """Many rows' patches (or deletions) in one statement, joined by key to `unnest`ed arrays:
    executemany sent one statement per row (the mailer's deliveries, a statement each)."""
    keys = [c.name for c in table.primary_key.columns]
    cache_key = (table.fullname, kind, columns)
    sql = _UNNEST_CHANGES.get(cache_key)
    if sql is None:
        quote = conn.dialect.identifier_preparer.quote
        names = [f"k_{k}" for k in keys] + [f"v_{c}" for c in columns]
        types = [table.c[k].type for k in keys] + [table.c[c].type for c in columns]
        arrays = ", ".join(f"%b::{t.compile(dialect=conn.dialect)}[]" for t in types)
        aliases = ", ".join(f"c{i}" for i in range(len(names)))
        given = f"unnest({arrays}) AS given({aliases})"
        match = " AND ".join(f"{quote(table.name)}.{quote(k)} = given.c{i}"
                             for i, k in enumerate(keys))
        if kind == _ABSENT:
            sql = f"DELETE FROM {quote(table.name)} USING {given} WHERE {match}"
        else:
            changes = ", ".join(f"{quote(c)} = given.c{len(keys) + i}"
                                for i, c in enumerate(columns))
            sql = f"UPDATE {quote(table.name)} SET {changes} FROM {given} WHERE {match}"
        _UNNEST_CHANGES[cache_key] = sql
    values = []
    for prefix, names in (("k_", keys), ("v_", columns)):
        for name in names:
            process = table.c[name].type.bind_processor(conn.dialect)
            cells = [row.get(f"{prefix}{name}") for row in batch]
            if process is not None:
                cells = [process(v) if v is not None else v for v in cells]
            values.append(cells)
    with conn.connection.driver_connection.cursor() as cursor:
        cursor.execute(sql, tuple(values), binary=True)


_UNNEST_CHANGES: dict[tuple[str, str, tuple[str, ...]], str] = {}


ProjectFn = Callable[[Rows, dict[str, Any]], None]


class ReadModel:
    """A named set of tables and, per source service, the event handlers that write them.

    `version` names the shape of the tables: when it changes, the next start drops the tables
    and rebuilds them from the logs (the positions are forgotten with them).
    """

    name = "read_model"
    version = 1
    metadata: MetaData

    def handlers(self) -> dict[str, dict[str, ProjectFn]]:
        """{source service: {event type: fn(rows, envelope)}}."""
        raise NotImplementedError

    #: Optional: fn(rows, envelopes) run before a batch's handlers, to `Rows.prefetch` the
    #: rows they will `get`.
    prefetch: Callable[[Rows, list[dict[str, Any]]], None] | None = None

    def create(self, engine: Engine) -> bool:
        """Create the tables; drop them first if they hold an older shape. True if dropped."""
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                             {"k": advisory_key(f"schema:{self.name}", lock_namespace(conn))})
            stored = conn.execute(select(read_model_versions.c.version).where(
                read_model_versions.c.name == self.name)).scalar()
            existing = any(conn.dialect.has_table(conn, table.name)
                           for table in self.metadata.sorted_tables)
            outdated = existing and (stored or 1) != self.version
            if outdated:
                self._drop(conn)
            self.metadata.create_all(conn)
            if stored != self.version:
                conn.execute(delete(read_model_versions).where(
                    read_model_versions.c.name == self.name))
                conn.execute(read_model_versions.insert().values(name=self.name,
                                                                 version=self.version))
        return outdated

    def drop(self, engine: Engine) -> None:
        """Drop the tables and forget every position, so the next catch-up starts from zero."""
        with engine.begin() as conn:
            self._drop(conn)

    def _drop(self, conn: Connection) -> None:
        self.metadata.drop_all(conn)
        conn.execute(delete(projection_tracking).where(
            projection_tracking.c.projection == self.name))

def advisory_key(name: str, namespace: str = "") -> int:
    """A PostgreSQL advisory lock key for a read model's name (64 bits of its hash).

    `namespace`: the deployment's (`lock_namespace(engine)`), so that deployments sharing a
    database never wait for each other's locks; empty, the key is the one it always was.
    """
    import hashlib

    return int.from_bytes(hashlib.sha256(f"read-model:{namespace}{name}".encode()).digest()[:8],
                          "big", signed=True)


def lock_namespace(bind: Engine | Connection) -> str:
    """The namespace of the advisory lock keys of the read models behind an engine or one of
    its connections (`concierge.database.service_engine` sets it)."""
    return str(bind.get_execution_options().get(LOCK_NAMESPACE_OPTION, ""))
