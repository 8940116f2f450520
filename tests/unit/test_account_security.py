# ruff: noqa: F811 - the fixtures imported below are the parameters of the tests
"""An account's own security: its password changed with the current one (every other session
ends), logging out everywhere, and what it sees of itself."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from concierge import context
from contracts.accounts import LOGIN_LIMITS, RESET_LIMITS
from contracts.errors import Forbidden, Invalid, TooManyAttempts, Unauthorized
from services.accounts.application import AccountsApplication
from tests.unit.test_accounts_application import (  # noqa: F401 - fixtures and helpers
    app,
    clock,
    create_installer,
    wiring,
)
from tests.unit.test_sub_installers_application import new_sub


def signed_in(app: AccountsApplication, token: str) -> Any:
    """The call context the gateway makes for this token's holder."""
    principal = app.authenticate(token)
    return context.acting({"actor": f"{principal['role']}:{principal['username']}",
                           "role": principal["role"], "account_id": principal["account_id"],
                           "installer_id": principal["installer_id"],
                           "client_address": "10.0.0.1"})


def test_a_changed_password_ends_every_other_session(app: AccountsApplication) -> None:
    create_installer(app)
    tokens = [app.login("luna", "luna-password")["token"] for _ in range(3)]
    with signed_in(app, tokens[0]):
        app.change_password(tokens[0], {"current_password": "luna-password",
                                        "new_password": "a-new-password"})
    assert app.authenticate(tokens[0])["username"] == "luna"
    for token in tokens[1:]:
        with pytest.raises(Unauthorized):
            app.authenticate(token)
    with pytest.raises(Unauthorized):
        app.login("luna", "luna-password")
    assert app.login("luna", "a-new-password")["role"] == "installer"


def test_a_wrong_current_password_names_the_field_and_counts_as_a_failed_login(
        app: AccountsApplication) -> None:
    create_installer(app)
    token = app.login("luna", "luna-password")["token"]
    with signed_in(app, token):
        for _ in range(LOGIN_LIMITS["pair"]):
            with pytest.raises(Invalid) as caught:
                app.change_password(token, {"current_password": "guess",
                                            "new_password": "a-new-password"})
            assert list(caught.value.errors) == ["current_password"]
        with pytest.raises(TooManyAttempts):
            app.change_password(token, {"current_password": "luna-password",
                                        "new_password": "a-new-password"})
        with pytest.raises(Invalid) as caught:
            app.change_password(token, {"current_password": "luna-password",
                                        "new_password": "short"})
        assert list(caught.value.errors) == ["new_password"]


def test_the_new_password_must_differ(app: AccountsApplication) -> None:
    create_installer(app)
    token = app.login("luna", "luna-password")["token"]
    with signed_in(app, token), pytest.raises(Invalid) as caught:
        app.change_password(token, {"current_password": "luna-password",
                                    "new_password": "luna-password"})
    assert list(caught.value.errors) == ["new_password"]


