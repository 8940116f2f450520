"""Sending queued emails: one `MailSender` protocol, two adapters, and the loop that drives them.

The declaration (services/notify/declaration.py) picks the adapter: `SmtpSender` when an SMTP
host is configured, `MailFolderSender` (one `.eml` file per email under the data folder)
otherwise. The `Mailer` sends what is due and
records the outcome as events. A crash between sending and recording sends again on restart:
at least once over SMTP, where the repeated Message-ID (derived from the email id) lets the
receiving side recognise the copy, and exactly one file in the mail folder, whose name is the
email id and which is written atomically and never twice.
"""

from __future__ import annotations

import binascii
import contextlib
import html
import logging
import os
import re
import smtplib
import ssl
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email import quoprimime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from concierge import green
from concierge.config import Settings
from concierge.green import Wakeup
from concierge.leader import LeaderLoop
from concierge.locks import LeaderLock
from services.notify.application import NotifyApplication
from services.notify.domain import ERASED, SECRET_GONE, SECRET_MARK, Email

log = logging.getLogger(__name__)

SMTPS_PORT = 465  # implicit TLS; any other port upgrades with STARTTLS before a login


class SendFailed(Exception):
    """The transport did not take the message; `permanent` when retrying cannot help."""

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class MailSender(Protocol):
    transport: str

    def send(self, email_id: UUID, message: Outgoing) -> None:
        """Hand the message over, or raise (SendFailed for a failure the transport explains)."""
        ...

    # A sender may also have `flush()`: make the messages handed over so far durable. The
    # mailer calls it before it records them sent. `resend_changes_nothing = True` says that
    # sending a delivered email again delivers nothing twice (the mail folder's file is there).


# --- the message -----------------------------------------------------------------------------


def message_id(email_id: UUID, mail_from: str) -> str:
    """The same for every attempt at one email, so a resend is recognisably the same message."""
    domain = parseaddr(mail_from)[1].rpartition("@")[2] or "localhost"
    return f"<{email_id}@{domain}>"


def compose(email: Email, mail_from: str) -> EmailMessage:
    """The RFC 5322 message of an email: multipart/alternative, plain text then HTML.

    Every header and the MIME boundary come from the stored email, so each attempt produces
    the same bytes.
    """
    message = EmailMessage()
    message["Message-ID"] = message_id(email.id, mail_from)
    message["Date"] = format_datetime(email.created_on.astimezone(UTC))
    message["From"] = mail_from
    message["To"] = email.recipient
    message["Subject"] = email.subject
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: out-of-office replies stay away
    message.set_content(email.text)
    message.add_alternative(email.html, subtype="html")
    message.set_boundary(f"=_concierge_{email.id.hex}")
    return message


class WithSecret:
    """An email as sent: its bodies with the secret in place of SECRET_MARK; the stored email
    (and its events) keep the mark."""

    def __init__(self, email: Email, secret: str) -> None:
        self._email = email
        self.text = email.text.replace(SECRET_MARK, secret)
        self.html = email.html.replace(SECRET_MARK, html.escape(secret))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._email, name)


class Outgoing:
    """One email as a sender takes it: the `EmailMessage` (for SMTP), built only if asked for,
    and its bytes with CRLF line ends (for the mail folder).

    The bytes come from `direct_bytes` when it can build them: the same bytes as
    `compose(...).as_bytes(policy=SMTP)` at a small part of the cost, since the email package's
    header registry parses every header it is given. Anything outside its simple case goes
    through `compose`.
    """

    def __init__(self, email: Email, mail_from: str) -> None:
        self.email = email
        self.mail_from = mail_from
        self._message: EmailMessage | None = None

    @property
    def message(self) -> EmailMessage:
        if self._message is None:
            self._message = compose(self.email, self.mail_from)
        return self._message

    def as_bytes(self) -> bytes:
        direct = direct_bytes(self.email, self.mail_from)
        return direct if direct is not None else self.message.as_bytes(policy=SMTP)


# What `direct_bytes` writes as is: printable ASCII that no header parser rewrites (no
# encoded-word, no quoting, no folding), a plain address, a short subject.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9]+( [A-Za-z0-9]+)*")
_PLAIN_SUBJECT = re.compile(r"[!-~]+( [!-~]+)*")
MAX_LINE = 78  # RFC 5322's recommended line length, the email package's max_line_length


