"""How errors and call context cross RPC.

Contract errors (contracts/errors.py) are registered with nameko so a caller gets the same typed
error back, with its field messages. `command` wraps a service entrypoint: it sets the caller's
context for the events the call records and turns library errors into contract errors, so a
rejected command always reaches the gateway as Invalid / NotFound / Conflict, never as a crash.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError
from marshmallow import ValidationError
from nameko.exceptions import RemoteError, registry

from concierge import context
from contracts.errors import ERROR_TYPES, ConciergeError, Conflict, Invalid, NotFound, rebuild

F = TypeVar("F", bound=Callable[..., Any])


def register_errors() -> None:
    for cls in ERROR_TYPES.values():
        registry[f"{cls.__module__}.{cls.__name__}"] = cls


register_errors()


def as_contract_error(exc: BaseException) -> ConciergeError | None:
    """The contract error a library or domain exception stands for, if any."""
    if isinstance(exc, ConciergeError):
        # Subclasses defined inside a service travel as their contract base class.
        base = next(c for c in type(exc).__mro__ if c.__name__ in ERROR_TYPES
                    and c.__module__ == "contracts.errors")
        return exc if type(exc) is base else base(exc.detail, exc.errors)
    if isinstance(exc, ValidationError):
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        return Invalid("Invalid input", messages)
    if isinstance(exc, AggregateNotFoundError):
        return NotFound("Not found")
    if isinstance(exc, IntegrityError):
        return Conflict("Someone else changed this at the same time; reload and try again")
    if isinstance(exc, RemoteError) and exc.exc_type in ERROR_TYPES:
        return rebuild(exc.exc_type, str(exc.value))
    return None


@contextlib.contextmanager
def contract_errors() -> Iterator[None]:
    """Re-raise library and domain errors as the contract error they stand for."""
    try:
        yield
    except Exception as exc:
        contract_error = as_contract_error(exc)
        if contract_error is None:
            raise
        raise contract_error from exc


def translated(fn: F) -> F:
    """Wrap an RPC entrypoint without a call context (login, authenticate): errors only."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with contract_errors():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def command(fn: F) -> F:
    """Wrap an RPC entrypoint whose first argument (after self) is the call context dict."""

    @functools.wraps(fn)
    def wrapper(self: Any, ctx: dict[str, Any] | None, *args: Any, **kwargs: Any) -> Any:
        with context.acting(ctx), contract_errors():
            return fn(self, ctx, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
