"""At most one active relay (or mailer) per service, however many replicas run.

PostgreSQL: a session advisory lock (released by the server if the holder dies), held on one
connection per service and process that holds all of its leader locks (the relay's and the
mailer's): outside the service's pools, so a leader never takes a pooled connection from the
commands, and open only while it holds a lock. SQLite: an exclusive flock on a file beside the
store (released by the kernel). Also the lock that lets one replica at a time create a service's
schema and tables (`setting_up`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol

from sqlalchemy.engine import Engine

from concierge.config import Settings

log = logging.getLogger(__name__)


class LeaderLock(Protocol):
    def acquire(self) -> bool: ...
    def held(self) -> bool: ...
    def release(self) -> None: ...


class FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class LockConnection:
    """The connection a service's leader locks are held on in this process.

    Opened by the first lock taken and closed with the last one released. Green threads take
    turns on it. When it dies the server has freed every lock on it: each holder learns that
    at its next check (`holds`), and the next `try_lock` opens a new one.
    """

    # One per service wiring (its engine): replicas run in one process by tests lock each other
    # out as replicas in separate processes do.
    _shared: ClassVar[weakref.WeakKeyDictionary[Any, LockConnection]] = (
        weakref.WeakKeyDictionary())
    _registry = threading.Lock()

    def __init__(self, database_url: str, application_name: str) -> None:
        self.database_url = database_url
        self.application_name = application_name
        self._conn: Any = None
        self._held: set[int] = set()
        self._turn = threading.Lock()

    @classmethod
    def of(cls, engine: Engine, settings: Settings, service: str) -> LockConnection:
        """The lock connection of the service whose read models `engine` serves."""
        with cls._registry:
            found = cls._shared.get(engine)
            if found is None:
                found = cls._shared[engine] = cls(settings.database_url,
                                                  settings.application_name(service))
            return found

    def try_lock(self, key: int) -> bool:
        """Take the lock if free; False when another session holds it or the database cannot
        be reached (the caller stands by and tries again)."""
        import psycopg

        with self._turn:
            if key in self._held:
                return True
            try:
                if self._conn is None:
                    self._conn = psycopg.connect(self.database_url, autocommit=True,
                                                 connect_timeout=5,
                                                 application_name=self.application_name)
                got = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            except psycopg.Error as exc:
                log.warning("leader lock not taken: the database did not answer (%s)", exc)
                self._drop()
                return False
            if got and got[0]:
                self._held.add(key)
                return True
            if not self._held:
                self._drop()
            return False

    def holds(self, key: int) -> bool:
        """Check the connection is alive: a dead one means the server freed its locks."""
        import psycopg

        with self._turn:
            if key not in self._held or self._conn is None:
                return False
            try:
                self._conn.execute("SELECT 1")
            except psycopg.Error:
                self._drop()
                return False
            return True

    def unlock(self, key: int) -> None:
        with self._turn:
            if key not in self._held:
                return
            self._held.discard(key)
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            except Exception:  # a dead connection released it already
                self._drop()
                return
            if not self._held:
                self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


@contextlib.contextmanager
def setting_up(service: str, settings: Settings) -> Iterator[None]:
    """One process at a time creates a service's schema and tables (replicas start together):
    PostgreSQL's `CREATE ... IF NOT EXISTS` racing another one fails on a unique index of its
    catalog, and the replica that lost died at start."""
    if not settings.uses_postgres:
        yield
        return
    import psycopg

    key = _key(f"concierge-setup:{settings.schema_for(service)}")
    with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5,
                         application_name=settings.application_name("setup")) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        yield  # closing the connection releases the lock, also if the block failed


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class AdvisoryLock:
    def __init__(self, connection: LockConnection, name: str) -> None:
        self.connection = connection
        self.key = _key(name)

    def acquire(self) -> bool:
        return self.connection.try_lock(self.key)

    def held(self) -> bool:
        return self.connection.holds(self.key)

    def release(self) -> None:
        self.connection.unlock(self.key)


def leader_lock(service: str, settings: Settings, engine: Engine,
                purpose: str = "relay") -> LeaderLock:
    """One holder per (service, purpose) across every replica: the relay, a mailer, ..."""
    if settings.uses_postgres:
        return AdvisoryLock(LockConnection.of(engine, settings, service),
                            f"concierge-{purpose}:{settings.schema_for(service)}")
    return FileLock(settings.service_dir(service) / f"{purpose}.lock")