def _plain_from(mail_from: str) -> bool:
    """`name <address>` or a bare address, in the plain form the email package keeps as is."""
    name, sep, rest = mail_from.partition(" <")
    if not sep:
        return _PLAIN_ADDRESS.fullmatch(mail_from) is not None
    return (rest.endswith(">") and _PLAIN_NAME.fullmatch(name) is not None
            and _PLAIN_ADDRESS.fullmatch(rest[:-1]) is not None)


def direct_bytes(email: Email, mail_from: str) -> bytes | None:
    """`compose(email, mail_from).as_bytes(policy=SMTP)`, built directly; None when a header
    would need the email package (non-ASCII, quoting, encoded words, folding).

    tests/unit/test_notify_mailer.py checks the two give the same bytes over generated emails.
    """
    subject, recipient = email.subject, email.recipient
    if (len(subject) > MAX_LINE - len("Subject: ") or "=?" in subject
            or _PLAIN_SUBJECT.fullmatch(subject) is None
            or len(recipient) > MAX_LINE - len("To: ")
            or _PLAIN_ADDRESS.fullmatch(recipient) is None
            or len(mail_from) > MAX_LINE - len("From: ") or not _plain_from(mail_from)):
        return None
    boundary = f"=_concierge_{email.id.hex}"
    text_cte, text = _encode_text(email.text)
    html_cte, html = _encode_text(email.html)
    lines = [
        f"Message-ID: {message_id(email.id, mail_from)}",
        f"Date: {format_datetime(email.created_on.astimezone(UTC))}",
        f"From: {mail_from}",
        f"To: {recipient}",
        f"Subject: {subject}",
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        "Content-Type: multipart/alternative;",
        f' boundary="{boundary}"',
        "",
        f"--{boundary}",
        'Content-Type: text/plain; charset="utf-8"',
        f"Content-Transfer-Encoding: {text_cte}",
        "",
    ]
    head = "\r\n".join(lines).encode("ascii") + b"\r\n"
    middle = "\r\n".join([
        "",
        f"--{boundary}",
        'Content-Type: text/html; charset="utf-8"',
        f"Content-Transfer-Encoding: {html_cte}",
        "MIME-Version: 1.0",
        "",
    ]).encode("ascii") + b"\r\n"
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    return head + text + middle + html + tail


def _encode_text(body: str) -> tuple[str, bytes]:
    """A text part's transfer encoding and encoded body (CRLF line ends), chosen as the email
    package's `set_content` chooses: as is when every line is short, else the shorter of
    quoted-printable and base64 judged on the first ten lines."""
    lines = body.encode("utf-8").splitlines()
    if max((len(line) for line in lines), default=0) <= MAX_LINE:
        joined = b"\r\n".join(lines) + b"\r\n"
        return ("7bit" if joined.isascii() else "8bit"), joined
    sniff = b"\n".join(lines[:10]) + b"\n"
    sniff_qp = quoprimime.body_encode(sniff.decode("latin-1"), MAX_LINE)
    data = b"\n".join(lines) + b"\n"
    if len(sniff_qp) <= len(binascii.b2a_base64(sniff)):
        encoded = quoprimime.body_encode(data.decode("latin-1"), MAX_LINE)
        return "quoted-printable", encoded.replace("\n", "\r\n").encode("ascii")
    step = MAX_LINE // 4 * 3
    chunks = [binascii.b2a_base64(data[i:i + step]) for i in range(0, len(data), step)]
    return "base64", b"".join(chunks).replace(b"\n", b"\r\n")


# --- adapters --------------------------------------------------------------------------------


