"""Notify's declaration: emails and device pushes for what happens elsewhere.

Which mail transport is used is decided here and nowhere else: SMTP when `CONCIERGE_SMTP_HOST`
is set, the local mail folder (`<data dir>/mail`) otherwise.
"""

from __future__ import annotations

from typing import Any

from concierge.config import Settings
from concierge.contexts import BoundedContext, Policy
from concierge.locks import leader_lock
from concierge.mailboxes import Mailboxes
from concierge.runtime import Wiring
from contracts.notify import EVENT_SCHEMAS
from contracts.traffic import PUSH_EXCHANGE, PUSH_QUEUE_ARGUMENTS, push_queue_name
from services.notify.application import ACCOUNTS_EVENTS, DEVICES_EVENTS, NotifyApplication
from services.notify.mailer import Mailer, MailFolderSender, MailSender, SmtpSender
from services.notify.projections import EmailsView, NotifyKeys, PendingPushesView
from services.notify.pusher import Pusher


def mail_sender(settings: Settings) -> MailSender:
    if settings.smtp_host:
        return SmtpSender(settings)
    return MailFolderSender(settings.data_dir / "mail")


def start_mailer(wiring: Wiring) -> None:
    """One mailer at a time across the replicas sends what the emails view says is due; it
    runs after the chassis has wired the view, so its wake-up follows the view's catch-up."""
    app = wiring.app
    assert isinstance(app, NotifyApplication) and app.sender is not None
    settings = wiring.settings
    remote = wiring.remote

    def reveal(secret: dict[str, Any]) -> str | None:
        """An issued password or a reset link's token, from accounts, as the email is sent
        (never stored here)."""
        if remote is None:
            return None
        return remote.call("accounts", "reveal_secret", str(secret.get("kind")),
                           secret["account_id"], int(secret["issue"]))

    wiring.add_loop(Mailer(app, app.sender, leader_lock("notify", settings, wiring.engine,
                                                        "mailer"),
                           settings.mail_from, refresh=wiring.catch_up_local,
                           idle_seconds=settings.relay_idle_seconds, reveal=reveal))


def start_pusher(wiring: Wiring) -> None:
    """One pusher at a time across the replicas sends the device pushes that devices' commands
    asked for, to each device's mailbox on `devices.push`."""
    app = wiring.app
    assert isinstance(app, NotifyApplication)
    settings = wiring.settings
    prefix = settings.amqp_prefix
    mailboxes = Mailboxes(settings.amqp_uri, f"{prefix}{PUSH_EXCHANGE}",
                          lambda mac: push_queue_name(mac, prefix), PUSH_QUEUE_ARGUMENTS)
    wiring.add_loop(Pusher(app, mailboxes, leader_lock("notify", settings, wiring.engine,
                                                       "pusher"),
                           refresh=wiring.catch_up_local, idle_seconds=settings.relay_idle_seconds))


def describe(settings: Settings) -> str:
    if settings.smtp_host:
        return f"mail by SMTP to {settings.smtp_host}:{settings.smtp_port}"
    return f"mail written to {(settings.data_dir / 'mail').resolve()}"


CONTEXT = BoundedContext(
    name="notify",
    service="services.notify.service:NotifyService",
    application=NotifyApplication,
    options=lambda settings: {"sender": mail_sender(settings),
                              "portal_url": settings.portal_address},
    read_models=lambda app: [EmailsView(), PendingPushesView(), NotifyKeys()],
    # Their data loaded through these schemas. A close reads the emails view, which shows
    # nothing of a unit not yet recorded: alone.
    policies=[Policy("accounts", ACCOUNTS_EVENTS, "on_accounts_event",
                     alone={"MasterAccountClosed", "MasterAccountReset"}, lookups="lookups",
                     schemas=ACCOUNTS_EVENTS),
              Policy("devices", set(DEVICES_EVENTS), "on_devices_event", schemas=DEVICES_EVENTS)],
    event_schemas=EVENT_SCHEMAS,
    started=[start_mailer, start_pusher],
    describe=describe,
)