def test_a_sub_installer_s_own_password_ends_its_emailed_one(app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    sub_id, password = new_sub(app, installer_id)
    token = app.login("lin", password)["token"]
    with signed_in(app, token):
        app.change_password(token, {"current_password": password,
                                    "new_password": "lin-own-password"})
    assert app.reveal_password(sub_id, 1) is None
    assert app.login("lin", "lin-own-password")["role"] == "sub_installer"


def test_logging_out_everywhere_ends_every_session(app: AccountsApplication) -> None:
    create_installer(app)
    tokens = [app.login("luna", "luna-password")["token"] for _ in range(3)]
    other = app.login("root", "root-password")["token"]
    with signed_in(app, tokens[1]):
        assert app.logout_everywhere() == 3
        assert app.logout_everywhere() == 0
    for token in tokens:
        with pytest.raises(Unauthorized):
            app.authenticate(token)
    assert app.authenticate(other)["username"] == "root"  # another account's is kept


def test_an_account_sees_itself(app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    sub_id, password = new_sub(app, installer_id)
    with signed_in(app, app.login("lin", password)["token"]):
        assert app.account() == {"id": sub_id, "username": "lin", "role": "sub_installer",
                                 "email": "lin@example.com", "phone": "123",
                                 "installer_id": installer_id, "two_factor": False}
    with context.acting({"role": "installer", "account_id": "not-an-id"}), \
            pytest.raises(Unauthorized):
        app.account()


# --- a forgotten password ------------------------------------------------------------------------


def ask_link(app: AccountsApplication, username: str, address: str = "10.0.0.1") -> None:
    with context.acting({"client_address": address}):
        app.forgot_password({"username": username})


def reset(app: AccountsApplication, token: str, password: str = "brand-new-pw") -> None:
    with context.acting({"client_address": "10.0.0.1"}):
        app.reset_password({"token": token, "new_password": password})


def test_a_forgotten_password_s_link_works_once(wiring: Any, app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    tokens = [app.login("luna", "luna-password")["token"] for _ in range(2)]
    ask_link(app, "LUNA")
    assert wiring.read_log(0, 1000)[-1]["type"] == "PasswordResetRequested"
    link = app.reveal_secret("reset_link", installer_id, 1)
    assert link is not None and link.startswith(f"{installer_id}.")
    assert app.login("luna", "luna-password")  # nothing changes until the link is used
    reset(app, link)
    for token in tokens:
        with pytest.raises(Unauthorized):
            app.authenticate(token)
    with pytest.raises(Unauthorized):
        app.login("luna", "luna-password")
    assert app.login("luna", "brand-new-pw")["role"] == "installer"
    with pytest.raises(Invalid) as caught:
        reset(app, link, "another-new-pw")
    assert list(caught.value.errors) == ["token"]
    assert app.reveal_secret("reset_link", installer_id, 1) is None  # spent: nothing to email


def test_an_unknown_username_is_answered_alike_and_records_nothing(
        wiring: Any, app: AccountsApplication) -> None:
    create_installer(app)
    before = len(wiring.read_log(0, 1000))
    ask_link(app, "nobody")
    assert len(wiring.read_log(0, 1000)) == before


def test_a_link_expires_after_an_hour_and_a_new_one_replaces_it(
        app: AccountsApplication, clock: Any) -> None:
    installer_id = create_installer(app)
    ask_link(app, "luna")
    first = app.reveal_secret("reset_link", installer_id, 1)
    ask_link(app, "luna")
    second = app.reveal_secret("reset_link", installer_id, 2)
    assert first and second and first != second
    assert app.reveal_secret("reset_link", installer_id, 1) is None
    with pytest.raises(Invalid):
        reset(app, first)
    clock.now += timedelta(hours=1)
    assert app.reveal_secret("reset_link", installer_id, 2) is None
    with pytest.raises(Invalid):
        reset(app, second)
    assert app.login("luna", "luna-password")


def test_links_are_limited_per_username_alike_for_unknown_ones(app: AccountsApplication) -> None:
    create_installer(app)
    for username in ("luna", "nobody"):
        for n in range(RESET_LIMITS["user"]):
            ask_link(app, username, f"10.0.{n}.1")
        with pytest.raises(TooManyAttempts):
            ask_link(app, username, "10.0.9.9")


def test_made_up_tokens_are_refused_naming_the_token(app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    ask_link(app, "luna")
    for token in ("garbage", f"{installer_id}.guess", f"{installer_id}.", ".x",
                  "00000000-0000-0000-0000-000000000000.x"):
        with pytest.raises(Invalid) as caught:
            reset(app, token)
        assert list(caught.value.errors) == ["token"]
    link = app.reveal_secret("reset_link", installer_id, 1)
    assert link is not None
    reset(app, link)  # the real one still works after the guesses


# --- email two-factor login ----------------------------------------------------------------------


def two_factor_on(app: AccountsApplication) -> str:
    installer_id = create_installer(app)
    token = app.login("luna", "luna-password")["token"]
    with signed_in(app, token):
        assert app.set_own_two_factor({"two_factor": True})["two_factor"] is True
    return installer_id


def verify(app: AccountsApplication, challenge: str, code: str) -> dict[str, Any]:
    with context.acting({"client_address": "10.0.0.1"}):
        return app.verify_login({"challenge": challenge, "code": code})


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_a_login_with_two_factor_opens_only_with_the_emailed_code(
        wiring: Any, app: AccountsApplication) -> None:
    installer_id = two_factor_on(app)
    answer = app.login("luna", "luna-password")
    assert answer["token"] is None
    challenge = answer["two_factor"]
    assert challenge["sent_to"] == "l***@example.com"
    assert wiring.read_log(0, 1000)[-1]["type"] == "LoginChallenged"
    code = app.reveal_secret("login_code", installer_id, 1)
    assert code is not None and len(code) == 6 and code.isdigit()
    assert code not in str(wiring.read_log(0, 1000))
    session = verify(app, challenge["challenge"], code)
    assert app.authenticate(session["token"])["username"] == "luna"
    with pytest.raises(Unauthorized):  # spent
        verify(app, challenge["challenge"], code)
    assert app.reveal_secret("login_code", installer_id, 1) is None


def test_five_wrong_codes_end_the_challenge(app: AccountsApplication) -> None:
    installer_id = two_factor_on(app)
    challenge = app.login("luna", "luna-password")["two_factor"]["challenge"]
    code = app.reveal_secret("login_code", installer_id, 1)
    assert code is not None
    for _ in range(4):
        with pytest.raises(Unauthorized):
            verify(app, challenge, wrong(code))
    with pytest.raises(Unauthorized):
        verify(app, challenge, wrong(code))  # the fifth
    with pytest.raises((Unauthorized, TooManyAttempts)):
        verify(app, challenge, code)  # the right one is too late


def test_a_code_expires_and_a_new_login_replaces_it(app: AccountsApplication,
                                                    clock: Any) -> None:
    installer_id = two_factor_on(app)
    first = app.login("luna", "luna-password")["two_factor"]["challenge"]
    first_code = app.reveal_secret("login_code", installer_id, 1)
    second = app.login("luna", "luna-password")["two_factor"]["challenge"]
    second_code = app.reveal_secret("login_code", installer_id, 2)
    assert first_code and second_code
    with pytest.raises(Unauthorized):
        verify(app, first, first_code)
    clock.now += timedelta(minutes=10)
    with pytest.raises(Unauthorized):
        verify(app, second, second_code)
    for bad in ({"challenge": second, "code": "12345"}, {"challenge": second},
                {"challenge": second, "code": "abcdef"}):
        with pytest.raises(Invalid):
            app.verify_login(bad)


def test_a_property_manager_s_two_factor_is_its_installer_s_choice(
        app: AccountsApplication) -> None:
    from tests.unit.test_property_managers_application import SEASIDE

    installer_id = create_installer(app)
    app.unknown_communities = lambda ids: []
    from tests.unit.test_sub_installers_application import as_installer

    with as_installer(installer_id):
        manager = app.create_property_manager({
            "first_name": "Pat", "last_name": "Lee", "email": "pat@example.com",
            "two_factor": True, "communities": [{"community_id": SEASIDE}]})
    password = app.reveal_password(manager["id"], 1)
    assert password is not None
    answer = app.login("pat@example.com", password)
    assert answer["token"] is None and answer["two_factor"]["sent_to"] == "p***@example.com"


# --- the installer's settings (manual "Setting") -------------------------------------------------


def test_an_installer_keeps_its_settings_part_by_part(app: AccountsApplication) -> None:
    installer_id = create_installer(app)
    token = app.login("luna", "luna-password")["token"]
    with signed_in(app, token):
        settings = app.installer_settings()
        assert (settings["time_zone"], settings["allow_distributor_access"],
                settings["notifications"]) == ("UTC", False, True)
        app.edit_installer_settings({"time_zone": "Europe/Paris", "billing": {
            "company": "Luna Ltd", "attn": "Luna", "tel": "5550100"}})
        changed = app.edit_installer_settings({"billing": {"fax": "5550101"},
                                               "customer_service": {"receive_feedback": True}})
        assert changed["time_zone"] == "Europe/Paris"
        assert changed["billing"] == {"company": "Luna Ltd", "attn": "Luna", "address": None,
                                      "tel": "5550100", "fax": "5550101", "email": None}
        assert changed["customer_service"]["receive_feedback"] is True
        for bad, field in (({"time_zone": "Mars/Base"}, "time_zone"),
                           ({"billing": {"email": "nope"}}, "billing"),
                           ({"notification_email": "x@"}, "notification_email")):
            with pytest.raises(Invalid) as caught:
                app.edit_installer_settings(bad)
            assert list(caught.value.errors) == [field]
    assert app.reveal_password(installer_id, 1) is None  # nothing to do with settings
    from tests.unit.test_sub_installers_application import new_sub

    _, password = new_sub(app, installer_id)
    with signed_in(app, app.login("lin", password)["token"]), pytest.raises(Forbidden):
        app.installer_settings()  # the main account's alone
