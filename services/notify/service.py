"""The notify service: its composition root and its (few) nameko entrypoints.

Notify reacts to other services' events; its only RPC is for operators and tests. Which mail
transport is used is decided here and nowhere else: SMTP when `CONCIERGE_SMTP_HOST` is set, the
local mail folder (`<data dir>/mail`) otherwise.
"""

from __future__ import annotations

from typing import Any

from concierge.config import Settings
from concierge.rpc import command, rpc
from concierge.runtime import Runtime, ServiceBase, Wiring, assemble, leader_lock, open_store
from concierge.subscription import ProcessHandler
from contracts import load
from contracts.notify import EVENT_SCHEMAS, EmailQuery, EmailSummary
from services.notify.application import ACCOUNTS_EVENTS, EmailsView, NotifyApplication
from services.notify.mailer import Mailer, MailFolderSender, MailSender, SmtpSender

SERVICE = "notify"


def mail_sender(settings: Settings) -> MailSender:
    if settings.smtp_host:
        return SmtpSender(settings)
    return MailFolderSender(settings.data_dir / "mail")


def bootstrap(settings: Settings, sender: MailSender | None = None) -> Wiring:
    app, engine = open_store(SERVICE, settings, NotifyApplication)
    assert isinstance(app, NotifyApplication)
    app.emails = EmailsView(engine)
    # A close reads the emails view, which shows nothing of a unit not yet recorded.
    policy = ProcessHandler(SERVICE, app, set(ACCOUNTS_EVENTS), app.on_accounts_event,
                            alone={"MasterAccountClosed"}, lookups=app.lookups)
    wiring = assemble(Wiring(SERVICE, settings, app, engine, read_models=[app.emails],
                             policies=[("accounts", policy)], event_schemas=EVENT_SCHEMAS))
    # A close cancels the pending emails the view lists: it reads the view caught up first.
    app.refresh_emails = wiring.catch_up_local
    # Built after assemble: its wake-up then follows the emails view's catch-up on each commit.
    lock = leader_lock(SERVICE, settings, engine, "mailer")
    mailer = Mailer(app, sender or mail_sender(settings), lock, settings.mail_from,
                    refresh=wiring.catch_up_local, idle_seconds=settings.relay_idle_seconds)
    wiring.background.append(mailer.run)
    wiring.stoppers.append(mailer.stop)
    wiring.extras["mailer"] = mailer
    return wiring


class NotifyService(ServiceBase):
    name = SERVICE
    runtime = Runtime(bootstrap)

    @rpc
    @command
    def list_emails(self, ctx: dict[str, Any] | None, query: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
        """Emails and their delivery state, newest first (operators and tests)."""
        page = self.runtime.app.list_emails(load(EmailQuery, query or {}))
        page["items"] = EmailSummary(many=True).dump(page["items"])
        return page
