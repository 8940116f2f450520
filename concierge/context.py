"""Who is acting and why, carried with a command into every event it records.

Commands arrive with a small `ctx` dict (actor, correlation id, installer scope); the chassis sets
it for the duration of the call so the store stamps each new event without the domain knowing.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CallContext:
    actor: str = "system"
    correlation_id: str = ""
    installer_id: str | None = None
    role: str = "system"
    account_id: str | None = None
    # When the caller stops waiting (seconds since the epoch): a command still queued then is
    # not run, since its caller has already been told it failed.
    deadline: float | None = None
    # The client's Idempotency-Key and a digest of what it asked (method, path, body): a
    # command retried with both gets its first answer again (`concierge.idempotency`).
    idempotency_key: str | None = None
    request_digest: str | None = None
    # Where an HTTP request came from (the gateway's peer): what failed logins are counted by.
    client_address: str | None = None
    # A property manager's communities, each with its permissions there (community id ->
    # {"app", "delete_account", "log_access_control"}); None for every other role.
    communities: dict[str, dict[str, bool]] | None = None

    def in_scope(self, community_id: Any) -> bool:
        """A property manager works only on its communities; every other role is scoped by
        its installer alone."""
        return self.communities is None or str(community_id) in self.communities

    def may(self, community_id: Any, permission: str) -> bool:
        """A property manager's permission in one community (others are not limited here)."""
        if self.communities is None:
            return True
        return bool((self.communities.get(str(community_id)) or {}).get(permission))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CallContext:
        data = data or {}
        deadline = data.get("deadline")
        return cls(
            actor=str(data.get("actor") or "system"),
            correlation_id=str(data.get("correlation_id") or uuid.uuid4()),
            installer_id=data.get("installer_id"),
            role=str(data.get("role") or "system"),
            account_id=data.get("account_id"),
            deadline=float(deadline) if isinstance(deadline, int | float) else None,
            idempotency_key=_text(data.get("idempotency_key")),
            request_digest=_text(data.get("request_digest")),
            client_address=_text(data.get("client_address")),
            communities=_scopes(data.get("communities")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "correlation_id": self.correlation_id,
            "installer_id": self.installer_id,
            "role": self.role,
            "account_id": self.account_id,
            "deadline": self.deadline,
            "idempotency_key": self.idempotency_key,
            "request_digest": self.request_digest,
            "client_address": self.client_address,
            "communities": self.communities,
        }

    def expired(self, now: float | None = None) -> bool:
        """True once the caller has stopped waiting for this call's answer."""
        return self.deadline is not None and (time.time() if now is None else now) >= self.deadline


def _scopes(value: Any) -> dict[str, dict[str, bool]] | None:
    if not isinstance(value, dict):
        return None
    return {str(k): {str(p): bool(v) for p, v in (perms or {}).items()}
            for k, perms in value.items() if isinstance(perms, dict | type(None))}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class Expired(Exception):
    """The caller stopped waiting (its deadline passed) before the command ran."""


_SYSTEM = CallContext()
_current: ContextVar[CallContext] = ContextVar("concierge_call_context", default=_SYSTEM)


def current() -> CallContext:
    return _current.get()


@contextlib.contextmanager
def acting(ctx: CallContext | dict[str, Any] | None) -> Iterator[CallContext]:
    """Run a block as `ctx`; events recorded inside carry its actor and correlation id."""
    value = ctx if isinstance(ctx, CallContext) else CallContext.from_dict(ctx)
    token = _current.set(value)
    try:
        yield value
    finally:
        _current.reset(token)
