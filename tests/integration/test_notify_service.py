"""Notify end to end: accounts' MasterAccountCreated -> one activation email, sent once;
MasterAccountClosed -> the account's activation emails still pending are cancelled, never sent.

Stores are real (SQLite files; PostgreSQL in the broker test); the mail transports are the real
adapters, writing into a temporary mail folder or talking SMTP to a tiny server started here.
"Restart" means closing the wiring and bootstrapping a new one on the same store. Each test ends
by asserting the final state: what the folder or the SMTP server holds, and what the store says.
"""

from __future__ import annotations

import email
import email.policy
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any, BinaryIO
from uuid import UUID, uuid4

import pytest
from nameko.rpc import rpc

from concierge import green
from concierge.bus import make_publisher
from concierge.config import Settings
from concierge.locks import FileLock
from concierge.rebuild import rebuild
from concierge.records import META_KEY
from concierge.runtime import Wiring
from concierge.subscription import Subscription
from contracts.errors import Invalid
from services.notify.application import ACTIVATION, NotifyApplication
from services.notify.declaration import CONTEXT as NOTIFY
from services.notify.domain import ACCOUNT_CLOSED, Email, activation_key
from services.notify.mailer import Mailer, MailFolderSender, MailSender, SmtpSender
from services.notify.service import NotifyService
from tests.support.harness import eventually

# --- the accounts side, faked --------------------------------------------------------------


def master_account_created(position: int = 1, address: str | None = "judy@example.com",
                           first_name: str = "Judy", last_name: str = "Anders"
                           ) -> dict[str, Any]:
    """A MasterAccountCreated envelope as the accounts service publishes it."""
    stream = uuid4()
    return {
        "event_id": str(uuid4()), "type": "MasterAccountCreated", "version": 1,
        "source": "accounts", "stream_id": str(stream), "stream_version": 1,
        "position": position, "occurred_at": datetime.now(UTC).isoformat(),
        "actor": "installer:luna", "correlation_id": f"req-{position}",
        "data": {"apartment_id": str(uuid4()), "community_id": str(uuid4()),
                 "installer_id": str(uuid4()), "first_name": first_name,
                 "last_name": last_name, "email": address},
    }


def contact_changed(created: dict[str, Any], position: int, address: str | None,
                    previous: str | None = None, first_name: str = "Judy") -> dict[str, Any]:
    """A later MasterAccountContactChanged of the account `created` made, as accounts publishes
    it: the account's app is still unregistered and was never reset."""
    ids = created["data"]
    return dict(created, event_id=str(uuid4()), type="MasterAccountContactChanged",
                stream_version=created["stream_version"] + position, position=position,
                data={"first_name": first_name, "last_name": "Anders", "email": address,
                      "previous_email": previous, "apartment_id": ids["apartment_id"],
                      "installer_id": ids["installer_id"], "app_status": "unregistered",
                      "resets": 0})


def master_account_closed(created: dict[str, Any], position: int) -> dict[str, Any]:
    """The MasterAccountClosed of the account `created` made (its apartment was deleted)."""
    return dict(created, event_id=str(uuid4()), type="MasterAccountClosed",
                stream_version=created["stream_version"] + position, position=position,
                occurred_at=datetime.now(UTC).isoformat(),
                data={"apartment_id": created["data"]["apartment_id"],
                      "removed_family_member_ids": []})


def activation_id(envelope: dict[str, Any]) -> UUID:
    """The id of the activation email an account's event asks for (one per account, reset and
    address)."""
    data = envelope["data"]
    key = activation_key(envelope["stream_id"], data.get("resets") or 0, data["email"])
    return Email.create_id(envelope["event_id"], ACTIVATION, key)


class AccountsLog:
    """The accounts log as `read_log` answers it: envelopes past a position."""

    def __init__(self, envelopes: list[dict[str, Any]] | None = None) -> None:
        self.envelopes = list(envelopes or [])

    def __call__(self, source: str, after: int, limit: int) -> list[dict[str, Any]]:
        assert source == "accounts"
        return [e for e in self.envelopes if e["position"] > after][:limit]


ACCOUNTS_LOG = AccountsLog()


