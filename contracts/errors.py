"""Errors that cross service boundaries.

A domain raises one of these (or a subclass with a name a user would understand); the chassis
carries it over RPC by name and arguments, and the gateway maps each class to one HTTP status.
They are plain exceptions with JSON-safe arguments so any transport can rebuild them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

FieldErrors = dict[str, Any]


class ConciergeError(Exception):
    """Base of every error a caller is meant to see."""

    status = 400
    title = "Bad request"

    def __init__(self, detail: str, errors: FieldErrors | None = None) -> None:
        super().__init__(detail, errors or {})
        self.detail = detail
        self.errors: FieldErrors = dict(errors or {})

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "detail": self.detail, "errors": self.errors}


class Invalid(ConciergeError):
    """Input broke a validation rule; `errors` maps each bad field to its messages."""

    status = 422
    title = "Invalid input"

    @classmethod
    def field(cls, name: str, message: str) -> Invalid:
        return cls(f"{name}: {message}", {name: [message]})

    @classmethod
    def fields(cls, errors: Mapping[str, Sequence[str] | str | Mapping[str, Any]]) -> Invalid:
        normalised: FieldErrors = {}
        for key, value in errors.items():
            normalised[key] = [value] if isinstance(value, str) else value
        first = next(iter(normalised), "input")
        return cls(f"Invalid {first}" if len(normalised) == 1 else "Invalid input", normalised)


class NotFound(ConciergeError):
    """The thing does not exist, or the caller may not learn that it does (never 403)."""

    status = 404
    title = "Not found"


class Conflict(ConciergeError):
    """The request clashes with the current state (a duplicate, a concurrent write, a rule)."""

    status = 409
    title = "Conflict"


class Unauthorized(ConciergeError):
    """No valid credentials."""

    status = 401
    title = "Unauthorized"


class Forbidden(ConciergeError):
    """Authenticated but this role may never do this (not used to hide others' data)."""

    status = 403
    title = "Forbidden"


class PaymentRequired(ConciergeError):
    """What was asked is a paid item (a fourth family member's Additional App): refused until
    it is paid for."""

    status = 402
    title = "Payment required"


class TooManyAttempts(ConciergeError):
    """Too many failed attempts at a secret (a password, a code) from this caller or at this
    account: refused, without checking, until the lockout has passed."""

    status = 429
    title = "Too many requests"


class Busy(ConciergeError):
    """The service has as many of these requests in hand as it takes; retry in a moment."""

    status = 503
    title = "Service unavailable"


ERROR_TYPES: dict[str, type[ConciergeError]] = {
    cls.__name__: cls
    for cls in (ConciergeError, Invalid, NotFound, Conflict, Unauthorized, Forbidden, Busy,
                TooManyAttempts, PaymentRequired)
}


def rebuild(type_name: str, detail: str, errors: FieldErrors | None = None) -> ConciergeError:
    """Recreate an error on the calling side from its name and arguments."""
    cls = ERROR_TYPES.get(type_name, ConciergeError)
    return cls(detail, errors)
