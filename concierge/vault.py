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
import os
from collections.abc import Iterable
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Column, DateTime, LargeBinary, MetaData, String, Table, delete, select
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
    """Seals and opens values with per-subject keys kept in the service's database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        vault_metadata.create_all(engine)

    def seal(self, subject: str, value: str) -> str:
        """`value` encrypted under the subject's key (made on first use)."""
        key = self._key(subject, create=True)
        assert key is not None
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(key).encrypt(nonce, value.encode("utf-8"), subject.encode("utf-8"))
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, subject: str, sealed: str | None) -> str | None:
        """The plain value, or None once the subject's key is shredded (or for anything that
        is not a value sealed for this subject)."""
        if not is_sealed(sealed):
            return None
        assert sealed is not None
        key = self._key(subject, create=False)
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
