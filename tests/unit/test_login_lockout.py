# ruff: noqa: F811 - the fixtures imported below are the parameters of the tests
"""Failed logins lock a username, an address, or the two together, for every replica (the counts
are in accounts' database); a lockout is the same for a username that does not exist."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from concierge import context
from contracts.accounts import LOCKOUT_SECONDS, LOGIN_LIMITS
from contracts.errors import TooManyAttempts, Unauthorized
from services.accounts.application import AccountsApplication
from services.accounts.declaration import parse_login_limits
from tests.unit.test_accounts_application import (  # noqa: F401 - fixtures and helpers
    Clock,
    app,
    clock,
    create_installer,
    wiring,
)


def attempt(app: AccountsApplication, username: str, password: str,
            address: str = "10.0.0.1") -> str:
    """What a login from `address` answers: ok, 401 or 429."""
    with context.acting({"client_address": address}):
        try:
            app.login(username, password)
        except Unauthorized:
            return "401"
        except TooManyAttempts:
            return "429"
    return "ok"


def fail(app: AccountsApplication, username: str, times: int, address: str = "10.0.0.1"
         ) -> list[str]:
    return [attempt(app, username, "wrong-password", address) for _ in range(times)]


def test_five_wrong_passwords_from_one_address_lock_that_pair(app: AccountsApplication,
                                                              clock: Clock) -> None:
    create_installer(app)
    assert fail(app, "luna", LOGIN_LIMITS["pair"]) == ["401"] * LOGIN_LIMITS["pair"]
    assert attempt(app, "luna", "luna-password") == "429"  # the right one is not checked
    assert attempt(app, "LUNA", "luna-password") == "429"  # usernames are case-insensitive
    assert attempt(app, "luna", "luna-password", "10.0.0.2") == "ok"  # elsewhere, it works
    clock.now += timedelta(seconds=LOCKOUT_SECONDS - 1)
    assert attempt(app, "luna", "luna-password") == "429"
    clock.now += timedelta(seconds=1)
    assert attempt(app, "luna", "luna-password") == "ok"


def test_an_unknown_username_is_locked_out_exactly_like_a_real_one(
        app: AccountsApplication) -> None:
    create_installer(app)
    real = fail(app, "luna", LOGIN_LIMITS["pair"] + 2)
    unknown = fail(app, "nobody", LOGIN_LIMITS["pair"] + 2)
    assert real == unknown == ["401"] * LOGIN_LIMITS["pair"] + ["429", "429"]


def test_a_username_guessed_at_from_many_addresses_is_locked_everywhere(
        app: AccountsApplication) -> None:
    create_installer(app)
    answers = [attempt(app, "luna", "wrong-password", f"10.1.0.{n}")
               for n in range(LOGIN_LIMITS["user"])]
    assert answers == ["401"] * LOGIN_LIMITS["user"]
    assert attempt(app, "luna", "luna-password", "10.9.9.9") == "429"


def test_an_address_spraying_usernames_is_locked_for_all_of_them(
        app: AccountsApplication) -> None:
    create_installer(app)
    answers = [attempt(app, f"user{n}", "wrong-password") for n in range(LOGIN_LIMITS["addr"])]
    assert answers == ["401"] * LOGIN_LIMITS["addr"]
    assert attempt(app, "luna", "luna-password") == "429"
    assert attempt(app, "luna", "luna-password", "10.0.0.2") == "ok"


def test_a_good_login_starts_the_username_s_count_again(app: AccountsApplication) -> None:
    create_installer(app)
    below = LOGIN_LIMITS["pair"] - 1
    assert fail(app, "luna", below) == ["401"] * below
    assert attempt(app, "luna", "luna-password") == "ok"
    assert fail(app, "luna", below) == ["401"] * below
    assert attempt(app, "luna", "luna-password") == "ok"


def test_a_locked_out_login_costs_no_hash(app: AccountsApplication,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    create_installer(app)
    fail(app, "luna", LOGIN_LIMITS["pair"])
    checked: list[Any] = []
    monkeypatch.setattr(app.credentials, "verify_password",
                        lambda *args: checked.append(args) or True)
    assert attempt(app, "luna", "luna-password") == "429"
    assert checked == []


def test_the_limits_can_be_set_and_are_checked() -> None:
    assert parse_login_limits("") == LOGIN_LIMITS
    assert parse_login_limits("addr=1000, pair=3") == {**LOGIN_LIMITS, "addr": 1000,
                                                       "pair": 3}
    for bad in ("addr", "addr=0", "addr=x", "ip=5", "pair=-1"):
        with pytest.raises(ValueError):
            parse_login_limits(bad)


def test_the_client_behind_trusted_proxies_is_the_address_that_many_hops_back() -> None:
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    from services.gateway.http import client_address

    def request(forwarded: str | None) -> Request:
        headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
        return Request(EnvironBuilder(headers=headers,
                                      environ_base={"REMOTE_ADDR": "10.9.0.1"}).get_environ())

    spoofed = request("6.6.6.6, 203.0.113.7, 10.0.0.5")  # the client wrote 6.6.6.6 itself
    assert client_address(spoofed, 0) == "10.9.0.1"
    assert client_address(spoofed, 1) == "10.0.0.5"
    assert client_address(spoofed, 2) == "203.0.113.7"
    assert client_address(request(None), 1) == "10.9.0.1"  # no header: the peer
    assert client_address(request("10.0.0.5"), 2) == "10.9.0.1"  # fewer hops than proxies
