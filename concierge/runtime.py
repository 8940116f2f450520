"""The composition root of one service, and the nameko glue that runs it.

A context's declaration (`concierge.contexts.BoundedContext`) becomes a `Wiring`: its
application, its database, its read models and the policies that react to other services'
events. The chassis adds the relay, the consumers and the catch-up loops; which store, which bus,
which mail sender is decided here and in the declaration, never in entrypoints.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from nameko.extensions import DependencyProvider
from sqlalchemy.engine import Engine

from concierge import green
from concierge.bus import ConsumerLoop, make_publisher, subscription_queue
from concierge.config import Settings
from concierge.database import service_engine
from concierge.envelope import Publishable
from concierge.envelope import build as build_envelope
from concierge.locks import leader_lock, setting_up
from concierge.projection import ReadModel
from concierge.records import StoredRecord, event_type
from concierge.relay import OutboxRelay
from concierge.rpc import rpc
from concierge.shutdown import FINISH_SECONDS
from concierge.statistics import Statistics
from concierge.storage import store_env
from concierge.store import ServiceApplication
from concierge.subscription import (
    Envelope,
    Handler,
    LogReader,
    ProjectionHandler,
    Subscription,
    apply_together,
    models_locked,
    projection_handlers,
)

log = logging.getLogger(__name__)


class Loop(Protocol):
    """A background loop: `run` until `stop` is called."""

    def run(self) -> Any: ...

    def stop(self) -> Any: ...


L = TypeVar("L", bound=Loop)


@dataclass
class Wiring:
    service: str
    settings: Settings
    app: ServiceApplication
    engine: Engine
    read_models: list[ReadModel] = field(default_factory=list)
    policies: list[tuple[str, Handler]] = field(default_factory=list)
    background: list[Callable[[], Any]] = field(default_factory=list)
    stoppers: list[Callable[[], Any]] = field(default_factory=list)
    # Closed once every loop has ended (the log reader's broker connection, ...).
    closers: list[Callable[[], Any]] = field(default_factory=list)
    event_schemas: dict[str, Any] = field(default_factory=dict)
    # Background loops a context's `started` step added (`add_loop`): a mailer, ...
    loops: list[Loop] = field(default_factory=list)
    relay: OutboxRelay | None = None
    subscriptions: dict[str, list[Subscription]] = field(default_factory=dict)
    local: list[Subscription] = field(default_factory=list)
    # Calls to other contexts' RPC a command makes (topology asks devices to keep a MAC); None
    # when the wiring reads other contexts' logs from something else than RPC (a test's logs).
    remote: RpcLogReader | None = None
    consumers: list[ConsumerLoop] = field(default_factory=list)
    _publishable: Publishable | None = None

    def close(self) -> None:
        for stop in self.stoppers:
            stop()
        if self.relay:
            self.relay.stop()
            with contextlib.suppress(Exception):
                if self.relay.lock.held():
                    self.relay.save_position()
            self.relay.lock.release()
        for close in self.closers:
            with contextlib.suppress(Exception):  # closing: a broken connection is closed too
                close()
        self.app.close()
        self.engine.dispose()

    # -- reading this service's own log ------------------------------------------------------
    def read_log(self, after: int = 0, limit: int = 500) -> list[Envelope]:
        publishable = self.publishable()
        records = self.app.read(after, limit)
        store = self.app.store_id() if records else None
        return [build_envelope(self.service, r, publishable=publishable, store=store)
                for r in records]

    def last_position(self) -> int:
        """Where this service's log ends now (a rebuild's total)."""
        return self.app.max_position()

    def publishable(self) -> Publishable:
        if self._publishable is None:
            self._publishable = Publishable(self.event_schemas)
        return self._publishable

    def add_loop(self, loop: Loop) -> None:
        """Run `loop` beside the service, from its start until its stop."""
        self.loops.append(loop)
        self.background.append(loop.run)
        self.stoppers.append(loop.stop)

    def loop(self, kind: type[L]) -> L:
        """The background loop of this type (tests and operators drive it by hand)."""
        found = [loop for loop in self.loops if isinstance(loop, kind)]
        if len(found) != 1:
            raise LookupError(f"{self.service} runs {len(found)} loops of type {kind.__name__}")
        return found[0]

    def local_reader(self, handler: Handler) -> LogReader:
        """Reads this service's own log for one of its read models.

        Own read models see every attribute, private ones included: they never leave. Events
        the model does not handle are not decoded; they only carry their position past it.
        """

        def read(source: str, after: int, limit: int) -> list[Envelope]:
            assert source == self.service
            envelopes: list[Envelope] = []
            for notification in self.app.read_notifications(after, limit):
                kind = event_type(notification.topic)
                if handler.interested(kind):
                    envelopes.append(build_envelope(self.service, self.app.decode(notification)))
                else:
                    envelopes.append({"type": kind, "source": self.service,
                                      "position": notification.id})
            return envelopes

        return read

    def catch_up_local(self, records: list[StoredRecord] | None = None) -> None:
        """Bring own read models up to the log now: a command's caller reads its own write.
        `records`, just committed, spare reading them back from the log."""
        if not self.local:
            return
        if records and all(sub.position >= records[-1].position for sub in self.local):
            return  # projected in the commit that recorded them (`own_models_in_commit`)
        known = [build_envelope(self.service, r) for r in records] if records else None
        with contextlib.ExitStack() as held:
            for sub in self.local:
                held.enter_context(sub.locked())
            held.enter_context(models_locked(sub.handler for sub in self.local))
            if known:
                # The common case: every model in one transaction. Should one of them refuse,
                # each goes alone below, so that one cannot hold back the others.
                with contextlib.suppress(Exception), self.engine.begin() as conn:
                    if self._project_together(conn, known):
                        return
            # Each model in a transaction of its own: one transaction that locked the models
            # one after another would hold the first one's advisory lock while it waits for
            # the next (see `models_locked`).
            for sub in self.local:
                try:
                    # From where the database says it stands: another replica may have
                    # moved it far past what this process remembers, and reading the log
                    # from there would fetch every event in between only to skip it.
                    sub.forget_position()
                    sub.catch_up(known=known)
                except Exception:
                    sub.forget_position()
                    log.exception("own read model %s fell behind; the next commit or start "
                                  "catches it up", sub.handler.name)


    @contextlib.contextmanager
    def own_models_in_commit(self) -> Iterator[Callable[[Any, list[StoredRecord]], None]]:
        """Own read models projected in the transaction that records their events (PostgreSQL,
        `ServiceApplication.project_in_commit`): no second transaction, no second lock of the
        models. Their positions stay locked until the commit, and move only if it succeeds.
        When a model does not stand right before the new events, nothing is projected here and
        `catch_up_local`, after the commit, does it as before."""
        with contextlib.ExitStack() as held:
            for sub in self.local:
                held.enter_context(sub.locked())
            # Before the transaction: it takes the events table's lock first, and must not
            # then wait in this process for a model that a consumer here is projecting.
            held.enter_context(models_locked(sub.handler for sub in self.local))
            done: list[tuple[int, int]] = []

            def project(conn: Any, records: list[StoredRecord]) -> None:
                handlers = [sub.handler for sub in self.local]
                if not all(isinstance(h, ProjectionHandler) for h in handlers):
                    return
                # Whether the models stand right before these events is read from the
                # database under their locks (`apply_together`), not from the positions this
                # process remembers: another replica's commits move the models too, and a
                # remembered position that lags would send every commit to the slow path.
                known = [build_envelope(self.service, r) for r in records]
                if apply_together(handlers, conn, known):  # type: ignore[arg-type]
                    done.append((records[-1].position, len(known)))

            yield project
            for last, count in done:
                for sub in self.local:
                    sub.advanced(last, count)

    def _project_together(self, conn: Any, known: list[Envelope]) -> bool:
        """The common case: every own read model stands right before the new events (as
        the database says: see `own_models_in_commit`)."""
        handlers = [sub.handler for sub in self.local]
        if not all(isinstance(h, ProjectionHandler) for h in handlers):
            return False
        if not apply_together(handlers, conn, known):  # type: ignore[arg-type]
            return False
        last = int(known[-1]["position"])
        for sub in self.local:
            sub.advanced(last, len(known))
        return True


def open_store(service: str, settings: Settings, app_cls: type[ServiceApplication],
               **app_kwargs: Any) -> tuple[ServiceApplication, Engine]:
    """A context's application on its store, given its read models' engine (its read side)."""
    with setting_up(service, settings):
        env = store_env(service, settings)
        engine = service_engine(service, settings)
        app = app_cls(env=env, engine=engine, **app_kwargs)
    return app, engine


class RpcLogReader:
    """Reads another service's log over RPC (the catch-up path); `close()` at shutdown.

    A short timeout: a request sent before the source's RPC queue exists is dropped (the
    in-process bus cannot return it), and a catch-up holds its subscription while it waits;
    the caller retries with back-off instead.
    """

    def __init__(self, settings: Settings, timeout: float = 3.0) -> None:
        self.settings = settings
        self.timeout = timeout
        # One long-lived proxy: each new one costs a reply queue on the broker. Its connection
        # has one reader, so calls from the consumer loops and the startup catch-up take turns:
        # two green threads draining the same socket is an error, and the loser's cleanup
        # closed the socket under the winner, leaving it waiting forever on a file number
        # reused later.
        self._state: dict[str, Any] = {}
        self._turn = threading.Lock()

    def __call__(self, source: str, after: int, limit: int) -> list[Envelope]:
        return self.call(source, "read_log", after, limit)

    def last_position(self, source: str) -> int:
        """Where the source's log ends: a rebuild's progress total (`ServiceBase.last_position`)."""
        return self.call(source, "last_position")

    def call(self, source: str, method: str, *args: Any) -> Any:
        from concierge.rpc import ClusterRpcProxy

        state = self._state
        with self._turn:
            if "proxy" not in state:
                state["cluster"] = ClusterRpcProxy(self.settings.nameko_config(),
                                                   timeout=self.timeout)
                state["proxy"] = state["cluster"].start()
            try:
                return getattr(state["proxy"][source], method)(*args)
            except Exception:
                self._drop()
                raise

    def close(self) -> None:
        """Stop the proxy (its reply queue and connection), once no loop reads any more."""
        self._drop()

    def _drop(self) -> None:
        cluster = self._state.pop("cluster", None)
        self._state.pop("proxy", None)
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.stop()


def rpc_log_reader(settings: Settings, timeout: float = 3.0) -> RpcLogReader:
    return RpcLogReader(settings, timeout)


def assemble(wiring: Wiring, read_remote: LogReader | None = None) -> Wiring:
    """Attach relay, subscriptions and local projections to a context's wiring."""
    settings = wiring.settings
    service = wiring.service
    wiring.relay = OutboxRelay(
        service,
        wiring.app,
        wiring.engine,
        publisher_factory=lambda: make_publisher(settings.amqp_uri, service,
                                                 settings.amqp_prefix),
        lock=leader_lock(service, settings, wiring.engine),
        idle_seconds=settings.relay_idle_seconds,
        publishable=wiring.publishable(),
    )
    if read_remote is None:
        read_remote = rpc_log_reader(settings)
        wiring.closers.append(read_remote.close)
        # A client of its own: the catch-up reader's calls take turns on one connection.
        wiring.remote = rpc_log_reader(settings, timeout=5.0)
        wiring.closers.append(wiring.remote.close)
    handlers: list[tuple[str, Handler]] = list(wiring.policies)
    for model in wiring.read_models:
        model.create(wiring.engine)
        handlers.extend(projection_handlers(model, wiring.engine, own=service).items())
    if wiring.read_models and wiring.engine.dialect.name == "postgresql":
        wiring.add_loop(Statistics(wiring.engine, [
            table.name for model in wiring.read_models for table in model.metadata.sorted_tables]))
    for source, handler in handlers:
        if source == service:
            wiring.local.append(Subscription(source, handler, wiring.local_reader(handler)))
        else:
            sub = Subscription(source, handler, read_remote)
            wiring.subscriptions.setdefault(source, []).append(sub)
    wiring.app.on_recorded(wiring.catch_up_local)
    wiring.app.catch_up_read_models = wiring.catch_up_local
    if wiring.local:
        wiring.app.project_in_commit(wiring.engine, wiring.own_models_in_commit)
    return wiring


