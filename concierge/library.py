"""The chassis's one adapter to the non-public parts of eventsourcing, SQLAlchemy and py-amqp.

Both libraries are pinned (pyproject.toml). What the chassis needs and their public API does not
give is reached here and nowhere else:
- the process recorder's insert, step by step (tracking row, table lock, events, their ids), so
  that a commit records its events in a read-model transaction and projects them in it
  (`ServiceApplication._insert_and_project`);
- the repository's fast-forward lock, so that several cached aggregates are brought up to date
  in one query under the library's own locks (`ServiceApplication.load_together`);
- a compiled statement's bind processors, so that many rows go to the driver in one
  `executemany` (`concierge.projection`);
- py-amqp's socket read, replaced by one that reads ahead into a small buffer
  (`install_read_ahead`, installed for every AMQP connection by `concierge.transport`).

The chassis also overrides a few of the libraries' non-public hooks (its recorders in
`concierge.pgrecorder` and `concierge.sqliterecorder`, and `_record` in `concierge.commit`): they
keep the library's names there, and are listed in `SURFACE` with the calls below.
`tests/unit/test_library_surface.py` checks every entry of `SURFACE` against the installed
libraries and fails, naming the method, when an upgrade removes or reshapes one.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from amqp.transport import TCPTransport
from eventsourcing.application import Application, Repository
from eventsourcing.postgres import PostgresProcessRecorder
from eventsourcing.sqlite import SQLiteProcessRecorder
from sqlalchemy.sql.compiler import SQLCompiler


@dataclass(frozen=True)
class Private:
    """One non-public name of a library the chassis depends on."""

    owner: type
    name: str
    # The method's parameters after `self`, in order; None for an attribute.
    parameters: tuple[str, ...] | None
    used_by: str

    def describe(self) -> str:
        shape = "" if self.parameters is None else f"({', '.join(self.parameters)})"
        return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.name}{shape}"


SURFACE: tuple[Private, ...] = (
    Private(PostgresProcessRecorder, "_insert_events", ("curs", "stored_events", "kwargs"),
            "library.insert_tracking; overridden by pgrecorder.QuietProcessRecorder"),
    Private(PostgresProcessRecorder, "_insert_stored_events",
            ("curs", "stored_events", "kwargs"),
            "library.insert_stored_events; overridden by pgrecorder.QuietProcessRecorder"),
    Private(PostgresProcessRecorder, "_fetch_ids_after_insert_events",
            ("curs", "stored_events", "_"), "library.fetch_inserted_ids"),
    Private(PostgresProcessRecorder, "_lock_table", ("curs",),
            "library.lock_events_table; pgrecorder.QuietProcessRecorder"),
    Private(PostgresProcessRecorder, "_notify_channel", ("curs",),
            "overridden by pgrecorder.QuietProcessRecorder (no NOTIFY)"),
    Private(SQLiteProcessRecorder, "_insert_events", ("c", "stored_events", "kwargs"),
            "overridden by sqliterecorder.AnsweringProcessRecorder"),
    Private(Application, "_record", ("processing_event",),
            "overridden by commit.Commits (part of store.ServiceApplication)"),
    Private(Repository, "_use_fastforward_lock", ("aggregate_id",),
            "library.fastforward_locked"),
    Private(Repository, "_disuse_fastforward_lock", ("aggregate_id",),
            "library.fastforward_locked"),
    Private(SQLCompiler, "_bind_processors", None, "library.bind_processors"),
    Private(TCPTransport, "_read", ("n", "initial", "_errnos"),
            "overridden by library.install_read_ahead (reads from a buffer)"),
)


# -- eventsourcing: the process recorder's insert, step by step --------------------------------
def insert_tracking(recorder: Any, curs: Any, stored: Sequence[Any], **kwargs: Any) -> None:
    """What the recorder writes before the events: the tracking row, and the chassis's own
    rows (`answers` of keyed commands)."""
    recorder._insert_events(curs, stored, **kwargs)


def insert_stored_events(recorder: Any, curs: Any, stored: Sequence[Any]) -> None:
    """The events table's lock, then the events."""
    recorder._insert_stored_events(curs, stored)


def fetch_inserted_ids(recorder: Any, curs: Any, stored: Sequence[Any]) -> Sequence[int] | None:
    """The log positions the inserted events were given."""
    return recorder._fetch_ids_after_insert_events(curs, stored)


def lock_events_table(recorder: Any, curs: Any) -> None:
    """The lock every insert of events takes, taken ahead of it (contended commits)."""
    recorder._lock_table(curs)


# -- eventsourcing: the repository's fast-forward lock -----------------------------------------
@contextlib.contextmanager
def fastforward_locked(repository: Any, aggregate_id: Any) -> Iterator[None]:
    """Hold the lock the repository takes to fast-forward a cached aggregate."""
    lock = repository._use_fastforward_lock(aggregate_id)
    try:
        lock.acquire()
        try:
            yield
        finally:
            lock.release()
    finally:
        repository._disuse_fastforward_lock(aggregate_id)


# -- SQLAlchemy ---------------------------------------------------------------------------------
def bind_processors(compiled: Any) -> dict[str, Any]:
    """The compiled statement's per-parameter type processors (datetimes, booleans)."""
    return compiled._bind_processors


# -- py-amqp: reading a frame at a time, from a buffer ------------------------------------------
# py-amqp's TCP transport asks the socket for exactly the bytes it needs next: three reads per
# frame, three frames per message, each read a system call (and, under eventlet, a trip through
# its hub). It costs most of a consumer's time on a busy queue. `_read_ahead` asks for what is
# there, up to READ_AHEAD bytes, and serves the next reads from that; the buffer stays small,
# so the copies that slicing it makes stay cheap. Installed once, for every connection of the
# process (services' consumers, RPC, the ingest): `SURFACE` pins the method.
READ_AHEAD = 8192


def _read_ahead(self: Any, n: int, initial: bool = False,
                _errnos: tuple[int, ...] = (errno.EAGAIN, errno.EINTR)) -> bytes:
    recv = self._quick_recv
    rbuf = self._read_buffer
    try:
        while len(rbuf) < n:
            try:
                s = recv(max(n - len(rbuf), READ_AHEAD))
            except OSError as exc:
                if exc.errno in _errnos:
                    if initial and self.raise_on_initial_eintr:
                        raise TimeoutError() from exc
                    continue
                raise
            if not s:
                raise OSError("Server unexpectedly closed connection")
            rbuf += s
    except BaseException:
        self._read_buffer = rbuf
        raise
    result, self._read_buffer = rbuf[:n], rbuf[n:]
    return result


def install_read_ahead() -> None:
    import amqp.transport

    amqp.transport.TCPTransport._read = _read_ahead  # type: ignore[method-assign]
