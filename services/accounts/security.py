"""Password hashing and session tokens: the adapter the accounts application is given.

Kept out of the domain so the domain stays free of libraries and tests can pass a cheap instance
(`Credentials.cheap()`); argon2's defaults cost tens of milliseconds a hash on purpose.
"""

from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_BYTES = 32


class Credentials:
    """Hashes and verifies passwords (argon2id) and mints and digests bearer tokens."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()

    @classmethod
    def cheap(cls) -> Credentials:
        """Lowest argon2 cost: for tests and benchmarks only, never for stored accounts."""
        return cls(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, hash_len=16))

    def hash_password(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify_password(self, password_hash: str, password: str) -> bool:
        """False for a wrong password or a malformed hash, so a login can only fail, not crash."""
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash was made with other parameters (rehash it after a good login)."""
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    @staticmethod
    def new_token() -> str:
        return secrets.token_urlsafe(TOKEN_BYTES)

    @staticmethod
    def token_digest(token: str) -> str:
        """What the store keeps: a 256-bit random token needs no salt or slow hash."""
        return hashlib.sha256(token.encode("utf-8")).hexdigest()
