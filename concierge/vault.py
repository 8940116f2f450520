"""Crypto-shredding for an append-only store: a secret or a person's data goes into events only
sealed with a key of its own (a subject), and destroying the key is what deletes it.

An event store cannot forget: a rebuild or a replay reads every event ever written. So what must
be forgettable (a password on its way to an email, a tenant's email and mobile) is written
sealed, and its key lives in this table, the one mutable place. `shred(subject)` deletes the
key; from then on every copy of the sealed value (the store, a read model rebuilt from it, a
replayed message, a backup of the store) opens to nothing.

Keys are AES-256-GCM, one per subject; the subject is bound in as associated data, so a value
sealed for one subject does not open under another's key. The table sits in the service's own
database (`concierge_vault`); its keys never leave the service.
"""

from __future__ import annotations

import base64
import json
import os
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    Column,
    DateTime,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

PREFIX = "sealed:v1:"
NONCE_BYTES = 12
SUBJECT_MAX = 200

vault_metadata = MetaData()
vault_keys = Table(
    "concierge_vault",
    vault_metadata,
    Column("subject", String(SUBJECT_MAX), primary_key=True),
    Column("key", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


class Vault:
    """Seals and opens values with per-subject keys kept in the service's database.

    On PostgreSQL it keeps one connection of its own: keys are read and made while a commit
    holds a connection of the service's pool (the events are sealed as they are recorded), and
    waiting there for a second one of the same pool could hold every commit up. A vault's own
    connection is only ever held for one short statement, so waiting for it never deadlocks."""

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name == "postgresql":
            engine = create_engine(engine.url, creator=engine.pool._creator,  # type: ignore[attr-defined]
                                   pool_size=1, max_overflow=0, pool_pre_ping=True)
        self.engine = engine
        vault_metadata.create_all(engine)

    def seal(self, subject: str, value: str,
             keys: dict[str, bytes | None] | None = None) -> str:
        """`value` encrypted under the subject's key (made on first use). `keys`: keys already
        read for this call."""
        key = keys.get(subject) if keys is not None else None
        if key is None:
            key = self._key(subject, create=True)
            if keys is not None:
                keys[subject] = key
        assert key is not None
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(key).encrypt(nonce, value.encode("utf-8"), subject.encode("utf-8"))
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, subject: str, sealed: str | None,
             keys: dict[str, bytes | None] | None = None) -> str | None:
        """The plain value, or None once the subject's key is shredded (or for anything that
        is not a value sealed for this subject). `keys`: keys already read for this call (one
        event's fields share one read)."""
        if not is_sealed(sealed):
            return None
        assert sealed is not None
        if keys is not None and subject in keys:
            key = keys[subject]
        else:
            key = self._key(subject, create=False)
            if keys is not None:
                keys[subject] = key
        if key is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(sealed[len(PREFIX):].encode("ascii"))
            plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:],
                                        subject.encode("utf-8"))
        except (InvalidTag, ValueError):
            return None
        return plain.decode("utf-8")

    def shred(self, subjects: Iterable[str]) -> int:
        """Destroy these subjects' keys: what they sealed can no longer be read anywhere."""
        wanted = list(subjects)
        if not wanted:
            return 0
        with self.engine.begin() as conn:
            result = conn.execute(delete(vault_keys).where(vault_keys.c.subject.in_(wanted)))
        return int(result.rowcount or 0)

    def has(self, subject: str) -> bool:
        return self._key(subject, create=False) is not None

    def _key(self, subject: str, create: bool) -> bytes | None:
        if not subject or len(subject) > SUBJECT_MAX:
            raise ValueError(f"a vault subject is 1 to {SUBJECT_MAX} characters")
        with self.engine.begin() as conn:
            found = conn.execute(select(vault_keys.c.key)
                                 .where(vault_keys.c.subject == subject)).scalar_one_or_none()
            if found is not None or not create:
                return bytes(found) if found is not None else None
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            # Two replicas sealing for one new subject at once: the first key wins, and both
            # read it back, so nothing is sealed under a key that was not kept.
            conn.execute(insert(vault_keys).values(
                subject=subject, key=AESGCM.generate_key(bit_length=256),
                created_at=datetime.now(UTC)).on_conflict_do_nothing())
            return bytes(conn.execute(select(vault_keys.c.key)
                                      .where(vault_keys.c.subject == subject)).scalar_one())


# --- personal data in events -------------------------------------------------------------------

