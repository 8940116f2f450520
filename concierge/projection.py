"""Read models: SQLAlchemy tables fed by events, which can be dropped and rebuilt at any time."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import MetaData, delete
from sqlalchemy.engine import Engine

from concierge.database import projection_tracking
from concierge.subscription import ProjectFn, ProjectionHandler


class ReadModel:
    """A named set of tables and, per source service, the event handlers that write them."""

    name = "read_model"
    metadata: MetaData

    def handlers(self) -> dict[str, dict[str, ProjectFn]]:
        """{source service: {event type: fn(connection, envelope)}}."""
        raise NotImplementedError

    def create(self, engine: Engine) -> None:
        self.metadata.create_all(engine)

    def drop(self, engine: Engine) -> None:
        """Drop the tables and forget every position, so the next catch-up starts from zero."""
        self.metadata.drop_all(engine)
        with engine.begin() as conn:
            conn.execute(delete(projection_tracking).where(
                projection_tracking.c.projection == self.name))

    def projection_handlers(self, engine: Engine) -> dict[str, ProjectionHandler]:
        return {
            source: ProjectionHandler(f"{self.name}", engine, fns)
            for source, fns in self.handlers().items()
        }


Progress = Callable[[str, int, int], None]
