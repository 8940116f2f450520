"""The notify service: its (few) nameko entrypoints; its declaration says how it is wired.

Notify reacts to other services' events; its only RPC is for operators and tests.
"""

from __future__ import annotations

from typing import Any

from concierge.rpc import command, rpc
from concierge.runtime import Runtime, ServiceBase
from contracts import load
from contracts.notify import EmailQuery, EmailSummary
from services.notify.declaration import CONTEXT


class NotifyService(ServiceBase):
    name = CONTEXT.name
    runtime = Runtime(CONTEXT.wire)

    @rpc
    @command
    def list_emails(self, ctx: dict[str, Any] | None, query: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
        """Emails and their delivery state, newest first (operators and tests)."""
        page = self.runtime.app.list_emails(load(EmailQuery, query or {}))
        page["items"] = EmailSummary(many=True).dump(page["items"])
        return page
