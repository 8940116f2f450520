"""Accounts' declaration: logins and sessions, installer accounts, residents' master accounts.

It picks the password hasher (`CONCIERGE_PASSWORD_HASH`), reacts to topology's resident and
apartment events, and creates the bootstrap distributor (`CONCIERGE_BOOTSTRAP_DISTRIBUTOR`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from concierge import context
from concierge.config import Settings
from concierge.contexts import BoundedContext, Policy
from concierge.runtime import Wiring
from contracts.accounts import EVENT_SCHEMAS, LOGIN_LIMITS
from services.accounts.application import TOPOLOGY_EVENTS, AccountsApplication
from services.accounts.projections import read_models
from services.accounts.security import Credentials

# `fast`: argon2 at its lowest cost, for tests and benchmarks only; anything else is refused.
PASSWORD_HASH_ENV = "CONCIERGE_PASSWORD_HASH"
# The installer `concierge up` creates, so that the embedded platform prints a working login.
DEMO_INSTALLER = ("demo-installer", "demo-installer-pw", "installer@example.com")


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


def parse_login_limits(value: str) -> dict[str, int]:
    """`CONCIERGE_LOGIN_LIMITS`: "pair=5,user=20,addr=50", any of them; the rest as in the
    contract (LOGIN_LIMITS)."""
    limits = dict(LOGIN_LIMITS)
    for part in filter(None, (p.strip() for p in value.split(","))):
        key, sep, number = part.partition("=")
        if not sep or key.strip() not in LOGIN_LIMITS or not number.strip().isdigit() \
                or int(number) < 1:
            raise ValueError(f"CONCIERGE_LOGIN_LIMITS: {part!r} is not one of "
                             f"{', '.join(f'{k}=<n>' for k in LOGIN_LIMITS)}")
        limits[key.strip()] = int(number)
    return limits


def options(settings: Settings) -> dict[str, Any]:
    return {"credentials": credentials_from_env(),
            "token_ttl": timedelta(hours=settings.token_ttl_hours),
            "login_limits": parse_login_limits(settings.login_limits)}


def ensure_distributor(wiring: Wiring) -> None:
    """The first login of a new platform: nobody else exists to create accounts."""
    app = wiring.app
    assert isinstance(app, AccountsApplication)
    if wiring.settings.bootstrap_distributor:
        username, password = parse_bootstrap_distributor(wiring.settings.bootstrap_distributor)
        with context.acting({"actor": "bootstrap", "role": "system"}):
            app.ensure_distributor(username, password)


def ask_topology_for_communities(wiring: Wiring) -> None:
    """A property manager is assigned only communities of its installer's: topology says
    which of those named are not (over RPC, as the caller)."""
    remote = wiring.remote
    if remote is None:
        return  # wired on a test's logs: no topology to ask
    app = wiring.app
    assert isinstance(app, AccountsApplication)
    app.unknown_communities = lambda ids: remote.call(
        "topology", "unknown_communities", context.current().to_dict(), ids)


def describe(settings: Settings) -> str:
    if not settings.bootstrap_distributor:
        return ""
    user = settings.bootstrap_distributor.partition(":")[0]
    return f"distributor login {user!r} (CONCIERGE_BOOTSTRAP_DISTRIBUTOR)"


def demo_logins(settings: Settings) -> list[str]:
    """`concierge up`: the distributor's login, and a demo installer's, created once."""
    from concierge.rpc import ClusterRpcProxy
    from contracts.errors import Conflict

    distributor, password = parse_bootstrap_distributor(settings.bootstrap_distributor)
    with ClusterRpcProxy(settings.nameko_config(), timeout=30) as rpc:
        session = rpc.accounts.login({"username": distributor, "password": password})
        principal = rpc.accounts.authenticate(session["token"])
        ctx = {"actor": f"distributor:{distributor}", "role": "distributor",
               "installer_id": None, "account_id": principal["account_id"]}
        username, pw, email = DEMO_INSTALLER
        with contextlib.suppress(Conflict):
            rpc.accounts.create_installer(ctx, {"username": username, "password": pw,
                                                "email": email})
    return [f"distributor:  {distributor} / {password}",
            f"installer:    {DEMO_INSTALLER[0]} / {DEMO_INSTALLER[1]}"]


CONTEXT = BoundedContext(
    name="accounts",
    service="services.accounts.service:AccountsService",
    application=AccountsApplication,
    options=options,
    read_models=read_models,
    policies=[Policy("topology", TOPOLOGY_EVENTS, "on_topology_event", lookups="lookups")],
    event_schemas=EVENT_SCHEMAS,
    started=[ensure_distributor, ask_topology_for_communities],
    describe=describe,
    demo="services.accounts.declaration:demo_logins",
)
