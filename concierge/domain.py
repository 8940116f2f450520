"""What every context's domain model may import from the chassis: plain Python, no I/O.

`Aggregate` is eventsourcing's, with a faster `__deepcopy__`. The repository hands out a deep
copy of each cached aggregate so a failed command cannot leave its half-made changes in the
cache; the generic deepcopy reconstructs every UUID and costs milliseconds once an aggregate
holds a few hundred names or numbers. Aggregate state here is built from immutable scalars in
dicts, lists and sets, which this copies directly.
"""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import uuid
from typing import Any

from eventsourcing.domain import Aggregate as _Aggregate

_ATOMIC = (str, int, float, bool, type(None), bytes, uuid.UUID, dt.datetime, dt.date,
           dt.time, dt.timedelta, decimal.Decimal, frozenset)
_ATOMIC_TYPES = frozenset(_ATOMIC)


def _copied(value: Any, memo: dict[int, Any]) -> Any:
    if isinstance(value, _ATOMIC):
        return value
    kind = type(value)
    if kind is dict:
        # A building's apartment numbers: thousands of scalars, copied without a call each.
        if all(type(v) in _ATOMIC_TYPES for v in value.values()):
            return dict(value)
        return {k: _copied(v, memo) for k, v in value.items()}
    if kind is list:
        return [_copied(v, memo) for v in value]
    if kind is set:
        return set(value) if all(isinstance(v, _ATOMIC) for v in value) else copy.deepcopy(
            value, memo)
    if kind is tuple and all(isinstance(v, _ATOMIC) for v in value):
        return value
    return copy.deepcopy(value, memo)


class Aggregate(_Aggregate):
    """eventsourcing's Aggregate, cheaper to copy out of the repository's cache."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        object.__getattribute__(clone, "__dict__").update(
            {name: _copied(value, memo)
             for name, value in object.__getattribute__(self, "__dict__").items()})
        return clone