def dispatcher(subs: list[Subscription]) -> Callable[[list[Envelope]], None]:
    """Hands a batch of one source's messages to every subscription of that source.

    The read models among them take it in one transaction when they all stand right before
    it (`deliver_together`); otherwise, and for policies, each subscription takes it alone.
    """
    models = [s for s in subs if isinstance(s.handler, ProjectionHandler)]
    others = [s for s in subs if s not in models]

    def handle(messages: list[Envelope]) -> None:
        together = len(models) > 1 and deliver_together(models, messages)
        for sub in others if together else subs:
            sub.deliver_many(messages)

    return handle


def deliver_together(subs: list[Subscription], messages: list[Envelope]) -> bool:
    """Apply `messages` to several read models of one database in one transaction (one lock,
    one read and one write of their positions), when they follow on from every model's
    position without a gap and come from the source's current store. False, with nothing
    applied, otherwise: the caller delivers to each alone, which repairs gaps from the log."""
    handlers = [sub.handler for sub in subs]
    engine = handlers[0].engine  # type: ignore[attr-defined]
    first, last = int(messages[0]["position"]), int(messages[-1]["position"])
    with contextlib.ExitStack() as held:
        for sub in subs:
            held.enter_context(sub.locked())
        if (any(sub.position != first - 1 for sub in subs)
                or any(int(m["position"]) != first + i for i, m in enumerate(messages))
                or not all(sub.from_current_store(m) for m in messages for sub in subs)
                or any(getattr(h, "engine", None) is not engine for h in handlers)):
            return False
        try:
            with models_locked(handlers), engine.begin() as conn:
                together = apply_together(handlers, conn, messages)  # type: ignore[arg-type]
        except Exception:
            for sub in subs:
                sub.forget_position()
            raise
        if not together:  # another replica moved a model meanwhile: learn where it stands
            for sub in subs:
                sub.forget_position()
            return False
        for sub in subs:
            sub.advanced(last, sum(1 for m in messages if sub.handler.interested(m["type"])))
    return True