class FakeAccountsService:
    """Just enough of accounts for notify's catch-up: its log over RPC."""

    name = "accounts"

    @rpc
    def read_log(self, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        return ACCOUNTS_LOG("accounts", int(after), int(limit))


# --- transports, faked and real ------------------------------------------------------------


class ProcessKilled(BaseException):
    """Stands for SIGKILL: nothing after it runs, not even `except Exception`."""


class DiesAfterSending:
    """The real transport, then the process dies before the mailer can record the delivery."""

    def __init__(self, sender: MailSender) -> None:
        self.sender = sender
        self.transport = sender.transport

    def send(self, email_id: UUID, message: EmailMessage) -> None:
        self.sender.send(email_id, message)
        raise ProcessKilled


class SmtpSink:
    """A tiny SMTP server keeping every message it accepts; its replies can be scripted."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.commands: list[str] = []
        self.rcpt_replies: list[str] = []  # next replies to RCPT, e.g. "550 no such user"
        self.data_replies: list[str] = []  # next replies to the end of DATA
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                sink.session(self.rfile, self.wfile)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def session(self, rfile: BinaryIO, wfile: BinaryIO) -> None:
        def reply(*lines: str) -> None:
            wfile.write(b"".join(line.encode() + b"\r\n" for line in lines))
            wfile.flush()

        reply("220 sink ESMTP")
        while line := rfile.readline():
            verb = line.decode().strip().split(" ", 1)[0].upper()
            self.commands.append(verb)
            if verb == "EHLO":
                reply("250-sink", "250 8BITMIME")
            elif verb in {"HELO", "MAIL", "RSET", "NOOP"}:
                reply("250 ok")
            elif verb == "RCPT":
                reply(self.rcpt_replies.pop(0) if self.rcpt_replies else "250 ok")
            elif verb == "DATA":
                reply("354 end with <CRLF>.<CRLF>")
                lines = []
                while (data := rfile.readline()) not in (b".\r\n", b""):
                    lines.append(data[1:] if data.startswith(b".") else data)
                answer = self.data_replies.pop(0) if self.data_replies else "250 queued"
                if answer.startswith("250"):
                    self.messages.append(b"".join(lines))
                reply(answer)
            elif verb == "QUIT":
                reply("221 bye")
                return
            else:
                reply("502 not implemented")

    def parsed(self) -> list[EmailMessage]:
        return [email.message_from_bytes(m, policy=email.policy.default)  # type: ignore[misc]
                for m in self.messages]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Clock:
    """Time the test moves on, so a back-off is waited out without waiting."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


# --- fixtures ------------------------------------------------------------------------------


class NotifyStack:
    """Opens notify wirings on one store, restarts them, runs their mailers; cleans up."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.open_wirings: list[Wiring] = []
        self.loops: list[tuple[Mailer, Any]] = []

    @property
    def folder(self) -> Path:
        return self.settings.data_dir / "mail"

    def open(self, sender: MailSender | None = None) -> Wiring:
        wiring = NOTIFY.wire(self.settings, **({"sender": sender} if sender else {}))
        self.open_wirings.append(wiring)
        return wiring

    def restart(self, wiring: Wiring, sender: MailSender | None = None) -> Wiring:
        self.close(wiring)
        return self.open(sender)

    def close(self, wiring: Wiring) -> None:
        for mailer, thread in [loop for loop in self.loops if loop[0].app is wiring.app]:
            mailer.stop()
            thread.wait()
        wiring.close()
        self.open_wirings.remove(wiring)

    def run_mailer(self, wiring: Wiring) -> Mailer:
        mailer = wiring.loop(Mailer)
        self.loops.append((mailer, green.spawn(mailer.run)))
        return mailer

    def files(self) -> list[str]:
        """Everything in the mail folder, hidden files included."""
        return sorted(p.name for p in self.folder.iterdir()) if self.folder.exists() else []

    def close_all(self) -> None:
        for wiring in list(self.open_wirings):
            self.close(wiring)


@pytest.fixture
def stack(data_dir: Path) -> Iterator[NotifyStack]:
    notify = NotifyStack(Settings(data_dir=data_dir, relay_idle_seconds=0.2))
    yield notify
    notify.close_all()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    yield sink
    sink.close()


def subscribe(wiring: Wiring, log: AccountsLog) -> Subscription:
    """Notify's policy on accounts' events, fed by the test instead of the bus."""
    return Subscription("accounts", accounts_policy(wiring), log)


def accounts_policy(wiring: Wiring) -> Any:
    """Notify's policy on accounts' events (it also has one on devices' commands)."""
    [policy] = [policy for source, policy in wiring.policies if source == "accounts"]
    return policy


def app_of(wiring: Wiring) -> NotifyApplication:
    assert isinstance(wiring.app, NotifyApplication)
    return wiring.app


def read_eml(path: Path) -> EmailMessage:
    return email.message_from_bytes(path.read_bytes(),  # type: ignore[return-value]
                                    policy=email.policy.default)


def bodies(message: EmailMessage) -> tuple[str, str]:
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def event_types(app: NotifyApplication, email_id: UUID) -> list[str]:
    return [r.type for r in app.stream(email_id)]


# --- the mail folder -------------------------------------------------------------------------


def test_a_master_account_created_delivered_twice_gives_one_email_and_one_file(
        stack: NotifyStack) -> None:
    notify = stack.open()
    app = app_of(notify)
    created = master_account_created(1, "judy.o'neil@example.com")
    sub = subscribe(notify, AccountsLog([created]))
    stack.run_mailer(notify)

    sub.deliver(created)
    sub.deliver(created)
    sub.catch_up()

    email_id = activation_id(created)
    eventually(lambda: app.email(email_id).status == "sent")
    assert stack.files() == [f"{email_id}.eml"]
    assert event_types(app, email_id) == ["EmailQueued", "EmailSent"]
    assert app.list_emails({})["total"] == 1
    message = read_eml(stack.folder / f"{email_id}.eml")
    assert message["To"] == "judy.o'neil@example.com"
    assert message["Subject"] == "Activate your SmartPlus account"
    assert message["Message-ID"] == f"<{email_id}@smartplus.local>"
    text, html = bodies(message)
    assert "Judy Anders" in text and "judy.o'neil@example.com" in text
    assert "Judy Anders" in html and "judy.o&#39;neil@example.com" in html


def recorded_batches(app: NotifyApplication) -> list[int]:
    """The sizes of the batches the mailer records sent from now on, in order."""
    batches: list[int] = []
    record_sent_many = app.record_sent_many

    def counted(delivered: list[tuple[Email, datetime]], transport: str) -> None:
        batches.append(len(delivered))
        record_sent_many(delivered, transport)

    app.record_sent_many = counted  # type: ignore[method-assign]
    return batches


def test_emails_queued_soon_after_a_pass_are_sent_together_in_the_next(
        stack: NotifyStack) -> None:
    notify = stack.open()
    app = app_of(notify)
    batches = recorded_batches(app)
    mailer = notify.loop(Mailer)
    mailer.gather_seconds = 2.0  # wide, so that a slow machine still commits all nine in it
    events = [master_account_created(i + 1, f"r{i}@example.com") for i in range(10)]
    sub = subscribe(notify, AccountsLog(events))
    stack.run_mailer(notify)

    sub.deliver(events[0])  # the first after a quiet spell goes at once ...
    eventually(lambda: app.email(activation_id(events[0])).status == "sent")
    for event in events[1:]:  # ... the next nine, each its own commit, wait for one pass
        sub.deliver(event)
    eventually(lambda: all(app.email(activation_id(e)).status == "sent" for e in events),
               timeout=20)

    assert batches == [1, 9]
    assert len(stack.files()) == 10


def test_an_email_added_later_gets_one_activation_email_even_when_replayed(
        stack: NotifyStack) -> None:
    notify = stack.open()
    created = master_account_created(1, address=None)
    added = contact_changed(created, 2, "judy@example.com")
    renamed = contact_changed(created, 3, "judy@example.com", previous="judy@example.com",
                              first_name="Judith")
    log = AccountsLog([created, added, renamed])
    sub = subscribe(notify, log)
    stack.run_mailer(notify)

    sub.deliver(added)  # the gap before it is read from the log first
    sub.deliver(added)
    sub.catch_up()
    email_id = activation_id(added)
    eventually(lambda: app_of(notify).email(email_id).status == "sent")
    notify = stack.restart(notify)  # an operator replays accounts' log into a new process
    app = app_of(notify)
    sub = subscribe(notify, log)
    for envelope in log.envelopes:
        sub.deliver(envelope)
        assert app.on_accounts_event(envelope) == []  # even past the tracking

    assert notify.loop(Mailer).send_due() == 0
    assert stack.files() == [f"{email_id}.eml"]
    assert event_types(app, email_id) == ["EmailQueued", "EmailSent"]
    [summary] = app.list_emails({})["items"]
    assert (summary["recipient"], summary["cause_event_id"], summary["apartment_id"]) == (
        "judy@example.com", added["event_id"], created["data"]["apartment_id"])
    assert read_eml(stack.folder / f"{email_id}.eml")["To"] == "judy@example.com"


def test_a_new_address_while_unregistered_gets_its_own_activation_email(
        stack: NotifyStack) -> None:
    notify = stack.open()
    created = master_account_created(1, address="judy@example.com")
    moved = contact_changed(created, 2, "judy@work.example", previous="judy@example.com")
    back = contact_changed(created, 3, "judy@example.com", previous="judy@work.example")
    subscribe(notify, AccountsLog([created, moved, back])).catch_up()

    assert notify.loop(Mailer).send_due() == 2

    assert stack.files() == sorted([f"{activation_id(created)}.eml", f"{activation_id(moved)}.eml"])
    recipients = sorted(e["recipient"] for e in app_of(notify).list_emails({})["items"])
    assert recipients == ["judy@example.com", "judy@work.example"]


def test_a_mailer_killed_after_sending_leaves_one_file_after_the_restart(
        stack: NotifyStack) -> None:
    notify = stack.open(DiesAfterSending(MailFolderSender(stack.folder)))
    created = master_account_created()
    subscribe(notify, AccountsLog([created])).deliver(created)
    email_id = activation_id(created)

    with pytest.raises(ProcessKilled):
        notify.loop(Mailer).send_due()
    assert app_of(notify).email(email_id).status == "queued"  # the delivery was never recorded

    notify = stack.restart(notify)
    app = app_of(notify)
    assert app.pending() == [email_id]
    assert notify.loop(Mailer).send_due() == 1

    assert stack.files() == [f"{email_id}.eml"]  # no second file, no temporary left behind
    assert app.email(email_id).status == "sent"
    assert event_types(app, email_id) == ["EmailQueued", "EmailSent"]
    assert app.pending() == []
    assert read_eml(stack.folder / f"{email_id}.eml")["To"] == "judy@example.com"


class NotIdempotent(MailFolderSender):
    """The mail folder, declared as a transport where a second send delivers twice (SMTP)."""

    resend_changes_nothing = False


@pytest.mark.parametrize(("sender", "records"), [(MailFolderSender, [25]),
                                                 (NotIdempotent, [10, 10, 5])])
def test_a_pass_is_recorded_ten_at_a_time_unless_a_resend_changes_nothing(
        stack: NotifyStack, sender: type[MailFolderSender], records: list[int]) -> None:
    notify = stack.open(sender(stack.folder))
    app = app_of(notify)
    batches = recorded_batches(app)
    events = [master_account_created(i + 1, f"r{i}@example.com") for i in range(25)]
    subscribe(notify, AccountsLog(events)).catch_up()

    assert notify.loop(Mailer).send_due() == 25
    assert batches == records
    assert len(stack.files()) == 25


class DiskFailsOnce(MailFolderSender):
    """The real mail folder, whose second file write fails once (a full disk, say)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.writes = 0

    def _write(self, email_id: UUID, target: Path, data: bytes) -> None:
        self.writes += 1
        if self.writes == 2:
            raise OSError(28, "No space left on device")
        super()._write(email_id, target, data)


def test_a_failed_mail_folder_write_is_never_recorded_sent_and_goes_out_later(
        stack: NotifyStack) -> None:
    notify = stack.open(DiskFailsOnce(stack.folder))
    mailer = notify.loop(Mailer)
    mailer.record_every = 2  # the failure hits a batch recorded mid-pass
    events = [master_account_created(i, address=f"res{i}@example.com") for i in (1, 2, 3)]
    subscribe(notify, AccountsLog(events)).catch_up()
    app = app_of(notify)
    due = app.pending()
    assert sorted(due) == sorted(activation_id(e) for e in events)

    with pytest.raises(OSError):
        mailer.send_due()
    # The failed write was tried again before the batch was recorded: both emails recorded
    # sent have their file; the pass stopped before the third.
    assert stack.files() == sorted(f"{i}.eml" for i in due[:2])
    assert [app.email(i).status for i in due] == ["sent", "sent", "queued"]

    assert mailer.send_due() == 1
    assert stack.files() == sorted(f"{i}.eml" for i in due)  # each once, no temporary left
    assert all(event_types(app, i) == ["EmailQueued", "EmailSent"] for i in due)


def test_the_same_event_after_a_restart_creates_nothing_and_sends_nothing(
        stack: NotifyStack) -> None:
    notify = stack.open()
    created = master_account_created()
    log = AccountsLog([created])
    subscribe(notify, log).deliver(created)
    assert notify.loop(Mailer).send_due() == 1
    positions = notify.app.max_position()

    notify = stack.restart(notify)
    app = app_of(notify)
    sub = subscribe(notify, log)
    sub.deliver(created)  # replayed to the bus by an operator
    sub.catch_up()
    assert app.on_accounts_event(created) == []  # even past the tracking: the email exists
    assert notify.loop(Mailer).send_due() == 0

    assert app.max_position() == positions
    assert len(stack.files()) == 1
    assert app.list_emails({})["total"] == 1


def test_a_rebuilt_emails_view_sends_nothing_again(stack: NotifyStack) -> None:
    notify = stack.open()
    app = app_of(notify)
    sent, waiting = master_account_created(1), master_account_created(2, "zoe@example.com")
    sub = subscribe(notify, AccountsLog([sent]))
    sub.catch_up()
    assert notify.loop(Mailer).send_due() == 1
    sub.read_log = AccountsLog([sent, waiting])
    sub.catch_up()
    before = app.list_emails({})

    rebuild(notify)  # an operator drops the read models and rebuilds them from the store

    assert app.list_emails({}) == before
    assert app.pending() == [activation_id(waiting)]
    assert notify.loop(Mailer).send_due() == 1
    assert len(stack.files()) == 2


def test_accounts_without_email_and_other_events_send_nothing(stack: NotifyStack) -> None:
    notify = stack.open()
    without = master_account_created(1, address=None)
    reset = dict(master_account_created(2), type="MasterAccountReset",
                 data={"removed_family_member_ids": []})
    sub = subscribe(notify, AccountsLog([without, reset]))

    sub.catch_up()

    assert notify.loop(Mailer).send_due() == 0
    # The reset is not handed to the policy; its position is recorded with the batch's unit.
    assert notify.app.tracked_position("accounts") == 2
    assert app_of(notify).list_emails({})["total"] == 0
    assert stack.files() == []


# --- SMTP ------------------------------------------------------------------------------------


def smtp_settings(stack: NotifyStack, sink: SmtpSink, **extra: Any) -> Settings:
    return Settings(data_dir=stack.settings.data_dir, smtp_host="127.0.0.1", smtp_port=sink.port,
                    **extra)


def test_smtp_resends_after_a_crash_with_the_same_message_id(stack: NotifyStack,
                                                             smtp: SmtpSink) -> None:
    stack.settings = smtp_settings(stack, smtp)
    notify = stack.open(DiesAfterSending(SmtpSender(stack.settings)))
    created = master_account_created()
    subscribe(notify, AccountsLog([created])).deliver(created)
    email_id = activation_id(created)
    with pytest.raises(ProcessKilled):
        notify.loop(Mailer).send_due()

    notify = stack.restart(notify)  # bootstrap picks SMTP: a host is configured
    assert notify.loop(Mailer).send_due() == 1

    first, second = smtp.parsed()  # at least once over SMTP ...
    assert first["Message-ID"] == second["Message-ID"] == f"<{email_id}@smartplus.local>"
    assert first.as_bytes() == second.as_bytes()  # ... and recognisably the same message
    assert first["To"] == "judy@example.com"
    assert "Judy Anders" in bodies(first)[0]
    app = app_of(notify)
    assert app.email(email_id).transport == "smtp"
    assert event_types(app, email_id) == ["EmailQueued", "EmailSent"]
    assert notify.loop(Mailer).send_due() == 0
    assert len(smtp.messages) == 2
    assert stack.files() == []  # nothing went to the mail folder


def test_a_refused_attempt_is_retried_after_the_back_off(stack: NotifyStack,
                                                         smtp: SmtpSink) -> None:
    stack.settings = smtp_settings(stack, smtp)
    notify = stack.open()
    app = app_of(notify)
    created = master_account_created()
    subscribe(notify, AccountsLog([created])).deliver(created)
    clock = Clock()  # starts now, after the email was queued
    mailer = Mailer(app, SmtpSender(stack.settings), FileLock(stack.settings.data_dir / "t.lock"),
                    stack.settings.mail_from, refresh=notify.catch_up_local, clock=clock)
    email_id = activation_id(created)
    smtp.data_replies.append("451 4.3.0 try again later")

    assert mailer.send_due() == 1
    failed = app.email(email_id)
    assert (failed.status, failed.attempts) == ("retrying", 1)
    assert failed.retry_at == clock.now + timedelta(minutes=1)
    assert mailer.send_due() == 0  # waiting out the back-off
    clock.advance(timedelta(minutes=1))
    assert mailer.send_due() == 1

    assert app.email(email_id).status == "sent"
    assert event_types(app, email_id) == ["EmailQueued", "EmailFailed", "EmailSent"]
    assert len(smtp.messages) == 1
    [summary] = app.list_emails({"status": "sent"})["items"]
    assert (summary["attempts"], summary["last_error"]) == (1, "message refused: 451 4.3.0 try "
                                                                "again later")


def test_a_recipient_the_server_refuses_is_given_up(stack: NotifyStack, smtp: SmtpSink) -> None:
    stack.settings = smtp_settings(stack, smtp)
    notify = stack.open()
    app = app_of(notify)
    created = master_account_created(address="gone@example.com")
    subscribe(notify, AccountsLog([created])).deliver(created)
    email_id = activation_id(created)
    smtp.rcpt_replies.append("550 5.1.1 no such user")

    assert notify.loop(Mailer).send_due() == 1

    given_up = app.email(email_id)
    assert (given_up.status, given_up.attempts, given_up.retry_at) == ("failed", 1, None)
    assert app.pending() == []
    assert smtp.messages == []


def test_credentials_never_travel_without_tls(stack: NotifyStack, smtp: SmtpSink) -> None:
    stack.settings = smtp_settings(stack, smtp, smtp_user="mailer", smtp_password="secret")
    notify = stack.open()
    created = master_account_created()
    subscribe(notify, AccountsLog([created])).deliver(created)

    assert notify.loop(Mailer).send_due() == 1

    assert "AUTH" not in smtp.commands  # the sink offers no STARTTLS, so no login either
    assert smtp.messages == []
    email_id = activation_id(created)
    assert app_of(notify).email(email_id).status == "retrying"


def test_a_retrying_activation_email_of_a_closed_account_is_never_sent(
        stack: NotifyStack, smtp: SmtpSink) -> None:
    stack.settings = smtp_settings(stack, smtp)
    notify = stack.open()
    app = app_of(notify)
    created = master_account_created(1)
    closed = master_account_closed(created, 2)
    log = AccountsLog([created, closed])
    sub = subscribe(notify, log)
    sub.deliver(created)
    clock = Clock()
    mailer = Mailer(app, SmtpSender(stack.settings), FileLock(stack.settings.data_dir / "t.lock"),
                    stack.settings.mail_from, refresh=notify.catch_up_local, clock=clock)
    email_id = activation_id(created)
    smtp.data_replies.append("451 4.3.0 try again later")  # the mail server is down
    assert mailer.send_due() == 1
    assert app.email(email_id).status == "retrying"

    sub.deliver(closed)
    sub.deliver(closed)
    clock.advance(timedelta(hours=2))  # the back-off is long over and the server is back

    assert mailer.send_due() == 0
    notify = stack.restart(notify)  # an operator replays accounts' log into a new process
    app = app_of(notify)
    for envelope in log.envelopes:
        subscribe(notify, log).deliver(envelope)
        assert app.on_accounts_event(envelope) == []  # even past the tracking
    assert notify.loop(Mailer).send_due() == 0
    cancelled = app.email(email_id)
    assert (cancelled.status, cancelled.cancel_reason) == ("cancelled", ACCOUNT_CLOSED)
    assert event_types(app, email_id) == ["EmailQueued", "EmailFailed", "EmailCancelled"]
    assert app.pending() == [] and app.next_due() is None
    [summary] = app.list_emails({"status": "cancelled"})["items"]
    assert (summary["id"], summary["attempts"], summary["retry_at"]) == (str(email_id), 1, None)
    assert smtp.messages == []


def test_a_close_cancels_an_email_queued_before_emails_named_their_account(
        stack: NotifyStack) -> None:
    # Such an email names its account only in its activation key.
    notify = stack.open()
    app = app_of(notify)
    created = master_account_created(1)
    key = activation_key(created["stream_id"], 0, "judy@example.com")
    older = Email.queue(cause_event_id=created["event_id"], template=ACTIVATION,
                        recipient="judy@example.com", subject="Hi", text="Hi", html="Hi",
                        idempotency_key=key)
    app.record(older)
    other = master_account_created(2, "zoe@example.com")
    sub = subscribe(notify, AccountsLog([created, other, master_account_closed(created, 3)]))

    sub.catch_up()

    assert app.email(older.id).status == "cancelled"
    assert app.pending() == [activation_id(other)]
    assert notify.loop(Mailer).send_due() == 1
    assert stack.files() == [f"{activation_id(other)}.eml"]


def test_a_batch_of_accounts_events_is_one_transaction_and_a_close_in_it_still_cancels(
        stack: NotifyStack) -> None:
    notify = stack.open()
    app = app_of(notify)
    policy = accounts_policy(notify)
    judy = master_account_created(1)
    zoe = master_account_created(2, "zoe@example.com")
    moved = dict(contact_changed(judy, 3, "judy@work.example", previous="judy@example.com"),
                 correlation_id="req-3")
    back = contact_changed(judy, 4, "judy@example.com", previous="judy@work.example")
    closed = master_account_closed(judy, 5)
    log = AccountsLog([judy, zoe, moved, back, closed])
    sub = subscribe(notify, log)

    sub.deliver_many(log.envelopes)

    # judy, zoe, moved and back in one unit (back sees judy's email queued in it and asks
    # for none); the close alone, after them, reading the emails view.
    assert policy.units == 1
    assert app.tracked_position("accounts") == 5
    assert app.email(activation_id(judy)).status == "cancelled"
    assert app.email(activation_id(moved)).status == "cancelled"
    assert app.pending() == [activation_id(zoe)]
    queued = [r for r in app.read() if r.type == "EmailQueued"]
    assert [(r.stream_id, r.state[META_KEY]["correlation_id"]) for r in queued] == [
        (str(activation_id(judy)), "req-1"), (str(activation_id(zoe)), "req-2"),
        (str(activation_id(moved)), "req-3")]
    stored = app.max_position()

    sub.deliver_many(log.envelopes)  # the whole batch again
    notify = stack.restart(notify)
    subscribe(notify, log).deliver_many(log.envelopes)  # and into a new process

    assert app_of(notify).max_position() == stored
    assert notify.loop(Mailer).send_due() == 1
    assert stack.files() == [f"{activation_id(zoe)}.eml"]


def test_a_batch_whose_unit_fails_is_applied_one_event_at_a_time(stack: NotifyStack) -> None:
    notify = stack.open()
    app = app_of(notify)
    policy = accounts_policy(notify)
    judy, zoe = master_account_created(1), master_account_created(2, "zoe@example.com")
    broken = dict(master_account_created(3, "max@example.com"), stream_id="not-a-uuid")
    sub = subscribe(notify, AccountsLog([judy, zoe, broken]))

    with pytest.raises(ValueError):
        sub.deliver_many([judy, zoe, broken])

    # Nothing of the failed unit was kept; one by one, the two good events got their emails
    # and the broken one stopped the run where it stands.
    assert policy.units == 0
    assert app.pending() == [activation_id(judy), activation_id(zoe)]
    assert app.tracked_position("accounts") == 2


# --- on the bus: the in-process one; RabbitMQ with PostgreSQL -------------------------------------


@pytest.fixture
def accounts_log() -> Iterator[AccountsLog]:
    ACCOUNTS_LOG.envelopes.clear()
    yield ACCOUNTS_LOG
    ACCOUNTS_LOG.envelopes.clear()


@pytest.mark.parametrize("kind", ["embedded", "rabbit-postgres"])
def test_an_account_published_on_the_bus_gets_one_email(
        kind: str, stack_factory: Callable[[str], Settings], services_factory: Any,
        accounts_log: AccountsLog) -> None:
    settings = stack_factory(kind)
    folder = settings.data_dir / "mail"
    services = services_factory(settings, ["notify", "accounts"])
    services.start(FakeAccountsService)
    services.start(NotifyService)
    created = master_account_created(1)
    accounts_log.envelopes.append(created)  # what a gap repair would read

    publisher = make_publisher(settings.amqp_uri, "accounts", settings.amqp_prefix)
    try:
        publisher.publish_batch([created, created])  # a duplicate delivery, too
    finally:
        publisher.close()

    email_id = activation_id(created)

    def sent() -> list[dict[str, Any]]:
        with services.rpc() as proxy:
            return proxy.notify.list_emails({"actor": "operator"}, {"status": "sent"})["items"]

    [summary] = eventually(sent)
    assert (summary["id"], summary["recipient"], summary["transport"]) == (
        str(email_id), "judy@example.com", "mail-folder")
    assert sorted(p.name for p in folder.iterdir()) == [f"{email_id}.eml"]
    assert read_eml(folder / f"{email_id}.eml")["Subject"] == "Activate your SmartPlus account"
    with services.rpc() as proxy:
        assert proxy.notify.list_emails(None, {})["total"] == 1
        with pytest.raises(Invalid):
            proxy.notify.list_emails(None, {"status": "bounced"})
    assert services.runtime("notify").app.tracked_position("accounts") == 1


@pytest.mark.parametrize("kind", ["embedded", "rabbit-postgres"])
def test_a_close_on_the_bus_cancels_an_activation_email_stuck_retrying(
        kind: str, stack_factory: Callable[[str], Settings], services_factory: Any,
        accounts_log: AccountsLog, smtp: SmtpSink) -> None:
    settings = replace(stack_factory(kind), smtp_host="127.0.0.1", smtp_port=smtp.port)
    smtp.data_replies.append("451 4.3.0 try again later")  # down for the first attempt only
    services = services_factory(settings, ["notify", "accounts"])
    services.start(FakeAccountsService)
    services.start(NotifyService)
    created = master_account_created(1)
    closed = master_account_closed(created, 2)
    marker = master_account_created(3, "marker@example.com")

    def publish(*envelopes: dict[str, Any]) -> None:
        accounts_log.envelopes.extend(e for e in envelopes if e not in accounts_log.envelopes)
        publisher = make_publisher(settings.amqp_uri, "accounts", settings.amqp_prefix)
        try:
            publisher.publish_batch(list(envelopes))
        finally:
            publisher.close()

    def emails(status: str) -> list[str]:
        with services.rpc() as proxy:
            page = proxy.notify.list_emails(None, {"status": status})
        return [item["id"] for item in page["items"]]

    email_id = str(activation_id(created))
    publish(created)
    eventually(lambda: emails("retrying") == [email_id])
    publish(closed, closed)  # the close, and a duplicate of it
    eventually(lambda: emails("cancelled") == [email_id])
    publish(closed, marker)  # replayed once more, then another account's event behind it
    eventually(lambda: emails("sent") == [str(activation_id(marker))])  # SMTP is back

    wiring = services.runtime("notify")
    app = app_of(wiring)
    clock = Clock()
    clock.advance(timedelta(hours=2))  # long past the back-off
    mailer = Mailer(app, SmtpSender(settings), FileLock(settings.data_dir / "t.lock"),
                    settings.mail_from, refresh=wiring.catch_up_local, clock=clock)
    assert mailer.send_due() == 0
    assert app.tracked_position("accounts") == 3
    assert event_types(app, UUID(email_id)) == ["EmailQueued", "EmailFailed", "EmailCancelled"]
    assert app.on_accounts_event(closed) == []  # even past the tracking
    assert [m["To"] for m in smtp.parsed()] == ["marker@example.com"]
    with services.rpc() as proxy:
        assert proxy.notify.list_emails(None, {})["total"] == 2


# --- a resident's address after its tenancy ends (crypto-shredding) ---------------------------


def test_a_reset_erases_the_resident_s_address_from_notify_for_good(stack: NotifyStack) -> None:
    notify = stack.open()
    app = app_of(notify)
    created = master_account_created(1, "judy.private@example.com", first_name="Judy")
    reset = dict(created, event_id=str(uuid4()), type="MasterAccountReset", stream_version=2,
                 position=2, occurred_at=datetime.now(UTC).isoformat(),
                 data={"removed_family_member_ids": [], "resets": 1,
                       "first_name": "Judy", "last_name": "Anders"})
    log = AccountsLog([created, reset])
    subscribe(notify, log).deliver(created)
    email_id = activation_id(created)
    raw = b"".join(bytes(n.state) for n in app.recorder.select_notifications(1, 1000))
    assert b"judy.private@example.com" not in raw  # sealed in the store from the start
    assert app.email(email_id).recipient == "judy.private@example.com"
    assert app.list_emails({})["items"][0]["recipient"] == "judy.private@example.com"

    # The tenant-key model follows accounts' log as the other read models do.
    [keys] = [s for subs in notify.subscriptions.values() for s in subs
              if s.handler.name == "notify_tenant_keys"]
    keys.read_log = log
    keys.catch_up()
    assert app.list_emails({})["items"][0]["recipient"] is None
    assert "judy.private" not in str(notify.read_log(0, 1000))
    # Still pending at the reset: cancelled by notify's policy, never sent.
    subscribe(notify, log).deliver(reset)
    assert notify.loop(Mailer).send_due() == 0 and stack.files() == []
    notify = stack.restart(notify)  # read from the store again, as any replica would
    erased = app_of(notify).email(email_id)
    assert (erased.recipient, erased.text, erased.idempotency_key) == (None, None, None)
    assert (erased.status, erased.cancel_reason) == ("cancelled", "master account reset")
