"""Units of work: several commands, or several events of a policy, saved in one transaction.

One transaction per command is what limits a service under load: each pays its own round
trips, commit, projection of its read models and relay wake-up. A unit runs several of them
against the same in-memory aggregates (a later one sees what an earlier one did), stamps each
one's events with its own actor and correlation id, and records them all at once.

Any failure inside a unit, whether a command refusing its input or a conflict at commit, makes
the caller run the unit's parts again one by one. Each then gets exactly the outcome it would
have had alone, and nothing of a failed part is ever recorded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from concierge import context
from concierge.records import META_KEY

R = TypeVar("R")


@dataclass
class UnitOfWork:
    """The aggregates loaded or changed by a unit's parts, and their events in order."""

    aggregates: dict[UUID, Any] = field(default_factory=dict)
    events: list[Any] = field(default_factory=list)
    # Ids known (from one query for the whole unit) to have no events yet.
    absent: set[UUID] = field(default_factory=set)
    # Results of keyed commands, recorded with the events (`concierge.idempotency`).
    answers: list[Any] = field(default_factory=list)

    def stage(self, aggregates: Iterable[Any], meta: dict[str, str]) -> None:
        """Take the aggregates' pending events, stamped with the part's `meta` (its actor and
        correlation id), which the store's mapper keeps instead of the current context."""
        for aggregate in aggregates:
            if aggregate is None:
                continue
            self.aggregates[aggregate.id] = aggregate
            for event in aggregate.collect_events():
                object.__getattribute__(event, "__dict__")[META_KEY] = meta
                self.events.append(event)


class UnitRepository:
    """The application's repository, seen through the unit of work of the current green
    thread: inside a unit, an aggregate is loaded once and every part gets that same object,
    with the changes of the parts before it. Outside a unit (queries, other green threads),
    it is the library's repository unchanged."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._local = threading.local()

    @property
    def inner(self) -> Any:
        """The library's repository, with its cache of aggregates."""
        return self._inner

    def cached(self, aggregate_id: UUID) -> Any:
        """The cached aggregate as it is (not brought up to date, not copied), or None: only
        for what never changes once set, such as the building an apartment belongs to."""
        cache = self._inner.cache
        if not cache:
            return None
        try:
            return cache.get(aggregate_id)
        except KeyError:
            return None

    @property
    def unit(self) -> UnitOfWork | None:
        return getattr(self._local, "unit", None)

    @unit.setter
    def unit(self, value: UnitOfWork | None) -> None:
        self._local.unit = value

    def get(self, aggregate_id: Any, *args: Any, version: int | None = None,
            **kwargs: Any) -> Any:
        unit = self.unit
        if unit is None or version is not None or args:
            return self._inner.get(aggregate_id, *args, version=version, **kwargs)
        found = unit.aggregates.get(aggregate_id)
        if found is None and aggregate_id in unit.absent:
            raise AggregateNotFoundError(aggregate_id)
        if found is None:
            # The library hands out a copy of its cached aggregate, so nothing a part does
            # reaches the cache before the unit is recorded.
            found = self._inner.get(aggregate_id, **kwargs)
            unit.aggregates[aggregate_id] = found
        return found

    def __contains__(self, aggregate_id: Any) -> bool:
        unit = self.unit
        if unit is not None and aggregate_id in unit.aggregates:
            return True
        if unit is not None and aggregate_id in unit.absent:
            return False
        return aggregate_id in self._inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Waiting(Generic[R]):
    """One command waiting for its turn in a group commit."""

    def __init__(self, command: Callable[[], tuple[R, Sequence[Any]]]) -> None:
        self.command = command
        self.ctx = context.current()
        self.turn = threading.Event()
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None

    def succeed(self, result: Any) -> None:
        self.result, self.done = result, True
        self.turn.set()

    def fail(self, error: BaseException) -> None:
        self.error, self.done = error, True
        self.turn.set()

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result


class GroupCommit:
    """Commands that arrive while a commit is in flight are committed together in the next.

    The first caller leads: it runs what is queued as one unit (`run_unit`) and wakes each
    waiting caller with its own result or error. Callers that arrived meanwhile are queued;
    the leader hands the lead to the first of them and returns at once, so no caller waits
    for more than the commit in flight and its own. With one caller at a time this is the
    plain path: one command, one transaction.
    """

    def __init__(self, run_unit: Callable[[list[_Waiting[Any]]], None],
                 max_commands: int = 100) -> None:
        self.run_unit = run_unit
        self.max_commands = max_commands
        self._queue: list[_Waiting[Any]] = []
        self._leading = False
        self._guard = threading.Lock()
        self.units = 0
        self.commands = 0

    def execute(self, command: Callable[[], tuple[R, Sequence[Any]]]) -> R:
        waiting: _Waiting[R] = _Waiting(command)
        with self._guard:
            self._queue.append(waiting)
            lead = not self._leading
            self._leading = True
        if not lead:
            waiting.turn.wait()  # set when done, or when handed the lead
        if not waiting.done:
            self._lead()
        return waiting.outcome()

    def execute_all(self, commands: Sequence[tuple[context.CallContext | Mapping[str, Any] | None,
                                                   Callable[[], tuple[Any, Sequence[Any]]]]]
                    ) -> list[Any]:
        """Several commands queued at once, each with its own call context, so they commit in
        one unit (with whatever else is waiting): their results, in order. Each has its own
        outcome, as if executed alone; the first failure is raised once all are done."""
        waiting: list[_Waiting[Any]] = []
        for ctx, command in commands:
            with context.acting(ctx if ctx is None or isinstance(ctx, context.CallContext)
                                else dict(ctx)):
                waiting.append(_Waiting(command))
        if not waiting:
            return []
        with self._guard:
            self._queue.extend(waiting)
            lead = not self._leading
            self._leading = True
        for position, each in enumerate(waiting):
            if position or not lead:
                each.turn.wait()  # set when done, or when handed the lead
            if not each.done:
                self._lead()
        failed = next((each.error for each in waiting if each.error is not None), None)
        if failed is not None:
            raise failed
        return [each.result for each in waiting]

    def _lead(self) -> None:
        with self._guard:
            batch = self._queue[:self.max_commands]
            del self._queue[:self.max_commands]
        try:
            self.units += 1
            self.commands += len(batch)
            self.run_unit(batch)
        finally:
            for waiting in batch:
                if not waiting.done:  # the leader was killed mid-commit
                    waiting.fail(RuntimeError("the commit was interrupted; try again"))
            with self._guard:
                if self._queue:
                    self._queue[0].turn.set()
                else:
                    self._leading = False