class SmtpSender:
    """Sends through the configured SMTP server; credentials only ever travel over TLS."""

    transport = "smtp"

    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        self.host = settings.smtp_host
        self.port = settings.smtp_port
        self.user = settings.smtp_user
        self.password = settings.smtp_password
        self.timeout = timeout

    def _connect(self) -> smtplib.SMTP:
        if self.port == SMTPS_PORT:
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                    context=ssl.create_default_context())
        return smtplib.SMTP(self.host, self.port, timeout=self.timeout)

    def send(self, email_id: UUID, message: Outgoing) -> None:
        try:
            with self._connect() as smtp:
                smtp.ehlo()
                if self.user:
                    if self.port != SMTPS_PORT:
                        smtp.starttls(context=ssl.create_default_context())
                        smtp.ehlo()
                    smtp.login(self.user, self.password)
                smtp.send_message(message.message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise SendFailed(f"recipient refused: {_describe(exc.recipients)}",
                             permanent=all(500 <= code < 600 for code in codes)) from exc
        except smtplib.SMTPDataError as exc:
            # A 5xx after DATA refuses this very message (too large, rejected as spam).
            raise SendFailed(f"message refused: {exc.smtp_code} {_text(exc.smtp_error)}",
                             permanent=500 <= exc.smtp_code < 600) from exc
        except smtplib.SMTPResponseException as exc:
            # Sender refused, authentication failed: our configuration, worth retrying once fixed.
            raise SendFailed(f"SMTP {exc.smtp_code} {_text(exc.smtp_error)}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _describe(recipients: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{addr}: {code} {_text(reply)}" for addr, (code, reply) in recipients.items())


class MailFolderSender:
    """Delivers into a folder: `<email-id>.eml`, whole or absent, never written twice.

    `send` only builds the message; `flush`, which the mailer calls before it records a batch
    sent, writes the batch in one OS thread: each file synced before it is renamed into place,
    then the folder (the renames) synced once. One thread hand-off per batch instead of one per
    email: that hand-off cost notify more than the writes did. A process that dies before the
    flush has written nothing, and the mailer, which recorded nothing, sends those again.
    """

    transport = "mail-folder"
    resend_changes_nothing = True  # the file is there: `send` skips it

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._staged: list[tuple[UUID, Path, bytes]] = []

    def path_for(self, email_id: UUID) -> Path:
        return self.folder / f"{email_id}.eml"

    def send(self, email_id: UUID, message: Outgoing) -> None:
        target = self.path_for(email_id)
        if target.exists():  # delivered before a crash: the file is the delivery
            return
        self._staged.append((email_id, target, message.as_bytes()))  # CRLF, as RFC 5322 wants

    def flush(self) -> None:
        """Write what was sent since the last flush; if that fails, it stays to be written by
        the next flush, and the mailer, which records only after a flush, records nothing."""
        if self._staged or self.folder.exists():
            green.blocking(self._write_all, self._staged)
        self._staged = []

    def _write_all(self, staged: list[tuple[UUID, Path, bytes]]) -> None:
        if staged:
            self.folder.mkdir(parents=True, exist_ok=True)
        for email_id, target, data in staged:
            if not target.exists():  # placed by a flush that failed after it
                self._write(email_id, target, data)
        _sync_folder(self.folder)

    def _write(self, email_id: UUID, target: Path, data: bytes) -> None:
        # Hidden, and not ending in .eml, so nothing reading the folder takes a half-written file.
        fd, temp = tempfile.mkstemp(dir=self.folder, prefix=f".{email_id}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable, or a power cut could lose a file already reported sent."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the loop --------------------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(UTC)


class Mailer:
    """Sends due emails and records each outcome; one mailer per service sends at a time.

    Woken by every commit in this process; the idle timeout covers commits of other replicas
    and the next retry falling due. Passes start at most every `gather_seconds`: the first
    email after a quiet spell goes at once, and under a stream of commits the emails queued
    meanwhile go together, so one pass (one query for what is due, one transaction to record
    the deliveries, one publish of their events) serves several emails instead of each.
    """

    def __init__(
        self,
        app: NotifyApplication,
        sender: MailSender,
        lock: LeaderLock,
        mail_from: str,
        refresh: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utcnow,
        idle_seconds: float = 1.0,
        batch_size: int = 50,
        lock_check_seconds: float = 5.0,
        record_every: int | None = None,
        gather_seconds: float = 0.1,
        reveal: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        self.app = app
        # Asks a secret's owner for what an email's SECRET_MARK stands for (accounts, for an
        # issued password); None from it: the secret is gone and the email is cancelled.
        self.reveal = reveal
        self.sender = sender
        self.lock = lock
        self.mail_from = mail_from
        self.refresh = refresh
        self.clock = clock
        self.idle_seconds = idle_seconds
        self.batch_size = batch_size
        # Recording often bounds what a crash sends twice. A sender for which a second send
        # changes nothing has no such bound to keep: its deliveries go in one record per pass.
        self.record_every = record_every or (
            batch_size if getattr(sender, "resend_changes_nothing", False) else 10)
        self.gather_seconds = gather_seconds
        self._last_pass = float("-inf")
        self.lock_check_seconds = lock_check_seconds
        self.wakeup = Wakeup()
        self.running = True
        self.loop = LeaderLoop("mailer", lock, self.wakeup, idle_seconds, lock_check_seconds,
                               failure_pause=idle_seconds)
        self.sent = 0
        self.failed = 0
        app.on_recorded(lambda _position: self.wakeup.set())

    def send_due(self) -> int:
        """One pass over the emails due now; return how many were attempted.

        Deliveries are recorded `record_every` at a time, in one transaction: a crash sends
        at most those again after the restart (at least once, never lost). That is 10 by
        default, or a whole pass for a sender that a second send changes nothing for.
        """
        self.refresh()  # the emails view follows the store; bring it up to date first
        attempted = 0
        delivered: list[tuple[Email, datetime]] = []
        due = self.app.pending(self.clock(), self.batch_size)
        emails = self.app.get_many(due)  # one query for the pass, not one per email
        try:
            for email_id in due:
                if not self.running:
                    break
                email = emails.get(email_id)
                if not isinstance(email, Email):  # not a stored email: the view is wrong
                    log.error("the emails view lists %s, which the store does not hold as an "
                              "email", email_id)
                    continue
                attempted += self._deliver(email, delivered)
                if len(delivered) >= self.record_every:
                    self._record_sent(delivered)
        finally:
            self._record_sent(delivered)
        return attempted

    def _deliver(self, email: Email, delivered: list[tuple[Email, datetime]]) -> int:
        if not email.is_due(self.clock()):  # the view lagged behind the store
            return 0
        if not email.recipient:  # its tenant's data was erased (concierge.vault) before it went
            self.app.cancel_email(email.id, ERASED, self.clock())
            return 1
        outgoing: Email | WithSecret = email
        if getattr(email, "secret", None):
            try:
                secret = self.reveal(email.secret) if self.reveal is not None else None
            except Exception as exc:  # its owner cannot answer now: try again later
                self._record_failure(email, f"cannot fetch what it carries: "
                                            f"{type(exc).__name__}", False)
                return 1
            if secret is None:
                self.app.cancel_email(email.id, SECRET_GONE, self.clock())
                return 1
            outgoing = WithSecret(email, secret)
        try:
            self.sender.send(email.id, Outgoing(outgoing, self.mail_from))  # type: ignore[arg-type]
        except SendFailed as exc:
            self._record_failure(email, exc.reason, exc.permanent)
            return 1
        except Exception as exc:
            self._record_failure(email, f"{type(exc).__name__}: {exc}", False)
            return 1
        delivered.append((email, self.clock()))
        return 1

    def _record_sent(self, delivered: list[tuple[Email, datetime]]) -> None:
        if not delivered:
            return
        flush = getattr(self.sender, "flush", None)
        if flush is not None:
            flush()
        self.app.record_sent_many(delivered, self.sender.transport)
        self.sent += len(delivered)
        delivered.clear()

    def _record_failure(self, email: Email, reason: str, permanent: bool) -> None:
        log.warning("email %s to %s not sent (attempt %d): %s", email.id, email.recipient,
                    email.attempts + 1, reason)
        self.app.record_failure(email.id, reason, self.clock(), permanent=permanent)
        self.failed += 1

    def _timeout(self) -> float:
        """Until the next retry falls due, at most the idle timeout."""
        due = self.app.next_due()
        now = self.clock()
        if due is None or due <= now:
            return self.idle_seconds
        return min(self.idle_seconds, max((due - now).total_seconds(), 0.01))

    def _gather(self) -> None:
        """Let the emails of the commits that follow a pass closely join the next one."""
        pause = self._last_pass + self.gather_seconds - time.monotonic()
        if pause > 0 and self.running:
            green.sleep(pause)
        self._last_pass = time.monotonic()

    def stop(self) -> None:
        self.running = False
        self.loop.stop()

    def run(self) -> None:
        """Lead or stand by; while leading, send what is due, then wait for a commit or a retry."""

        def step() -> float:
            self._gather()
            if self.send_due() >= self.batch_size:
                return 0  # more may be due right now
            return self._timeout()

        self.loop.run(step)
