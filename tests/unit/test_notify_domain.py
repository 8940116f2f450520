"""Notify domain and rendering: emails from queued to sent or given up, the activation policy.

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
from services.notify.application import ACTIVATION, NotifyApplication
from services.notify.domain import Email
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


# --- the activation policy and rendering -----------------------------------------------------


def test_a_new_master_account_with_an_email_gets_an_activation_email(
        app: NotifyApplication) -> None:
    envelope = master_account_created(email_="judy@example.com")

    [queued] = app.on_accounts_event(envelope)

    assert queued.id == Email.create_id(envelope["event_id"], ACTIVATION)
    assert (queued.recipient, queued.template, queued.subject) == (
        "judy@example.com", "activation", "Activate your SmartPlus account")
    assert str(queued.apartment_id) == envelope["data"]["apartment_id"]
    assert str(queued.installer_id) == envelope["data"]["installer_id"]
    assert str(queued.cause_event_id) == envelope["event_id"]


@pytest.mark.parametrize("address", [None, ""])
def test_a_master_account_without_email_gets_nothing(app: NotifyApplication,
                                                     address: str | None) -> None:
    assert app.on_accounts_event(master_account_created(email_=address)) == []


def test_a_reset_sends_no_email(app: NotifyApplication) -> None:
    # Manual: after a reset "the user is not going to receive the reset email".
    envelope = master_account_created(type_="MasterAccountReset")
    envelope["data"] = {"removed_family_member_ids": []}

    assert app.on_accounts_event(envelope) == []


def test_the_same_cause_queues_no_second_email(app: NotifyApplication) -> None:
    envelope = master_account_created()
    app.record(*app.on_accounts_event(envelope))

    assert app.on_accounts_event(envelope) == []
    assert app.on_accounts_event(dict(envelope, position=7)) == []


def test_an_event_that_breaks_its_contract_queues_nothing(app: NotifyApplication) -> None:
    envelope = master_account_created()
    del envelope["data"]["apartment_id"]

    assert app.on_accounts_event(envelope) == []


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
