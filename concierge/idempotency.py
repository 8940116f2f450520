"""Idempotency keys: a command retried with the same key gets its first answer again.

A client that got no answer (a 504, a dropped connection) cannot know whether its command ran.
It sends the same request again with the same `Idempotency-Key` header (as Stripe's API takes
it). The gateway passes the key and a digest of the request (method, path, body) in the call
context; the service that runs the command keeps the key, the digest and the command's result
in its own store, in the same transaction as the command's events (`Answer`, written by the
store's recorder beside the tracking record). A retry within `WINDOW_SECONDS` then gets the
stored result and records nothing; the same key with another request is refused (422), and a
key older than the window names a new request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from contracts.errors import Invalid

WINDOW_SECONDS = 24 * 3600
TABLE = "concierge_idempotency"
HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
# Expired answers are deleted with the next write of their key, and all of them at most this
# often by each process that records answers.
PRUNE_EVERY_SECONDS = 600.0


@dataclass(frozen=True)
class Answer:
    """The result a keyed command gave, kept for its retries."""

    key: str  # digest of the caller's scope and key (`key_for`)
    request: str  # digest of the request (method, path, body)
    result: Any
    answered_at: float  # seconds since the epoch

    def fresh(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) - self.answered_at < WINDOW_SECONDS

    def encoded(self) -> str:
        return json.dumps(self.result, default=str, separators=(",", ":"))


class KeyReused(Invalid):
    """The key names another request: a client bug, never something to answer from store."""

    def __init__(self) -> None:
        message = (f"This {HEADER} was used with another request in the last 24 hours; use a "
                   "new key for a new request.")
        super().__init__(message, {HEADER: [message]})


def key_for(scope: str | None, key: str) -> str:
    """Keys are the caller's own (Stripe scopes them per account): two callers never meet."""
    return hashlib.sha256(f"{scope or 'anonymous'}\n{key}".encode()).hexdigest()


def request_digest(method: str, path: str, body: Any) -> str:
    """What was asked, independent of JSON spacing and key order."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method.upper()} {path}\n{canonical}".encode()).hexdigest()


def check_key(value: str) -> str | None:
    """Why a header value cannot be a key, or None when it can."""
    if not value or len(value) > MAX_KEY_CHARS:
        return f"Give 1 to {MAX_KEY_CHARS} characters."
    if any(not " " <= ch <= "~" for ch in value):
        return "Use printable ASCII characters only."
    return None


def _decoded(key: str, request: str, result: str, answered_at: float) -> Answer:
    return Answer(key, request, json.loads(result), float(answered_at))


class PostgresAnswers:
    """Answers in the service's PostgreSQL schema, beside the events (a recorder mixin)."""

    datastore: Any
    _last_prune = 0.0

    def create_answers_table(self) -> None:
        from psycopg import errors

        with (self.datastore.transaction(commit=True) as curs,
              contextlib.suppress(errors.UniqueViolation, errors.DuplicateTable)):
            # Two replicas creating it at once: the loser's type insert is a unique violation.
            curs.execute(f"CREATE TABLE IF NOT EXISTS {self._answers_table()} ("
                         "key text PRIMARY KEY, request text NOT NULL, result text NOT NULL, "
                         "answered_at double precision NOT NULL)")

    def _answers_table(self) -> str:
        return f'"{self.datastore.schema}".{TABLE}' if self.datastore.schema else TABLE

    def insert_answers(self, curs: Any, answers: Sequence[Answer]) -> None:
        """In the transaction that records the events (a pipeline: no result is read)."""
        table = self._answers_table()
        now = time.time()
        cutoff = now - WINDOW_SECONDS
        keys = [a.key for a in answers]
        if now - self._last_prune > PRUNE_EVERY_SECONDS:
            self._last_prune = now
            curs.execute(f"DELETE FROM {table} WHERE answered_at < %s", (cutoff,))
        else:
            curs.execute(f"DELETE FROM {table} WHERE key = ANY(%s) AND answered_at < %s",
                         (keys, cutoff))
        # A fresh answer under the same key is a unique violation: the command lost a race
        # with its own retry, and runs again to find that answer.
        curs.execute(f"INSERT INTO {table} (key, request, result, answered_at) "
                     "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[])",
                     (keys, [a.request for a in answers], [a.encoded() for a in answers],
                      [a.answered_at for a in answers]))

    def select_answer(self, key: str) -> Answer | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(f"SELECT request, result, answered_at FROM {self._answers_table()} "
                         "WHERE key = %s", (key,))
            row = curs.fetchone()
        if row is None:
            return None
        return _decoded(key, row["request"], row["result"], row["answered_at"])


class SQLiteAnswers:
    """Answers in the service's SQLite event store file, beside the events (a mixin)."""

    datastore: Any
    _last_prune = 0.0

    def create_answers_table(self) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, "
                      "request TEXT NOT NULL, result TEXT NOT NULL, answered_at REAL NOT NULL)")

    def insert_answers(self, c: Any, answers: Sequence[Answer]) -> None:
        now = time.time()
        cutoff = now - WINDOW_SECONDS
        if now - self._last_prune > PRUNE_EVERY_SECONDS:
            self._last_prune = now
            c.execute(f"DELETE FROM {TABLE} WHERE answered_at < ?", (cutoff,))
        for answer in answers:
            c.execute(f"DELETE FROM {TABLE} WHERE key = ? AND answered_at < ?",
                      (answer.key, cutoff))
            c.execute(f"INSERT INTO {TABLE} (key, request, result, answered_at) "
                      "VALUES (?, ?, ?, ?)",
                      (answer.key, answer.request, answer.encoded(), answer.answered_at))

    def select_answer(self, key: str) -> Answer | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT request, result, answered_at FROM {TABLE} WHERE key = ?",
                      (key,))
            row = c.fetchone()
        if row is None:
            return None
        return _decoded(key, row["request"], row["result"], row["answered_at"])
