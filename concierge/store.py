"""Each service's own event store, built on the eventsourcing library: its application.

SQLite file under the data folder by default; with CONCIERGE_DATABASE_URL, the service's own
schema in PostgreSQL (`concierge.storage`). Every store is a *process* recorder so a subscriber
can record the position it has processed in the same transaction as the events it produces.

`ServiceApplication` is made of parts with one job each: writing (`concierge.commit.Commits`),
reading (`concierge.reads.StoreReads`), loading cached aggregates together
(`concierge.loading.LoadsTogether`); stored events are stamped and decoded by
`concierge.decoding`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import Mapper

from concierge.commit import Commits
from concierge.decoding import StampingMapper
from concierge.loading import LoadsTogether
from concierge.reads import StoreReads
from concierge.unit import GroupCommit, UnitRepository
from concierge.vault import PersonalData, Vault


class ServiceApplication(Commits, StoreReads, LoadsTogether, Application):
    """Base of every context's application: tracking-capable store, stamped events, listeners.

    `engine` is the database of the context's read models, given at construction (the chassis
    does, from the context's declaration, `concierge.contexts`); an application built without
    one (a unit test of the domain) has no read side.
    """

    # Reading the log 1000 at a time is 5.6x faster on PostgreSQL than the default 10; rebuilds
    # read 5000 at a time (fewer transactions); callers still choose their own limit.
    log_section_size = 5000
    service_name = "service"
    # The personal fields of this context's events (concierge.vault), sealed in its store.
    personal_data: PersonalData | None = None

    def __init__(self, env: dict[str, str] | None = None, engine: Any = None) -> None:
        self.engine = engine
        # Brings the context's own read models up to its log now (set by the chassis when it
        # wires the context): a command that reads them right after a write calls it.
        self.catch_up_read_models: Callable[[], None] = lambda: None
        self.init_commits()
        self.group_commit = GroupCommit(self._commit_waiting)
        super().__init__(env=env)

    def construct_repository(self) -> Any:
        return UnitRepository(super().construct_repository())

    def construct_mapper(self) -> Mapper:
        mapper = self.factory.mapper(
            transcoder=self.construct_transcoder(), mapper_class=StampingMapper
        )
        if self.personal_data is not None and self.engine is not None:
            # Personal fields sealed with keys in the context's own database.
            mapper.personal = self.personal_data
            mapper.vault = self.shared_vault()
        return mapper

    def shared_vault(self) -> Vault:
        """The context's one vault (its keys, and on PostgreSQL its one connection)."""
        found = self.__dict__.get("_shared_vault")
        if found is None:
            assert self.engine is not None, "a vault needs the context's database"
            found = self.__dict__["_shared_vault"] = Vault(self.engine)
        return found

    def construct_recorder(self) -> Any:
        return self.factory.process_recorder()
