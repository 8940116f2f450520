"""Schemas shared between services: the event envelope, event payloads, RPC payloads, errors.

Nothing else crosses a service boundary. See contracts/README.md for the version rule.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from marshmallow import ValidationError

from contracts.errors import Invalid

S = TypeVar("S")


@functools.cache
def schema(cls: type[S]) -> S:
    """One shared instance per schema class: building a marshmallow schema costs several times
    what a load does, and loading keeps no state on the instance."""
    return cls()


def load(cls: type[Any], data: Any) -> Any:
    return schema(cls).load(data)


def checked(cls: type[Any], payload: Any) -> Any:
    """A command's payload as its schema loads it, or `Invalid` naming each bad field: the one
    check of its shape, whoever calls (RPC, the CLI, a benchmark, a test)."""
    try:
        return schema(cls).load(payload)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise Invalid.fields(messages) from None
