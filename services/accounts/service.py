"""The accounts nameko service: login, sessions, installer accounts, residents' master accounts.

Thin: each entrypoint loads its payload with a contract schema and calls the application. The
composition root (`bootstrap`) picks the password hasher, wires the read models and the policy
on topology's events, and creates the bootstrap distributor.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Engine

from concierge import context
from concierge.config import Settings
from concierge.rpc import command, rpc, translated
from concierge.runtime import Runtime, ServiceBase, Wiring, assemble, open_store
from concierge.subscription import ProcessHandler
from contracts import load
from contracts.accounts import EVENT_SCHEMAS, InstallerCreate, LoginRequest
from services.accounts.application import TOPOLOGY_EVENTS, AccountsApplication
from services.accounts.projections import AccountsViews, read_models
from services.accounts.security import Credentials

# `fast`: argon2 at its lowest cost, for tests and benchmarks only; anything else is refused.
PASSWORD_HASH_ENV = "CONCIERGE_PASSWORD_HASH"

def credentials_from_env(environ: Mapping[str, str] | None = None) -> Credentials:
    choice = (os.environ if environ is None else environ).get(PASSWORD_HASH_ENV, "")
    choice = choice.strip().lower()
    if choice in ("", "argon2"):
        return Credentials()
    if choice == "fast":
        return Credentials.cheap()
    raise ValueError(f"{PASSWORD_HASH_ENV} must be 'argon2' (default) or 'fast', not {choice!r}")


def parse_bootstrap_distributor(value: str) -> tuple[str, str]:
    """`name:password` (the password may itself hold ':')."""
    username, sep, password = value.partition(":")
    if not sep or not username or not password:
        raise ValueError("CONCIERGE_BOOTSTRAP_DISTRIBUTOR must be 'name:password'")
    return username, password


def bootstrap(settings: Settings) -> Wiring:
    app, engine = open_store(
        "accounts", settings, AccountsApplication,
        credentials=credentials_from_env(),
        token_ttl=timedelta(hours=settings.token_ttl_hours),
    )
    assert isinstance(app, AccountsApplication)
    return wire(app, engine, settings)


def wire(app: AccountsApplication, engine: Engine, settings: Settings) -> Wiring:
    """Read models, the topology policy and the bootstrap distributor around an application."""
    app.views = AccountsViews(engine)
    policy = ProcessHandler("accounts", app, set(TOPOLOGY_EVENTS), app.on_topology_event,
                            lookups=app.lookups)
    wiring = assemble(Wiring(
        "accounts", settings, app, engine,
        read_models=read_models(app),
        policies=[("topology", policy)],
        event_schemas=EVENT_SCHEMAS,
    ))
    if settings.bootstrap_distributor:
        username, password = parse_bootstrap_distributor(settings.bootstrap_distributor)
        with context.acting({"actor": "bootstrap", "role": "system"}):
            app.ensure_distributor(username, password)
    return wiring


class AccountsService(ServiceBase):
    name = "accounts"
    runtime = Runtime(bootstrap)

    @rpc
    @translated
    def login(self, payload: dict[str, Any], ctx: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        """-> {token, expires_at, role, account_id}; Unauthorized alike for any bad pair.
        `ctx`: the gateway's (its deadline, and the Idempotency-Key of a retried login)."""
        request = load(LoginRequest, payload)
        with context.acting(ctx):
            return self.runtime.app.login(request["username"], request["password"])

    @rpc
    @translated
    def logout(self, token: str) -> None:
        self.runtime.app.logout(token)

    @rpc
    @translated
    def authenticate(self, token: str) -> dict[str, Any]:
        """-> {account_id, role, username, installer_id}; what the gateway scopes queries by."""
        return self.runtime.app.authenticate(token)

    @rpc
    @command
    def create_installer(self, ctx: dict[str, Any], payload: dict[str, Any]) -> str:
        """-> the new installer's account id; only a distributor (ctx account_id) may."""
        request = load(InstallerCreate, payload)
        caller = (ctx or {}).get("account_id")
        return self.runtime.app.create_installer(request, distributor_id=caller)

    @rpc
    @command
    def get_master_account(self, ctx: dict[str, Any], apartment_id: str) -> dict[str, Any]:
        """-> the master account row; NotFound unless it belongs to the caller's installer."""
        return self.runtime.app.get_master_account(
            apartment_id, installer_id=context.current().installer_id)
