"""Password hashing and session tokens: the adapter the accounts application is given.

Kept out of the domain so the domain stays free of libraries and tests can pass a cheap instance
(`Credentials.cheap()`); argon2's defaults cost tens of milliseconds a hash on purpose.

Hashes run in OS threads, a few at a time (`green.Throttle`): argon2 releases the GIL, so the
service's event loop answers everything else meanwhile. On the loop, 50 logins with wrong
passwords held every request of the process (the gateway's `/healthz` too, embedded) for
seconds. A default hash takes 64 MiB and runs its four lanes in threads of its own (0.11 s,
0.18 s of CPU on two cores): as many hashes run at once as there are cores for their lanes,
at least one; beyond a short queue a login is refused at once (`Busy`, 503) rather than holding
one of the service's workers while it waits.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from concierge import green
from contracts.errors import Busy

TOKEN_BYTES = 32
HASHES_WAITING = 8
BUSY = "Too many logins at once; try again in a moment."


def hashes_at_once(hasher: PasswordHasher) -> int:
    """As many hashes as this process has cores for all their lanes, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, hasher.parallelism))


class Credentials:
    """Hashes and verifies passwords (argon2id) and mints and digests bearer tokens."""

    def __init__(self, hasher: PasswordHasher | None = None,
                 throttle: green.Throttle | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        self._throttle = throttle or green.Throttle(hashes_at_once(self._hasher),
                                                    HASHES_WAITING)

    @classmethod
    def cheap(cls) -> Credentials:
        """Lowest argon2 cost: for tests and benchmarks only, never for stored accounts."""
        return cls(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, hash_len=16))

    def hash_password(self, password: str) -> str:
        return self._in_thread(self._hasher.hash, password)

    def verify_password(self, password_hash: str, password: str) -> bool:
        """False for a wrong password or a malformed hash, so a login can only fail, not crash."""
        return self._in_thread(self._verify, password_hash, password)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return self._throttle.run(fn, *args)
        except green.Saturated:
            raise Busy(BUSY) from None

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
