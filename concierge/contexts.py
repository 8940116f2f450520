"""How a bounded context declares itself, and the one list of them.

Each context declares itself in `services/<name>/declaration.py`, as one
`CONTEXT = BoundedContext(...)`: its name, its nameko service, its application, its read models,
the policies that react to other contexts' events (and from which source), the schemas of the
events it publishes. The chassis wires a context from that declaration alone
(`BoundedContext.wire`), and everything that runs or operates contexts finds them with
`contexts()`: the CLI (`run`, `up`, `migrate`, `rebuild`,
`replay`, `events`, `contexts`), the deploy manifests (through `concierge contexts`), the bench
cluster. Adding a context adds a package and edits no chassis file (docs/new-context.md).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from concierge.config import Settings
from concierge.projection import ReadModel
from concierge.runtime import Wiring, assemble, open_store
from concierge.store import ServiceApplication
from concierge.subscription import LogReader, ProcessHandler

# Where `contexts()` looks: every package under it with a `declaration` module.
PACKAGE = "services"
DECLARATION = "declaration"


@dataclass(frozen=True)
class Policy:
    """A reaction to another context's events, recorded with tracking (exactly once in effect).

    `handler` names the application's method that turns one event into the aggregates to
    record; `alone`, the event types it must see applied one transaction at a time (it reads a
    read model, which a unit of work in progress does not show); `lookups`, the application's
    method naming the aggregates a run of events will load, so one query loads them all;
    `schemas`, per event type, the contract schema the chassis loads its `data` with before
    `lookups` and `handler` see it (once per event; one that breaks it is logged and skipped).
    """

    source: str
    events: Collection[str]
    handler: str
    alone: Collection[str] = ()
    lookups: str | None = None
    schemas: Mapping[str, Any] | None = None

    def bind(self, context: str, app: ServiceApplication) -> ProcessHandler:
        return ProcessHandler(context, app, set(self.events), getattr(app, self.handler),
                              alone=frozenset(self.alone),
                              lookups=getattr(app, self.lookups) if self.lookups else None,
                              schemas=self.schemas)


def _no_read_models(app: Any) -> Sequence[ReadModel]:
    return ()


def _no_options(settings: Settings) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class BoundedContext:
    """A context as the chassis runs it. The gateway declares itself the same way, without an
    application: it keeps no store.

    - `service`: its nameko service class, as "module:Class" (imported when it is run);
    - `application`: built with the store's settings, the read models' engine and
      `options(settings)` (a context's own settings: a password hasher, a mail sender);
    - `read_models(app)`: its read models, given the application (a view may serve both);
    - `policies`: its reactions to other contexts' events;
    - `event_schemas`: the contracts of the events it publishes (what leaves the context);
    - `started`: what runs once the chassis has wired it, given the wiring: seed data, a
      background loop (`wiring.add_loop`);
    - `describe(settings)`: where its work shows, for the `ready:` line of `concierge run`;
    - `demo`: "module:function", run once by `concierge up` when every context serves, given
      the settings; the lines it returns go into the banner (demo logins).
    """

    name: str
    service: str
    application: type[ServiceApplication] | None = None
    read_models: Callable[[Any], Sequence[ReadModel]] = _no_read_models
    policies: Sequence[Policy] = ()
    event_schemas: Mapping[str, Any] = field(default_factory=dict)
    options: Callable[[Settings], dict[str, Any]] = _no_options
    started: Sequence[Callable[[Wiring], None]] = ()
    describe: Callable[[Settings], str] | None = None
    demo: str | None = None

    @property
    def stored(self) -> bool:
        """Whether it keeps an event store (and so can be migrated, rebuilt, replayed)."""
        return self.application is not None

    def service_class(self) -> type:
        return pkgutil.resolve_name(self.service)

    def open(self, settings: Settings, **options: Any) -> ServiceApplication:
        """Its application on its store, with its read side; `options` override the
        declaration's (a test's password hasher)."""
        if self.application is None:
            raise ValueError(f"{self.name} keeps no event store")
        app, _engine = open_store(self.name, settings, self.application,
                                  **{**self.options(settings), **options})
        return app

    def wire(self, settings: Settings, *, app: ServiceApplication | None = None,
             read_remote: LogReader | None = None, **options: Any) -> Wiring:
        """Everything the context runs on: its application (built here, or `app`), read
        models, policies, relay and subscriptions, then its `started` steps.
        `read_remote` reads other contexts' logs (default: over RPC)."""
        if app is None:
            app = self.open(settings, **options)
        if app.engine is None:
            raise ValueError(f"{self.name}: its application was built without an engine")
        wiring = assemble(Wiring(
            self.name, settings, app, app.engine,
            read_models=list(self.read_models(app)),
            policies=[(p.source, p.bind(self.name, app)) for p in self.policies],
            event_schemas=dict(self.event_schemas),
        ), read_remote=read_remote)
        for step in self.started:
            step(wiring)
        return wiring


@functools.cache
def contexts(package: str = PACKAGE) -> dict[str, BoundedContext]:
    """Every declared context, by name: those with a store first (by name), then the others
    (the gateway), the order `concierge up` starts them in."""
    found: list[BoundedContext] = []
    root = importlib.import_module(package)
    for module in pkgutil.iter_modules(root.__path__):
        name = f"{package}.{module.name}.{DECLARATION}"
        if module.ispkg and importlib.util.find_spec(name) is not None:
            declared = importlib.import_module(name).CONTEXT
            if not isinstance(declared, BoundedContext) or declared.name != module.name:
                raise TypeError(f"{name}.CONTEXT must be a BoundedContext named {module.name!r}")
            found.append(declared)
    found.sort(key=lambda c: (not c.stored, c.name))
    return {c.name: c for c in found}


def stored_contexts(package: str = PACKAGE) -> list[str]:
    """The names of the contexts that keep an event store."""
    return [name for name, c in contexts(package).items() if c.stored]


def context(name: str, package: str = PACKAGE) -> BoundedContext:
    found = contexts(package)
    if name not in found:
        raise KeyError(f"no context {name!r}; the contexts are {', '.join(found)}")
    return found[name]
