"""Accounts application on a real SQLite store in a temporary folder: logins, sessions, installers.

Given a wired application (store, read models, no bus), when a command runs, then the outcome is
read back the way callers read it: through queries, the read models and the published log.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from concierge import context
from concierge.config import Settings
from concierge.rebuild import rebuild
from concierge.runtime import Wiring
from contracts.errors import Conflict, Forbidden, Invalid, Unauthorized
from contracts.fields import NUL_MESSAGE
from services.accounts.application import LOGIN_FAILED, AccountsApplication
from services.accounts.declaration import CONTEXT as ACCOUNTS
from services.accounts.declaration import credentials_from_env, parse_bootstrap_distributor
from services.accounts.domain import MAX_SESSIONS, PortalAccount
from services.accounts.security import Credentials

CREDENTIALS = Credentials.cheap()
TTL = timedelta(hours=8)
ROOT = ("root", "root-password")
DISTRIBUTOR_CTX = {"actor": "distributor:root", "role": "distributor"}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def open_accounts(data_dir: Path, clock: Clock, **settings: Any) -> Wiring:
    config = Settings(data_dir=data_dir, **settings)
    return ACCOUNTS.wire(config, credentials=CREDENTIALS, token_ttl=TTL, clock=clock)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def wiring(tmp_path: Path, clock: Clock) -> Iterator[Wiring]:
    opened = open_accounts(tmp_path, clock, bootstrap_distributor=":".join(ROOT))
    yield opened
    opened.close()


@pytest.fixture
def app(wiring: Wiring) -> AccountsApplication:
    assert isinstance(wiring.app, AccountsApplication)
    return wiring.app


def root_id() -> str:
    return str(PortalAccount.id_for_username(ROOT[0]))


def create_installer(app: AccountsApplication, username: str = "luna") -> str:
    with context.acting(DISTRIBUTOR_CTX):
        return app.create_installer(
            {"username": username, "password": "luna-password", "email": "luna@example.com"},
            distributor_id=root_id(),
        )


def published_types(wiring: Wiring) -> list[str]:
    return [envelope["type"] for envelope in wiring.read_log(0, 1000)]


def test_a_request_no_store_can_keep_is_refused_before_the_store(wiring: Wiring) -> None:
    before = published_types(wiring)
    payload = {"username": "lu\x00na", "password": "correct-horse", "email": "l@example.com"}

    with context.acting(DISTRIBUTOR_CTX), pytest.raises(Invalid) as caught:
        wiring.app.create_installer(payload, distributor_id=root_id())

    assert caught.value.errors == {"username": [NUL_MESSAGE]}
    assert published_types(wiring) == before


# --- login, tokens, logout -----------------------------------------------------------------


def test_a_good_login_returns_a_token_that_authenticates(app: AccountsApplication,
                                                         clock: Clock) -> None:
    session = app.login(*ROOT)

    assert session["role"] == "distributor"
    assert session["account_id"] == root_id()
    assert datetime.fromisoformat(session["expires_at"]) == clock.now + TTL
    assert app.authenticate(session["token"]) == {
        "account_id": root_id(), "role": "distributor", "username": "root", "installer_id": None,
    }


def test_an_installer_is_scoped_to_itself(app: AccountsApplication) -> None:
    installer_id = create_installer(app)

    session = app.login("LUNA", "luna-password")  # usernames are case-insensitive

    assert app.authenticate(session["token"]) == {
        "account_id": installer_id, "role": "installer", "username": "luna",
        "installer_id": installer_id,
    }


def test_a_wrong_password_and_an_unknown_username_fail_alike(app: AccountsApplication) -> None:
    with pytest.raises(Unauthorized) as wrong_password:
        app.login("root", "not-the-password")
    with pytest.raises(Unauthorized) as unknown_user:
        app.login("nobody", "root-password")

    assert wrong_password.value.detail == unknown_user.value.detail == LOGIN_FAILED
    assert wrong_password.value.errors == unknown_user.value.errors == {}


def test_a_failed_login_records_nothing(wiring: Wiring, app: AccountsApplication) -> None:
    before = app.max_position()

    with pytest.raises(Unauthorized):
        app.login("root", "not-the-password")

    assert app.max_position() == before


def test_an_unknown_token_is_refused(app: AccountsApplication) -> None:
    with pytest.raises(Unauthorized):
        app.authenticate("made-up-token")
    with pytest.raises(Unauthorized):
        app.authenticate("")


def test_a_token_expires_after_its_lifetime(app: AccountsApplication, clock: Clock) -> None:
    token = app.login(*ROOT)["token"]
    clock.now += TTL - timedelta(seconds=1)
    app.authenticate(token)

    clock.now += timedelta(seconds=1)

    with pytest.raises(Unauthorized, match="expired"):
        app.authenticate(token)


def test_logout_invalidates_only_that_token(app: AccountsApplication) -> None:
    first = app.login(*ROOT)["token"]
    second = app.login(*ROOT)["token"]

    app.logout(first)

    with pytest.raises(Unauthorized):
        app.authenticate(first)
    assert app.authenticate(second)["username"] == "root"
    with pytest.raises(Unauthorized):
        app.logout(first)


def test_too_many_sessions_close_the_oldest(app: AccountsApplication) -> None:
    tokens = [app.login(*ROOT)["token"] for _ in range(MAX_SESSIONS + 1)]

    with pytest.raises(Unauthorized):
        app.authenticate(tokens[0])
    for token in tokens[1:]:
        assert app.authenticate(token)["username"] == "root"

def test_the_raw_token_and_secrets_never_leave_the_service(wiring: Wiring,
                                                           app: AccountsApplication) -> None:
    token = app.login(*ROOT)["token"]
    app.logout(token)

    published = wiring.read_log(0, 1000)

    assert [e["type"] for e in published] == [
        "PortalAccountCreated", "SessionOpened", "SessionClosed"]
    for envelope in published:
        assert not {"password_hash", "token_digest"} & set(envelope["data"])
        assert token not in repr(envelope)
    # The store keeps the digest only.
    stored = repr([record.state for record in app.read(0, 1000)])
    assert token not in stored
    assert CREDENTIALS.token_digest(token) in stored


def test_sessions_survive_a_rebuild_of_the_read_models(wiring: Wiring,
                                                       app: AccountsApplication) -> None:
    kept = app.login(*ROOT)["token"]
    closed = app.login(*ROOT)["token"]
    app.logout(closed)

    rebuild(wiring)

    assert app.authenticate(kept)["username"] == "root"
    with pytest.raises(Unauthorized):
        app.authenticate(closed)


def _sessions(wiring: Wiring) -> Any:
    """The subscription of the sessions view to accounts' own log."""
    return next(sub for sub in wiring.local if sub.handler.name == "accounts_sessions")


