"""A password the platform makes reaches its owner by email once, and nowhere else: accounts
seals it, notify queues the email with a mark in its place, and the mailer asks accounts for it
as it sends. Real stores (SQLite) and the real mail folder; the bus is the test reading accounts'
log into notify's policy, and the mailer's RPC to accounts is a direct call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from concierge import context
from concierge.config import Settings
from concierge.locks import FileLock
from concierge.subscription import Subscription
from services.accounts.application import AccountsApplication
from services.accounts.declaration import CONTEXT as ACCOUNTS
from services.accounts.domain import PortalAccount
from services.accounts.security import Credentials
from services.notify.application import NotifyApplication
from services.notify.declaration import CONTEXT as NOTIFY
from services.notify.domain import SECRET_GONE, SECRET_MARK
from services.notify.mailer import Mailer, MailFolderSender
from tests.integration.test_notify_service import accounts_policy, bodies, read_eml


class Side:
    """Accounts and notify on one data folder, and the mailer between them."""

    def __init__(self, data_dir: Path) -> None:
        self.settings = Settings(data_dir=data_dir, bootstrap_distributor="root:root-password")
        self.accounts = ACCOUNTS.wire(self.settings, credentials=Credentials.cheap())
        self.notify = NOTIFY.wire(self.settings)
        self.reachable = True
        self.subscription = Subscription("accounts", accounts_policy(self.notify),
                                         lambda _s, after, limit:
                                         self.accounts.read_log(after, limit))
        self.sender = MailFolderSender(data_dir / "mail")
        self.mailer = Mailer(self.notify_app, self.sender, FileLock(data_dir / "mailer.lock"),
                             "SmartPlus <no-reply@smartplus.example>",
                             refresh=self.notify.catch_up_local, reveal=self.reveal)

    @property
    def accounts_app(self) -> AccountsApplication:
        assert isinstance(self.accounts.app, AccountsApplication)
        return self.accounts.app

    @property
    def notify_app(self) -> NotifyApplication:
        assert isinstance(self.notify.app, NotifyApplication)
        return self.notify.app

    def reveal(self, secret: dict[str, Any]) -> str | None:
        if not self.reachable:
            raise ConnectionError("accounts is down")
        return self.accounts_app.reveal_secret(secret["kind"], secret["account_id"],
                                               int(secret["issue"]))

    def deliver_and_send(self) -> int:
        self.subscription.catch_up()
        return self.mailer.send_due()

    def close(self) -> None:
        self.notify.close()
        self.accounts.close()


@pytest.fixture
def side(data_dir: Path) -> Iterator[Side]:
    opened = Side(data_dir)
    yield opened
    opened.close()


def an_installer(side: Side) -> str:
    root = str(PortalAccount.id_for_username("root"))
    with context.acting({"actor": "distributor:root", "role": "distributor"}):
        return side.accounts_app.create_installer(
            {"username": "luna", "password": "luna-password", "email": "luna@example.com"},
            distributor_id=root)


def as_installer(installer_id: str) -> Any:
    return context.acting({"actor": "installer:luna", "role": "installer",
                           "account_id": installer_id, "installer_id": installer_id})


def new_sub(side: Side, installer_id: str) -> str:
    with as_installer(installer_id):
        return side.accounts_app.create_sub_installer(
            {"username": "lin", "email": "lin@example.com"})["id"]


def sent(side: Side) -> list[tuple[str, str, str]]:
    """(recipient, text, html) of every email in the mail folder."""
    folder = side.settings.data_dir / "mail"
    found = []
    for path in sorted(folder.glob("*.eml")) if folder.exists() else []:
        message = read_eml(path)
        found.append((message["To"], *bodies(message)))
    return found


def notify_store_text(side: Side) -> str:
    """Everything notify's store holds, as text (its events, bodies included)."""
    app = side.notify_app
    return json.dumps([record.state for record in app.iter_log()], default=str)


def test_the_welcome_email_carries_the_password_that_logs_in(side: Side) -> None:
    installer_id = an_installer(side)
    sub_id = new_sub(side, installer_id)
    password = side.accounts_app.reveal_password(sub_id, 1)
    assert password is not None
    assert side.deliver_and_send() == 1
    [(to, text, html)] = sent(side)
    assert to == "lin@example.com"
    assert f"Password: {password}" in text and password in html and SECRET_MARK not in text
    assert "Installer luna has created" in text
    stored = notify_store_text(side)
    assert SECRET_MARK in stored and password not in stored
    assert side.accounts_app.login("lin", password)["role"] == "sub_installer"
    # Delivered again (a redelivery, a replay): no second email.
    side.subscription.catch_up()
    Subscription("accounts", accounts_policy(side.notify),
                 lambda _s, after, limit: side.accounts.read_log(after, limit)).catch_up()
    assert side.mailer.send_due() == 0
    assert len(sent(side)) == 1


