"""Notify domain and rendering: emails from queued to sent, given up or cancelled, the activation
policy and the close of a master account.

No I/O: the application runs on the eventsourcing in-memory store. Each test reads given / when /
then; pending events are read with `collect_events()`.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from contracts import notify as contract
from contracts.errors import Conflict, Invalid
from services.notify import domain
from services.notify.application import ACTIVATION, EmailsViewBehind, NotifyApplication
from services.notify.declaration import CONTEXT as NOTIFY
from services.notify.domain import Email, activation_account, activation_due, activation_key
from services.notify.mailer import compose

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def event_names(aggregate: Any) -> list[str]:
    return [type(e).__name__ for e in aggregate.collect_events()]


def an_email(**changes: Any) -> Email:
    values: dict[str, Any] = {
        "cause_event_id": uuid4(),
        "template": "activation",
        "recipient": "judy@example.com",
        "subject": "Activate your SmartPlus account",
        "text": "Hello Judy",
        "html": "<p>Hello Judy</p>",
        "apartment_id": uuid4(),
        "installer_id": uuid4(),
    }
    email_ = Email.queue(**(values | changes))
    email_.collect_events()
    return email_


@pytest.fixture
def app() -> Iterator[NotifyApplication]:
    application = NotifyApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield application
    application.close()


def master_account_created(email_: str | None = "judy@example.com", first_name: str = "Judy",
                           last_name: str = "A", type_: str = "MasterAccountCreated"
                           ) -> dict[str, Any]:
    return {
        "event_id": str(uuid4()), "type": type_, "version": 1, "source": "accounts",
        "stream_id": str(uuid4()), "stream_version": 1, "position": 1,
        "occurred_at": NOW.isoformat(), "actor": "installer:luna", "correlation_id": "req-1",
        "data": {"apartment_id": str(uuid4()), "community_id": str(uuid4()),
                 "installer_id": str(uuid4()), "first_name": first_name,
                 "last_name": last_name, "email": email_},
    }


def contact_changed(account: dict[str, Any], address: str | None,
                    previous: str | None = None, app_status: str | None = "unregistered",
                    resets: int | None = 0, first_name: str = "Judy") -> dict[str, Any]:
    """A MasterAccountContactChanged of the same account as `account` (a created envelope)."""
    ids = account["data"]
    data: dict[str, Any] = {"first_name": first_name, "last_name": "A", "email": address,
                            "previous_email": previous, "apartment_id": ids["apartment_id"],
                            "installer_id": ids["installer_id"], "app_status": app_status,
                            "resets": resets}
    return dict(account, event_id=str(uuid4()), type="MasterAccountContactChanged",
                stream_version=account["stream_version"] + 1, data=data)


def queued_ids(app: NotifyApplication, *envelopes: dict[str, Any]) -> list[UUID]:
    """Deliver each envelope to the policy, saving what it queues; the ids of the new emails."""
    ids = []
    for envelope in envelopes:
        emails = app.on_accounts_event(envelope)
        app.record(*emails)
        ids += [e.id for e in emails]
    return ids


# --- queueing --------------------------------------------------------------------------------


def test_an_email_is_queued_with_its_rendered_message() -> None:
    cause, apartment = uuid4(), uuid4()

    queued = Email.queue(cause_event_id=cause, template="activation", recipient="judy@example.com",
                         subject="Hi", text="Hello", html="<p>Hello</p>", apartment_id=apartment)

    [event] = queued.collect_events()
    assert type(event).__name__ == "EmailQueued"
    assert (event.cause_event_id, event.template, event.recipient, event.subject, event.text,
            event.html, event.apartment_id, event.installer_id) == (
        cause, "activation", "judy@example.com", "Hi", "Hello", "<p>Hello</p>", apartment, None)
    assert queued.status == domain.QUEUED
    assert queued.is_due(NOW)


def test_one_cause_and_template_have_one_email_id() -> None:
    cause = uuid4()

    queued = an_email(cause_event_id=cause)

    assert queued.id == Email.create_id(cause, "activation") == Email.create_id(str(cause),
                                                                                 "activation")
    assert Email.create_id(cause, "activation") != Email.create_id(cause, "renewal")
    assert Email.create_id(cause, "activation") != Email.create_id(uuid4(), "activation")
    # Fixed namespace: the id survives restarts, replicas and replays.
    cause = UUID("00000000-0000-4000-8000-000000000001")
    assert Email.create_id(cause, "activation") == UUID("50b5d74c-b922-58df-bd8e-e80d4ed83b1a")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"recipient": "no-at-sign"}, "recipient"),
        ({"recipient": "judy@example.com\nBcc: x@example.com"}, "recipient"),
        ({"recipient": None}, "recipient"),
        ({"subject": ""}, "subject"),
        ({"subject": "Hi\r\nBcc: x@example.com"}, "subject"),
        ({"subject": "x" * 256}, "subject"),
        ({"text": " "}, "text"),
        ({"html": ""}, "html"),
        ({"template": "Not A Name"}, "template"),
        ({"cause_event_id": "not-a-uuid"}, "cause_event_id"),
    ],
)
def test_an_email_that_cannot_be_sent_is_not_queued(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as caught:
        an_email(**changes)

    assert list(caught.value.errors) == [field]


# --- delivery --------------------------------------------------------------------------------


def test_a_sent_email_records_when_and_how() -> None:
    queued = an_email()

    queued.mark_sent(NOW, "smtp")

    [event] = queued.collect_events()
    assert type(event).__name__ == "EmailSent"
    assert (event.sent_at, event.transport) == (NOW, "smtp")
    assert queued.status == domain.SENT
    assert not queued.pending
    assert not queued.is_due(NOW)


def test_a_second_report_of_the_same_delivery_records_nothing() -> None:
    queued = an_email()
    queued.mark_sent(NOW, "smtp")
    queued.collect_events()

    queued.mark_sent(NOW + timedelta(seconds=5), "smtp")

    assert event_names(queued) == []
    assert queued.sent_at == NOW


def test_a_failed_attempt_is_retried_after_a_growing_back_off() -> None:
    queued = an_email()

    queued.mark_failed("connection refused", NOW)
    [first] = queued.collect_events()
    queued.mark_failed("connection refused", NOW + timedelta(minutes=1))
    [second] = queued.collect_events()

    assert type(first).__name__ == "EmailFailed"
    assert (first.reason, first.attempts, first.retry_at, first.gave_up) == (
        "connection refused", 1, NOW + timedelta(minutes=1), False)
    assert (second.attempts, second.retry_at) == (2, NOW + timedelta(minutes=3))
    assert queued.status == domain.RETRYING
    assert not queued.is_due(NOW + timedelta(minutes=2))
    assert queued.is_due(NOW + timedelta(minutes=3))


def test_the_back_off_doubles_up_to_an_hour() -> None:
    delays = [domain.retry_delay(n) for n in range(1, 10)]

    assert delays[:4] == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert max(delays) == domain.LONGEST_WAIT == timedelta(hours=1)


def test_an_email_is_given_up_after_the_retry_limit() -> None:
    queued = an_email()
    at = NOW
    for _ in range(domain.MAX_ATTEMPTS - 1):
        queued.mark_failed("451 try later", at)
        at += timedelta(hours=1)
    queued.collect_events()

    queued.mark_failed("451 try later", at)

    [last] = queued.collect_events()
    assert (last.attempts, last.gave_up, last.retry_at) == (domain.MAX_ATTEMPTS, True, None)
    assert queued.status == domain.FAILED
    assert not queued.is_due(at + timedelta(days=1))
    with pytest.raises(Conflict):
        queued.mark_failed("again", at)


def test_a_permanent_failure_gives_up_at_once() -> None:
    queued = an_email()

    queued.mark_failed("550 no such user", NOW, permanent=True)

    [event] = queued.collect_events()
    assert (event.attempts, event.gave_up, event.retry_at) == (1, True, None)
    assert queued.status == domain.FAILED


def test_a_sent_email_cannot_fail_afterwards() -> None:
    queued = an_email()
    queued.mark_sent(NOW, "mail-folder")

    with pytest.raises(Conflict):
        queued.mark_failed("late report", NOW)


def test_a_long_failure_reason_is_cut() -> None:
    queued = an_email()

    queued.mark_failed("x" * 2000, NOW)

    assert len(queued.last_error or "") == domain.REASON_MAX


@pytest.mark.parametrize("when", [datetime(2025, 1, 1, 12, 0), "2025-01-01T12:00:00+00:00", None])
def test_delivery_times_carry_their_zone(when: Any) -> None:
    queued = an_email()

    with pytest.raises(Invalid):
        queued.mark_sent(when, "smtp")
    with pytest.raises(Invalid):
        queued.mark_failed("down", when)


def test_domain_values_match_the_contract() -> None:
    assert domain.STATUSES == contract.STATUSES


def a_push(deadline: datetime = NOW + timedelta(hours=1)) -> domain.DevicePush:
    return domain.DevicePush(command_id="c-1", device_id="d-1", mac="0C11050B9814",
                             kind="reboot", params={}, deadline=deadline.isoformat())


def test_every_email_and_push_event_has_a_contract_schema() -> None:
    queued = an_email()
    queued.mark_failed("down", NOW)
    queued.cancel(domain.ACCOUNT_CLOSED, NOW)
    sent = an_email()
    sent.mark_sent(NOW, "smtp")
    pushed, lapsed = a_push(), a_push()
    pushed.mark_sent(NOW)
    lapsed.mark_expired(NOW)

    names = {*event_names(queued), *event_names(sent), "EmailQueued", *event_names(pushed),
             *event_names(lapsed)}

    assert names == set(contract.EVENT_SCHEMAS)


# --- device pushes ---------------------------------------------------------------------------


def test_a_push_is_made_once_per_command() -> None:
    assert a_push().id == a_push().id == domain.DevicePush.create_id("c-1")
    assert domain.DevicePush.create_id("c-2") != a_push().id


def test_a_push_is_sent_or_expired_once_and_never_both() -> None:
    push = a_push()
    assert push.pending
    assert push.mark_sent(NOW) is True
    assert push.mark_sent(NOW) is False
    assert push.mark_expired(NOW) is False
    assert push.state == "sent"
    lapsed = a_push()
    assert lapsed.mark_expired(NOW) is True
    assert lapsed.mark_sent(NOW) is False
    assert lapsed.state == "expired"


def test_a_push_knows_the_seconds_left_before_its_deadline() -> None:
    push = a_push(NOW + timedelta(seconds=90))
    assert push.seconds_left(NOW) == 90
    assert push.seconds_left(NOW + timedelta(seconds=100)) == -10


# --- cancelling ------------------------------------------------------------------------------


def retrying_email() -> Email:
    queued = an_email()
    queued.mark_failed("connection refused", NOW)
    queued.collect_events()
    return queued


@pytest.mark.parametrize("pending", [an_email, retrying_email])
def test_a_pending_email_is_cancelled_and_never_due_again(pending: Any) -> None:
    waiting = pending()

    waiting.cancel(domain.ACCOUNT_CLOSED, NOW)

    [event] = waiting.collect_events()
    assert type(event).__name__ == "EmailCancelled"
    assert (event.reason, event.cancelled_at) == (domain.ACCOUNT_CLOSED, NOW)
    assert (waiting.status, waiting.cancelled_at, waiting.retry_at) == (domain.CANCELLED, NOW,
                                                                        None)
    assert not waiting.pending
    assert not waiting.is_due(NOW + timedelta(days=1))


def given_up() -> Email:
    queued = an_email()
    queued.mark_failed("550 no such user", NOW, permanent=True)
    return queued


def sent() -> Email:
    queued = an_email()
    queued.mark_sent(NOW, "smtp")
    return queued


def cancelled() -> Email:
    queued = an_email()
    queued.cancel(domain.ACCOUNT_CLOSED, NOW)
    return queued


@pytest.mark.parametrize(("settled", "status"), [(sent, domain.SENT), (given_up, domain.FAILED),
                                                 (cancelled, domain.CANCELLED)])
def test_cancelling_an_email_no_longer_pending_records_nothing(settled: Any, status: str) -> None:
    email_ = settled()
    email_.collect_events()

    email_.cancel(domain.ACCOUNT_CLOSED, NOW + timedelta(minutes=5))

    assert event_names(email_) == []
    assert email_.status == status


def test_a_cancel_needs_a_reason_and_a_zoned_time() -> None:
    queued = an_email()

    with pytest.raises(Invalid) as no_reason:
        queued.cancel(" ", NOW)
    with pytest.raises(Invalid) as naive:
        queued.cancel(domain.ACCOUNT_CLOSED, datetime(2025, 1, 1, 12, 0))

    assert list(no_reason.value.errors) == ["reason"]
    assert list(naive.value.errors) == ["cancelled_at"]
    assert queued.pending


def test_a_failed_attempt_reported_after_the_cancel_records_nothing() -> None:
    # The mailer's attempt raced the close: nothing is left to retry.
    queued = cancelled()
    queued.collect_events()

    queued.mark_failed("connection refused", NOW + timedelta(seconds=1))

    assert event_names(queued) == []
    assert (queued.status, queued.attempts) == (domain.CANCELLED, 0)


def test_a_delivery_reported_after_the_cancel_is_still_recorded() -> None:
    # The transport took the message before the cancel reached the mailer: the log says so.
    queued = cancelled()
    queued.collect_events()

    queued.mark_sent(NOW + timedelta(seconds=1), "smtp")

    assert event_names(queued) == ["EmailSent"]
    assert queued.status == domain.SENT


# --- the activation policy and rendering -----------------------------------------------------


def test_a_new_master_account_with_an_email_gets_an_activation_email(
        app: NotifyApplication) -> None:
    envelope = master_account_created(email_="judy@example.com")

    [queued] = app.on_accounts_event(envelope)

    key = activation_key(envelope["stream_id"], 0, "judy@example.com")
    assert queued.id == Email.create_id(envelope["event_id"], ACTIVATION, key)
    assert queued.idempotency_key == key
    assert (queued.recipient, queued.template, queued.subject) == (
        "judy@example.com", "activation", "Activate your SmartPlus account")
    assert str(queued.apartment_id) == envelope["data"]["apartment_id"]
    assert str(queued.installer_id) == envelope["data"]["installer_id"]
    assert str(queued.cause_event_id) == envelope["event_id"]


@pytest.mark.parametrize("address", [None, ""])
def test_a_master_account_without_email_gets_nothing(app: NotifyApplication,
                                                     address: str | None) -> None:
    assert app.on_accounts_event(master_account_created(email_=address)) == []


# A reset sends no email (manual: "the user is not going to receive the reset email") and
# cancels the activation emails still pending: tests/integration/test_notify_service.py.


def test_the_same_cause_queues_no_second_email(app: NotifyApplication) -> None:
    envelope = master_account_created()
    app.record(*app.on_accounts_event(envelope))

    assert app.on_accounts_event(envelope) == []
    assert app.on_accounts_event(dict(envelope, position=7)) == []


def test_an_event_that_breaks_its_contract_queues_nothing(app: NotifyApplication) -> None:
    # The chassis loads the data through the contract before the policy sees it (the policy
    # as notify declares it).
    envelope = master_account_created()
    del envelope["data"]["apartment_id"]

    NOTIFY.policies[0].bind("notify", app).apply(envelope)

    assert app.max_position() == 0  # no event recorded: no email queued


def test_an_activation_email_queued_before_keys_is_not_queued_again(
        app: NotifyApplication) -> None:
    # The first release derived the id from the cause; an operator's replay finds that one.
    envelope = master_account_created()
    app.record(Email.queue(cause_event_id=envelope["event_id"], template=ACTIVATION,
                           recipient="judy@example.com", subject="Hi", text="Hi", html="Hi"))

    assert app.on_accounts_event(envelope) == []


def test_an_activation_email_records_its_master_account(app: NotifyApplication) -> None:
    envelope = master_account_created()

    [queued] = app.on_accounts_event(envelope)

    assert str(queued.master_account_id) == envelope["stream_id"]
    assert str(queued.account) == envelope["stream_id"]


def test_an_activation_email_queued_before_accounts_were_recorded_names_one_by_its_key() -> None:
    account = uuid4()

    older = an_email(idempotency_key=activation_key(account, 2, "judy@example.com"))

    assert older.master_account_id is None
    assert older.account == account == activation_account(activation_key(account, 0, "a@b.co"))
    assert an_email().account is None  # no key: no account
    assert activation_account("renewal:x") is None
    assert activation_account("activation:not-a-uuid:0:a@b.co") is None


# --- activation when the email comes later -----------------------------------------------------


def test_an_email_added_later_gets_one_activation_email(app: NotifyApplication) -> None:
    created = master_account_created(email_=None)
    added = contact_changed(created, "judy@example.com")

    [queued] = app.on_accounts_event(added)

    assert (queued.recipient, queued.template, str(queued.cause_event_id)) == (
        "judy@example.com", ACTIVATION, added["event_id"])
    assert str(queued.apartment_id) == created["data"]["apartment_id"]
    assert queued.id == Email.create_id(
        added["event_id"], ACTIVATION, activation_key(created["stream_id"], 0, "judy@example.com"))


def test_a_replayed_or_repeated_edit_to_the_same_address_sends_nothing_new(
        app: NotifyApplication) -> None:
    created = master_account_created(email_=None)
    added = contact_changed(created, "judy@example.com")
    renamed = contact_changed(created, "judy@example.com", previous="judy@example.com",
                              first_name="Judith")
    removed_and_back = [contact_changed(created, None, previous="judy@example.com"),
                        contact_changed(created, "JUDY@example.com")]

    assert len(queued_ids(app, added)) == 1
    assert queued_ids(app, added, dict(added, position=9), renamed, *removed_and_back) == []


def test_another_address_while_unregistered_gets_its_own_activation_email(
        app: NotifyApplication) -> None:
    created = master_account_created(email_="judy@example.com")
    moved = contact_changed(created, "judy@work.example", previous="judy@example.com")
    back = contact_changed(created, "judy@example.com", previous="judy@work.example")

    first, second = queued_ids(app, created, moved)

    assert first != second
    assert app.email(second).recipient == "judy@work.example"
    assert queued_ids(app, back) == []  # the creation email already went to this address


def test_a_registered_account_gets_no_activation_email(app: NotifyApplication) -> None:
    created = master_account_created(email_=None)

    assert app.on_accounts_event(contact_changed(created, "judy@example.com",
                                                 app_status="registered")) == []


def test_after_a_reset_the_next_address_is_activated_even_if_known(
        app: NotifyApplication) -> None:
    # Manual: after a reset the app "needs to be re-initialized".
    created = master_account_created(email_="judy@example.com")
    again = contact_changed(created, "judy@example.com", resets=1)

    first, second = queued_ids(app, created, again)

    assert first != second
    assert queued_ids(app, again) == []


def test_a_contact_change_recorded_before_the_app_status_was_published_sends_nothing(
        app: NotifyApplication) -> None:
    created = master_account_created(email_=None)
    old = contact_changed(created, "judy@example.com")
    old["data"] = {"first_name": "Judy", "last_name": "A", "email": "judy@example.com"}

    assert app.on_accounts_event(old) == []


@pytest.mark.parametrize(
    ("event_type", "data", "due"),
    [
        ("MasterAccountCreated", {"email": "a@example.com"}, True),
        ("MasterAccountCreated", {"email": None}, False),
        ("MasterAccountContactChanged", {"email": "a@example.com", "app_status": "unregistered",
                                         "resets": 2}, True),
        ("MasterAccountContactChanged", {"email": "a@example.com", "app_status": "unregistered",
                                         "resets": 0, "previous_email": "A@example.com"}, False),
        ("MasterAccountContactChanged", {"email": "", "app_status": "unregistered",
                                         "resets": 0}, False),
        ("MasterAccountContactChanged", {"email": "a@example.com", "app_status": "registered",
                                         "resets": 0}, False),
        ("MasterAccountReset", {"email": "a@example.com"}, False),
    ],
)
def test_when_an_activation_email_is_due(event_type: str, data: dict[str, Any],
                                         due: bool) -> None:
    account = uuid4()

    key = activation_due(event_type, account, data)

    assert (key is not None) == due
    if due:
        assert key == activation_key(account, data.get("resets", 0), "a@example.com")


def test_an_activation_key_ignores_case_but_not_account_or_reset() -> None:
    account = uuid4()

    assert activation_key(account, 0, "Judy@Example.com") == activation_key(
        str(account), 0, "judy@example.com")
    assert activation_key(account, 0, "judy@example.com") != activation_key(
        account, 1, "judy@example.com")
    assert activation_key(account, 0, "judy@example.com") != activation_key(
        uuid4(), 0, "judy@example.com")


def test_a_keyed_email_id_depends_on_the_key_only() -> None:
    key = activation_key(uuid4(), 0, "judy@example.com")

    assert Email.create_id(uuid4(), ACTIVATION, key) == Email.create_id(uuid4(), ACTIVATION, key)
    assert Email.create_id(uuid4(), ACTIVATION, key) != Email.create_id(uuid4(), ACTIVATION)
    with pytest.raises(Invalid) as caught:
        an_email(idempotency_key=" ")
    assert list(caught.value.errors) == ["idempotency_key"]


def test_both_bodies_greet_the_resident_and_name_the_address(app: NotifyApplication) -> None:
    rendered = app.render(ACTIVATION, first_name="Judy", last_name="Anders",
                          email="judy@example.com")

    for body in (rendered.text, rendered.html):
        assert "Judy Anders" in body
        assert "judy@example.com" in body
        assert "SmartPlus app" in body
    assert rendered.subject == "Activate your SmartPlus account"
    assert f"<title>{rendered.subject}</title>" in rendered.html


def test_user_input_is_escaped_in_html_only(app: NotifyApplication) -> None:
    rendered = app.render(ACTIVATION, first_name="<b>Judy</b>", last_name="O'Neil & Co",
                          email="judy.o'neil@example.com")

    assert "<b>Judy</b>" not in rendered.html
    assert "&lt;b&gt;Judy&lt;/b&gt; O&#39;Neil &amp; Co" in rendered.html
    assert "judy.o&#39;neil@example.com" in rendered.html
    assert "<b>Judy</b> O'Neil & Co" in rendered.text
    assert "judy.o'neil@example.com" in rendered.text


def test_the_message_is_multipart_alternative_with_a_stable_message_id(
        app: NotifyApplication) -> None:
    [queued] = app.on_accounts_event(master_account_created(first_name="Zoë"))
    app.record(queued)
    stored = app.email(queued.id)

    first = compose(stored, "SmartPlus Cloud <no-reply@smartplus.example>").as_bytes()
    again = compose(app.email(queued.id), "SmartPlus Cloud <no-reply@smartplus.example>").as_bytes()

    assert first == again  # every attempt at one email sends the same bytes
    message = email.message_from_bytes(first, policy=email.policy.default)
    assert message["Message-ID"] == f"<{queued.id}@smartplus.example>"
    assert message["To"] == "judy@example.com"
    assert message["Subject"] == "Activate your SmartPlus account"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert "Zoë A" in text.get_content()
    assert "Zoë A" in html.get_content()


# --- closing a master account ----------------------------------------------------------------


class EmailsSeen:
    """The emails view, faked over the in-memory store: every email of the log, and how far it
    has read (`behind`: a projection that failed)."""

    def __init__(self, app: NotifyApplication) -> None:
        self.app = app
        self.behind = False

    def position(self) -> int:
        return 0 if self.behind else self.app.max_position()

    def pending_activation(self, master_account_id: UUID | str) -> list[UUID]:
        queued = [UUID(r.stream_id) for r in self.app.read(0, 1000) if r.type == "EmailQueued"]
        return [i for i in queued if str(self.app.email(i).account) == str(master_account_id)
                and self.app.email(i).pending]


@pytest.fixture
def seen(app: NotifyApplication) -> EmailsSeen:
    view = EmailsSeen(app)
    app.views = view  # type: ignore[assignment]
    return view


def master_account_closed(account: dict[str, Any]) -> dict[str, Any]:
    """The MasterAccountClosed of the account `account` (a created envelope) made."""
    return dict(account, event_id=str(uuid4()), type="MasterAccountClosed",
                stream_version=account["stream_version"] + 5,
                occurred_at=(NOW + timedelta(hours=1)).isoformat(),
                data={"apartment_id": account["data"]["apartment_id"],
                      "removed_family_member_ids": []})


def test_closing_an_account_cancels_its_pending_activation_emails(
        app: NotifyApplication, seen: EmailsSeen) -> None:
    created = master_account_created(email_="judy@example.com")
    moved = contact_changed(created, "judy@work.example", previous="judy@example.com")
    other = master_account_created(email_="zoe@example.com")
    first, second, others = queued_ids(app, created, moved, other)
    app.record_failure(second, "connection refused", NOW)

    cancelled_ = app.on_accounts_event(master_account_closed(created))

    assert sorted(e.id for e in cancelled_) == sorted([first, second])
    assert {e.cancelled_at for e in cancelled_} == {NOW + timedelta(hours=1)}
    assert {e.cancel_reason for e in cancelled_} == {domain.ACCOUNT_CLOSED}
    app.record(*cancelled_)
    assert [app.email(i).status for i in (first, second, others)] == [
        domain.CANCELLED, domain.CANCELLED, domain.QUEUED]


def test_a_sent_activation_email_stays_sent_when_the_account_closes(
        app: NotifyApplication, seen: EmailsSeen) -> None:
    created = master_account_created()
    [email_id] = queued_ids(app, created)
    app.record_sent(email_id, NOW, "smtp")

    assert app.on_accounts_event(master_account_closed(created)) == []
    assert app.email(email_id).status == domain.SENT


def test_a_repeated_close_changes_nothing(app: NotifyApplication, seen: EmailsSeen) -> None:
    created = master_account_created()
    [email_id] = queued_ids(app, created)
    closed = master_account_closed(created)
    app.record(*app.on_accounts_event(closed))
    position = app.max_position()

    assert app.on_accounts_event(closed) == []
    assert app.on_accounts_event(dict(closed, position=9)) == []
    assert app.max_position() == position
    assert [r.type for r in app.stream(email_id)] == ["EmailQueued", "EmailCancelled"]


def test_a_close_before_any_email_was_queued_cancels_nothing(
        app: NotifyApplication, seen: EmailsSeen) -> None:
    created = master_account_created(email_=None)

    assert app.on_accounts_event(master_account_closed(created)) == []


def test_a_close_is_retried_while_the_emails_view_is_behind(
        app: NotifyApplication, seen: EmailsSeen) -> None:
    created = master_account_created()
    [email_id] = queued_ids(app, created)
    seen.behind = True

    with pytest.raises(EmailsViewBehind):
        app.on_accounts_event(master_account_closed(created))

    seen.behind = False
    [cancelled_] = app.on_accounts_event(master_account_closed(created))
    assert cancelled_.id == email_id