class Runner:
    """Runs a wiring's loops: relay, one consumer per source, startup catch-up, background.

    A stop comes in two steps (`concierge.shutdown`): `stop_intake()` at once (no new delivery,
    no more catch-up), then `stop()` once the service's commands have drained: the consumers
    finish the batch they hold, then the relay publishes what was committed and saves its
    position, and every leader (relay, mailer) lets go of its lock, each step within its bound.
    """

    def __init__(self, wiring: Wiring, spawn: Callable[..., Any] = green.spawn) -> None:
        self.wiring = wiring
        self.spawn = spawn
        self.running = False
        self._intake: list[Any] = []  # threads that take work in: consumers, startup catch-up
        self._leaders: list[Any] = []  # threads that publish or send it on: relay, background
        self._stopping = threading.Event()
        self._intake_stopped_at: float | None = None

    def start(self) -> None:
        w = self.wiring
        self.running = True
        assert w.relay is not None
        for source, subs in w.subscriptions.items():
            queue = subscription_queue(w.service, source, w.settings.amqp_prefix)
            loop = ConsumerLoop(w.settings.amqp_uri, queue, dispatcher(subs))
            loop.declare()
            w.consumers.append(loop)
            self._intake.append(self.spawn(loop.run))
        self._leaders.append(self.spawn(w.relay.run))
        self._intake.append(self.spawn(self._startup_catch_up))
        for task in w.background:
            self._leaders.append(self.spawn(task))

    def _startup_catch_up(self) -> None:
        """A subscriber that starts late reads what it missed from each source's log."""
        w = self.wiring
        w.catch_up_local()
        pending = [s for subs in w.subscriptions.values() for s in subs]
        delay = 0.2
        while pending and self.running:
            still = []
            for sub in pending:
                try:
                    sub.catch_up()
                except Exception as exc:
                    log.info("%s cannot read %s's log yet (%s); retrying", w.service, sub.source,
                             type(exc).__name__)
                    still.append(sub)
            pending = still
            if pending and self._stopping.wait(delay):  # a stop ends the back-off at once
                return
            delay = min(delay * 2, 5.0)

    def stop_intake(self) -> None:
        """Take no new delivery and stop catching up; a batch being applied finishes."""
        if self._intake_stopped_at is None:
            self._intake_stopped_at = time.monotonic()
        self.running = False
        self._stopping.set()
        for loop in self.wiring.consumers:
            loop.stop()

    def halt(self) -> None:
        """Tell every loop to stop, without waiting (a kill)."""
        self.stop_intake()
        w = self.wiring
        if w.relay:
            w.relay.stop()
        for stop in w.stoppers:
            stop()

    def stop(self) -> None:
        """Stop every loop: the consumers by the shutdown bound after `stop_intake`, the relay
        and the other leaders within FINISH_SECONDS after; a loop that overruns is ended."""
        self.stop_intake()
        assert self._intake_stopped_at is not None
        drained_by = self._intake_stopped_at + self.wiring.settings.shutdown_seconds
        self._end(self._intake, drained_by, "applying events")
        self.halt()
        self._end(self._leaders, max(time.monotonic(), drained_by) + FINISH_SECONDS,
                  "publishing or sending")

    def _end(self, threads: list[Any], until: float, doing: str) -> None:
        for thread in green.join([t for t in threads if t is not None], until):
            log.warning("%s: a loop still %s at its deadline is ended", self.wiring.service,
                        doing)
            green.kill(thread)


