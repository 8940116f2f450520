"""Schemas shared between services: the event envelope, event payloads, RPC payloads, errors.

Nothing else crosses a service boundary. See contracts/README.md for the version rule.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

S = TypeVar("S")


@functools.cache
def schema(cls: type[S]) -> S:
    """One shared instance per schema class: building a marshmallow schema costs several times
    what a load does, and loading keeps no state on the instance."""
    return cls()


def load(cls: type[Any], data: Any) -> Any:
    return schema(cls).load(data)