# The stored state's attribute naming the subject whose key sealed its personal fields.
SUBJECT_KEY = "_vault_subject"
SubjectOf = Callable[[dict[str, Any]], "str | None"]


@dataclass(frozen=True)
class Personal:
    """Which attributes of one event type are personal data, and whose: `subject` names the
    key from the event's attributes (None: nothing to seal in this one). `nested` are dict
    attributes (a `changes`) whose listed keys are personal too."""

    subject: SubjectOf
    fields: tuple[str, ...] = ()
    nested: tuple[str, ...] = ()


class PersonalData:
    """A context's personal fields by event type (its class's qualified name, e.g.
    "Apartment.ResidentAdded"), sealed in the store by `SealingMapper`."""

    def __init__(self, events: dict[str, Personal]) -> None:
        self.events = dict(events)

    def seal(self, vault: Vault, topic_name: str, attributes: dict[str, Any]
             ) -> dict[str, Any] | None:
        """The attributes to store instead (sealed), or None when nothing is personal."""
        spec = self.events.get(topic_name)
        if spec is None:
            return None
        subject = spec.subject(attributes)
        if not subject:
            return None
        sealed = dict(attributes)
        keys: dict[str, bytes | None] = {}
        for name in spec.fields:
            if name in sealed and sealed[name] is not None:
                sealed[name] = vault.seal(subject, json.dumps(sealed[name]), keys)
        for outer in spec.nested:
            inner = sealed.get(outer)
            if isinstance(inner, dict):
                sealed[outer] = {k: (vault.seal(subject, json.dumps(v), keys)
                                     if k in spec.fields and v is not None else v)
                                 for k, v in inner.items()}
        sealed[SUBJECT_KEY] = subject
        return sealed


def open_personal(vault: Vault, state: dict[str, Any]) -> dict[str, Any]:
    """A stored event's attributes with its sealed values opened, in place; a value whose key
    was shredded becomes None (the fact stays, the data is gone)."""
    subject = state.pop(SUBJECT_KEY, None)
    if not subject:
        return state
    keys: dict[str, bytes | None] = {}

    def opened(value: Any) -> Any:
        if not is_sealed(value):
            return value
        plain = vault.open(subject, value, keys)
        return json.loads(plain) if plain is not None else None

    for name, value in list(state.items()):
        if isinstance(value, dict):
            state[name] = {k: opened(v) for k, v in value.items()}
        else:
            state[name] = opened(value)
    return state


_KEYS_HELD: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()


def _holds_keys(conn: Any) -> bool:
    """Whether this connection's database (schema) holds the vault table, per engine: the
    live database does from its start; a rebuild's shadow never does."""
    engine = conn.engine
    if engine not in _KEYS_HELD:
        from sqlalchemy import inspect

        _KEYS_HELD[engine] = inspect(conn).has_table(vault_keys.name)
    return _KEYS_HELD[engine]


def shred_on(events: dict[str, Callable[[dict[str, Any]], Iterable[str]]],
             source: str, name: str,
             also: Callable[[Any, dict[str, Any]], None] | None = None) -> Any:
    """A read model of a context's own events that destroys the keys each event ends (a
    tenant's, at its APT's reset or delete), in the transaction that records the event's
    tracking: a crash cannot leave a key that should be gone, and a rebuild destroys nothing
    more than what is already gone. No tables of its own. `also`: what else the same event
    erases in the live tables (an email list's addresses), in the same transaction."""
    from sqlalchemy import MetaData as _MetaData

    from concierge.projection import ReadModel, Rows

    def handler(subjects: Callable[[dict[str, Any]], Iterable[str]]) -> Any:
        def shred(rows: Rows, env: dict[str, Any]) -> None:
            wanted = [s for s in subjects(env) if s]
            # A rebuild's new tables sit beside the live ones, without the keys: nothing
            # there to destroy (what the log ends was destroyed when it was recorded).
            if wanted and _holds_keys(rows.conn):
                rows.execute(delete(vault_keys).where(vault_keys.c.subject.in_(wanted)))
                if also is not None:
                    also(rows, env)
        return shred

    class Shredder(ReadModel):
        metadata = _MetaData()

        def handlers(self) -> dict[str, dict[str, Any]]:
            return {source: {kind: handler(fn) for kind, fn in events.items()}}

        def create(self, engine: Engine) -> bool:
            vault_metadata.create_all(engine)
            return super().create(engine)

    Shredder.name = name
    return Shredder