class Runtime(DependencyProvider):
    """Gives a nameko service its context's wiring and runs the chassis loops beside it."""

    def __init__(self, wire: Callable[[Settings], Wiring]) -> None:
        """`wire`: the context's `BoundedContext.wire`."""
        self.wire = wire
        self.wiring: Wiring | None = None
        self.runner: Runner | None = None

    def setup(self) -> None:
        settings = self.container.config.get("CONCIERGE_SETTINGS") or Settings.from_env()
        self.wiring = self.wire(settings)
        self.runner = Runner(self.wiring, spawn=self._spawn)

    def _spawn(self, fn: Callable[[], Any]) -> Any:
        return self.container.spawn_managed_thread(fn, identifier=f"concierge.{fn}")

    def start(self) -> None:
        assert self.runner is not None
        self.runner.start()

    def stop_intake(self) -> None:
        """The first step of a stop (`concierge.shutdown.DrainingContainer`), beside the
        entrypoints': no new bus delivery while the commands in flight drain."""
        if self.runner:
            self.runner.stop_intake()

    def stop(self) -> None:
        if self.runner:
            self.runner.stop()
        if self.wiring:
            self.wiring.close()

    def kill(self) -> None:
        if self.runner:
            self.runner.halt()

    def get_dependency(self, worker_ctx: Any) -> Wiring:
        assert self.wiring is not None
        return self.wiring


class ServiceBase:
    """Entrypoints every service has: its log, for subscribers that catch up."""

    runtime: Any

    @rpc
    def read_log(self, after: int = 0, limit: int = 500) -> list[Envelope]:
        return self.runtime.read_log(int(after), int(limit))

    @rpc
    def last_position(self) -> int:
        return self.runtime.last_position()
