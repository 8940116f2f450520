"""Cached aggregates brought up to date together: one query for the events past every cached
version, under the repository's own fast-forward locks (`concierge.library`).

`LoadsTogether` is one part of `concierge.store.ServiceApplication`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.application import project_aggregate
from eventsourcing.persistence import StoredEvent

from concierge import library
from concierge.decoding import raw_bytes
from concierge.unit import UnitRepository


class LoadsTogether:
    """`load_related` and `load_together`."""

    repository: Any
    mapper: Any

    # From StoreReads, the other part of the application: `_postgres_datastore()`,
    # `_postgres_rows(name, query, params)`.

    def load_related(self, item_id: UUID | None, *attributes: str) -> None:
        """Say, before loading `item_id`, that the aggregates it names in `attributes` (ids
        set for good: an apartment's building and community) are loaded with it: when it is
        cached, they are all brought up to date in one query (`load_together`) instead of
        one each. Nothing happens otherwise; the loads that follow find what they find."""
        if item_id is None:
            return
        repository: UnitRepository = self.repository  # type: ignore[assignment]
        item = repository.cached(item_id)
        if item is not None:
            named = (getattr(item, name, None) for name in attributes)
            self.load_together([item_id, *(i for i in named if isinstance(i, UUID))])

    def load_together(self, ids: Sequence[UUID]) -> None:
        """Bring the cached aggregates among `ids` up to date with one query, into the current
        unit of work, where the repository would ask once for each (a command on an apartment
        needs its building and community: one round trip instead of two or three).

        What the repository does for each, done for all at once: under each one's fast-forward
        lock, the events past its cached version are applied to the cached object, and the unit
        gets a copy. Ids not cached, already in the unit, or asked outside a unit (or off
        PostgreSQL) are left to the repository's own `get`.
        """
        repository: UnitRepository = self.repository  # type: ignore[assignment]
        unit, inner = repository.unit, repository.inner
        if (unit is None or not inner.cache or not inner.fastforward
                or self._postgres_datastore() is None):
            return
        cached: dict[UUID, Any] = {}
        for aggregate_id in sorted(set(ids), key=str):  # one lock order for every caller
            if aggregate_id not in unit.aggregates:
                with contextlib.suppress(KeyError):
                    cached[aggregate_id] = inner.cache.get(aggregate_id)
        if len(cached) < 2:  # one query either way
            return
        with contextlib.ExitStack() as held:
            for aggregate_id in cached:  # the repository's own locks, in one order
                held.enter_context(library.fastforward_locked(inner, aggregate_id))
            # One index range per aggregate, whatever the statistics: as a plain join, the
            # generic plan of this prepared statement scanned the whole events table on a
            # table never analysed (40 ms at 150,000 events, against 0.09 ms).
            rows = self._postgres_rows(
                "newer", "SELECT e.originator_id, e.originator_version, e.topic, e.state "
                "FROM unnest(%s::uuid[], %s::int8[]) AS c(id, version) CROSS JOIN LATERAL ("
                "SELECT originator_id, originator_version, topic, state FROM {events} "
                "WHERE originator_id = c.id AND originator_version > c.version "
                "ORDER BY originator_version) AS e "
                "ORDER BY e.originator_id, e.originator_version",
                (list(cached), [a.version for a in cached.values()]))
            newer: dict[UUID, list[Any]] = {}
            for row in rows or ():
                stored = StoredEvent(originator_id=row[0], originator_version=row[1],
                                     topic=row[2], state=raw_bytes(row[3]))
                newer.setdefault(UUID(str(row[0])), []).append(
                    self.mapper.to_domain_event(stored))
            for aggregate_id, aggregate in cached.items():
                if aggregate_id in newer:
                    aggregate = project_aggregate(aggregate, newer[aggregate_id])
                if aggregate is not None:  # else the repository's own get says not found
                    unit.aggregates[aggregate_id] = (copy.deepcopy(aggregate)
                                                     if inner.deepcopy_from_cache else aggregate)