def test_an_email_whose_password_was_replaced_before_it_went_is_cancelled(side: Side) -> None:
    installer_id = an_installer(side)
    sub_id = new_sub(side, installer_id)
    side.subscription.catch_up()  # the welcome email is queued, not yet sent
    with as_installer(installer_id):
        side.accounts_app.reset_sub_installer_password(sub_id)
    new_password = side.accounts_app.reveal_password(sub_id, 2)
    assert side.deliver_and_send() == 2
    [(_, text, _)] = sent(side)  # only the reset's email went out
    assert f"Password: {new_password}" in text and "was reset" in text
    cancelled = [e for e in side.notify_app.list_emails({})["items"]
                 if e["status"] == "cancelled"]
    assert len(cancelled) == 1
    email = side.notify_app.email(cancelled[0]["id"])
    assert email.cancel_reason == SECRET_GONE


def test_accounts_down_when_the_mailer_sends_is_a_retry_not_a_loss(side: Side) -> None:
    installer_id = an_installer(side)
    sub_id = new_sub(side, installer_id)
    side.reachable = False
    assert side.deliver_and_send() == 1
    [queued] = side.notify_app.list_emails({})["items"]
    assert queued["status"] == "retrying" and sent(side) == []
    side.reachable = True
    email = side.notify_app.email(queued["id"])
    side.mailer.clock = lambda: email.retry_at  # the back-off has passed
    assert side.mailer.send_due() == 1
    [(_, text, _)] = sent(side)
    assert f"Password: {side.accounts_app.reveal_password(sub_id, 1)}" in text


def test_a_deleted_sub_installer_s_pending_email_is_never_sent(side: Side) -> None:
    installer_id = an_installer(side)
    sub_id = new_sub(side, installer_id)
    with as_installer(installer_id):
        side.accounts_app.delete_sub_installer(sub_id)
    assert side.deliver_and_send() == 1
    assert sent(side) == []
    [email] = side.notify_app.list_emails({})["items"]
    assert email["status"] == "cancelled"


def test_a_forgotten_password_s_email_carries_a_link_that_works_once(side: Side) -> None:
    installer_id = an_installer(side)
    with context.acting({"client_address": "10.0.0.1"}):
        side.accounts_app.forgot_password({"username": "luna"})
    assert side.deliver_and_send() == 1
    [(to, text, html)] = sent(side)
    assert to == "luna@example.com"
    [link] = [line.strip() for line in text.splitlines() if "/reset-password?token=" in line]
    assert link.startswith(side.notify_app.portal_url) and SECRET_MARK not in link
    token = link.partition("token=")[2]
    assert token.startswith(installer_id) and token in html
    assert token not in notify_store_text(side)
    with context.acting({"client_address": "10.0.0.1"}):
        side.accounts_app.reset_password({"token": token, "new_password": "brand-new-pw"})
    assert side.accounts_app.login("luna", "brand-new-pw")["role"] == "installer"


def test_a_link_asked_for_again_before_it_went_is_not_sent(side: Side) -> None:
    an_installer(side)
    with context.acting({"client_address": "10.0.0.1"}):
        side.accounts_app.forgot_password({"username": "luna"})
        side.subscription.catch_up()
        side.accounts_app.forgot_password({"username": "luna"})
    assert side.deliver_and_send() == 2
    assert len(sent(side)) == 1  # the first link was replaced: its email is cancelled
    statuses = sorted(e["status"] for e in side.notify_app.list_emails({})["items"])
    assert statuses == ["cancelled", "sent"]


def test_a_login_code_goes_by_email_and_opens_the_session(side: Side) -> None:
    installer_id = an_installer(side)
    side.accounts_app._change(PortalAccount.id_for_username("luna"),
                              lambda account: account.set_two_factor(True))
    answer = side.accounts_app.login("luna", "luna-password")
    challenge = answer["two_factor"]["challenge"]
    assert side.deliver_and_send() == 1
    [(to, text, _)] = sent(side)
    assert to == "luna@example.com" and "login code" in text
    [code] = [line.strip() for line in text.splitlines() if line.strip().isdigit()]
    assert code not in notify_store_text(side)
    with context.acting({"client_address": "10.0.0.1"}):
        session = side.accounts_app.verify_login({"challenge": challenge, "code": code})
    assert side.accounts_app.authenticate(session["token"])["account_id"] == installer_id