def test_the_sessions_view_applies_its_events_once_when_they_come_twice(
        wiring: Wiring, app: AccountsApplication) -> None:
    kept = app.login(*ROOT)["token"]
    closed = app.login(*ROOT)["token"]
    app.logout(closed)
    sub = _sessions(wiring)
    position = sub.position

    own_log = wiring.local_reader(sub.handler)("accounts", 0, 1000)
    sub.deliver_many(own_log)  # every event again: each is a duplicate

    assert sub.position == position
    assert app.authenticate(kept)["username"] == "root"
    with pytest.raises(Unauthorized):
        app.authenticate(closed)


def test_the_sessions_view_stopped_mid_stream_ends_in_the_same_state(
        tmp_path: Path, clock: Clock) -> None:
    first = open_accounts(tmp_path, clock, bootstrap_distributor=":".join(ROOT))
    app = first.app
    assert isinstance(app, AccountsApplication)
    tokens = [app.login(*ROOT)["token"] for _ in range(3)]
    app.logout(tokens[1])
    events = first.local_reader(_sessions(first).handler)("accounts", 0, 1000)
    # The view forgets everything, then is stopped after half the log ...
    view = next(m for m in first.read_models if m.name == "accounts_sessions")
    view.drop(first.engine)
    view.create(first.engine)
    _sessions(first).forget_position()
    _sessions(first).deliver_many(events[: len(events) // 2])
    first.close()
    # ... and a restart catches up with the rest.
    second = open_accounts(tmp_path, clock)
    try:
        second.catch_up_local()
        again = second.app
        assert isinstance(again, AccountsApplication)
        assert again.authenticate(tokens[0])["username"] == "root"
        assert again.authenticate(tokens[2])["username"] == "root"
        with pytest.raises(Unauthorized):
            again.authenticate(tokens[1])
    finally:
        second.close()


# --- installers ----------------------------------------------------------------------------


def test_a_distributor_creates_an_installer_who_can_log_in(app: AccountsApplication) -> None:
    installer_id = create_installer(app)

    assert installer_id == str(PortalAccount.id_for_username("luna"))
    assert app.login("luna", "luna-password")["role"] == "installer"
    assert app.views is not None
    row = app.views.portal_account(installer_id)
    assert row is not None and row.pop("created_at") is not None
    assert row == {
        "id": installer_id, "role": "installer", "username": "luna",
        "email": "luna@example.com", "created_by": root_id(), "phone": None,
    }


@pytest.mark.parametrize("who", ["installer", "no context", "distributor role, installer id"])
def test_only_a_distributor_creates_installers(app: AccountsApplication, who: str) -> None:
    installer_id = create_installer(app)
    caller = {
        "installer": ({"actor": "installer:luna", "role": "installer"}, installer_id),
        "no context": (None, None),
        "distributor role, installer id": (DISTRIBUTOR_CTX, installer_id),
    }[who]
    before = app.max_position()

    with context.acting(caller[0]), pytest.raises(Forbidden):
        app.create_installer(
            {"username": "sol", "password": "sol-password", "email": "sol@example.com"},
            distributor_id=caller[1],
        )

    assert app.max_position() == before


def test_a_taken_username_is_a_conflict_naming_the_field(app: AccountsApplication) -> None:
    create_installer(app, "luna")
    before = app.max_position()

    with pytest.raises(Conflict) as caught:
        create_installer(app, "Luna")

    assert list(caught.value.errors) == ["username"]
    assert app.max_position() == before


def test_installer_fields_are_checked(app: AccountsApplication) -> None:
    with context.acting(DISTRIBUTOR_CTX), pytest.raises(Invalid) as caught:
        app.create_installer({"username": "sol", "password": "short", "email": "sol@x.io"},
                             distributor_id=root_id())

    assert list(caught.value.errors) == ["password"]


# --- the bootstrap distributor -------------------------------------------------------------


def test_the_bootstrap_distributor_is_created_once(tmp_path: Path, clock: Clock) -> None:
    settings = {"bootstrap_distributor": ":".join(ROOT)}
    first = open_accounts(tmp_path, clock, **settings)
    first.close()

    again = open_accounts(tmp_path, clock, **settings)
    try:
        assert published_types(again) == ["PortalAccountCreated"]
        assert again.app.ensure_distributor(*ROOT) == root_id()
        assert again.app.max_position() == 1
        assert again.app.login(*ROOT)["account_id"] == root_id()
    finally:
        again.close()


def test_a_bootstrap_name_held_by_an_installer_is_refused(app: AccountsApplication) -> None:
    create_installer(app, "luna")

    with pytest.raises(Conflict):
        app.ensure_distributor("luna", "another-password")


def test_bootstrap_settings_are_parsed() -> None:
    assert parse_bootstrap_distributor("root:pass:word") == ("root", "pass:word")
    with pytest.raises(ValueError):
        parse_bootstrap_distributor("root")
    assert credentials_from_env({"CONCIERGE_PASSWORD_HASH": "fast"}) is not None
    with pytest.raises(ValueError):
        credentials_from_env({"CONCIERGE_PASSWORD_HASH": "md5"})


def test_no_bootstrap_distributor_unless_configured(tmp_path: Path, clock: Clock) -> None:
    opened = open_accounts(tmp_path, clock)
    try:
        assert opened.app.max_position() == 0
        with pytest.raises(Unauthorized):
            opened.app.login(*ROOT)
    finally:
        opened.close()

