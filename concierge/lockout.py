"""Failed attempts counted per key, with a lockout: brute force on a login or a code meets a wall
that every replica sees, since the counts live in the service's database.

A key is what is being guessed at or from where: `user:<name>`, `addr:<ip>`, `pair:<name>|<ip>`,
`code:<challenge>`. Each rule says how many failures a key may have within the window; the
failure that reaches it locks the key until the lockout has passed. A success forgets the keys
the caller names. A key counts the same whether or not what it names exists, so a lockout tells
an attacker nothing about which usernames are real.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    case,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

KEY_MAX = 300

lockout_metadata = MetaData()
attempts = Table(
    "concierge_failed_attempts",
    lockout_metadata,
    Column("key", String(KEY_MAX), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("first_at", DateTime(timezone=True), nullable=False),
    Column("locked_until", DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True)
class Rule:
    """At most `limit` failures of a key within `window`; the one that reaches it locks the key
    for `lockout`."""

    limit: int
    window: timedelta
    lockout: timedelta


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Lockout:
    def __init__(self, engine: Engine,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.engine = engine
        self.clock = clock
        lockout_metadata.create_all(engine)

    def locked_for(self, keys: Iterable[str]) -> float:
        """Seconds until the last of these keys' lockouts ends; 0 when none is locked."""
        wanted = [key[:KEY_MAX] for key in keys]
        now = self.clock()
        with self.engine.connect() as conn:
            ends = [_aware(row[0]) for row in conn.execute(
                select(attempts.c.locked_until).where(attempts.c.key.in_(wanted)))]
        latest = max((end for end in ends if end is not None and end > now), default=None)
        return (latest - now).total_seconds() if latest is not None else 0.0

    def failed(self, rules: Sequence[tuple[str, Rule]]) -> float:
        """Count one failure against each key; seconds the keys are locked for now (0: none)."""
        now = self.clock()
        locked = 0.0
        with self.engine.begin() as conn:
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            for key, rule in rules:
                key = key[:KEY_MAX]
                stale = attempts.c.first_at < now - rule.window
                statement = insert(attempts).values(key=key, failures=1, first_at=now,
                                                    locked_until=None)
                statement = statement.on_conflict_do_update(
                    index_elements=[attempts.c.key],
                    set_={"failures": case((stale, 1), else_=attempts.c.failures + 1),
                          "first_at": case((stale, now), else_=attempts.c.first_at)},
                ).returning(attempts.c.failures)
                failures = int(conn.execute(statement).scalar_one())
                if failures >= rule.limit:
                    conn.execute(update(attempts).where(attempts.c.key == key)
                                 .values(locked_until=now + rule.lockout, failures=0,
                                         first_at=now))
                    locked = max(locked, rule.lockout.total_seconds())
        return locked

    def forget(self, keys: Iterable[str]) -> None:
        """A success: these keys start again from no failure."""
        wanted = [key[:KEY_MAX] for key in keys]
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(delete(attempts).where(
                attempts.c.key.in_(wanted),
                or_(attempts.c.locked_until.is_(None), attempts.c.locked_until <= now)))
