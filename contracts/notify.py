"""Notify contracts: the data of every notify event (emails and device pushes), and the
operators' email query.

Event schemas ignore unknown fields, as the envelope's version rule asks of subscribers. The
rendered bodies (`text`, `html`) stay in the notify store: subscribers learn that an email to whom
about what was queued, sent or given up, not its content. Times are ISO 8601 strings in UTC.
"""

from __future__ import annotations

from marshmallow import EXCLUDE, RAISE, Schema, fields, validate

from contracts.fields import Integer, Text

__all__ = [
    "EVENT_SCHEMAS",
    "EVENT_VERSION",
    "STATUSES",
    "TEMPLATES",
    "TRANSPORTS",
    "EmailCancelledSchema",
    "EmailFailedSchema",
    "EmailQuery",
    "EmailQueuedSchema",
    "EmailSentSchema",
    "EmailSummary",
    "PushExpiredSchema",
    "PushQueuedSchema",
    "PushSentSchema",
]

EVENT_VERSION = 1

# Same values as services/notify/domain.py and mailer.py.
# activation: a resident's app account; portal_password: a password the platform made for a
# portal account (a new sub-installer's, a reset's), filled in only when the email is sent.
TEMPLATES = ("activation", "portal_password", "password_reset_link", "login_code")
STATUSES = ("queued", "retrying", "sent", "failed", "cancelled")
TRANSPORTS = ("smtp", "mail-folder")
PER_PAGE_MAX = 100


class _EventData(Schema):
    class Meta:
        unknown = EXCLUDE


class EmailQueuedSchema(_EventData):
    """An email was rendered and waits for the mailer; the stream id is the email id."""

    cause_event_id = fields.UUID(required=True)
    template = fields.String(required=True)
    recipient = fields.String(required=True)
    subject = fields.String(required=True)
    apartment_id = fields.UUID(required=True, allow_none=True)
    installer_id = fields.UUID(required=True, allow_none=True)
    # The master account an activation email activates; added later (older events: None).
    master_account_id = fields.UUID(load_default=None, allow_none=True)


class EmailSentSchema(_EventData):
    """The transport accepted the message (an SMTP server, or the local mail folder)."""

    sent_at = fields.String(required=True)
    transport = fields.String(required=True)


class EmailFailedSchema(_EventData):
    """An attempt failed; `retry_at` is the next try, or None when `gave_up`."""

    reason = fields.String(required=True)
    attempts = fields.Integer(required=True)
    failed_at = fields.String(required=True)
    retry_at = fields.String(required=True, allow_none=True)
    gave_up = fields.Boolean(required=True)


class EmailCancelledSchema(_EventData):
    """A pending email will never be sent (its master account was closed)."""

    reason = fields.String(required=True)
    cancelled_at = fields.String(required=True)


class PushQueuedSchema(_EventData):
    """A device push waits for the pusher: the command devices queued (the stream id is the
    push's, derived from the command id)."""

    command_id = fields.String(required=True)
    device_id = fields.String(required=True)
    mac = fields.String(required=True)
    kind = fields.String(required=True)
    deadline = fields.String(required=True)


class PushSentSchema(_EventData):
    """The broker took the push for the device's queue (`devices.push`, routed by MAC)."""

    command_id = fields.String(required=True)
    device_id = fields.String(required=True)
    mac = fields.String(required=True)
    sent_at = fields.String(required=True)


class PushExpiredSchema(_EventData):
    """The command's deadline passed before the push could be sent: it never will be."""

    command_id = fields.String(required=True)
    device_id = fields.String(required=True)
    expired_at = fields.String(required=True)


EVENT_SCHEMAS: dict[str, type[Schema]] = {
    "PushQueued": PushQueuedSchema,
    "PushSent": PushSentSchema,
    "PushExpired": PushExpiredSchema,
    "EmailQueued": EmailQueuedSchema,
    "EmailSent": EmailSentSchema,
    "EmailFailed": EmailFailedSchema,
    "EmailCancelled": EmailCancelledSchema,
}


# --- operators' queries ----------------------------------------------------------------------


class EmailQuery(Schema):
    """`list_emails`: every filter optional; newest first."""

    class Meta:
        unknown = RAISE

    status = Text(validate=validate.OneOf(STATUSES))
    recipient = Text(validate=validate.Length(min=1, max=254))
    apartment_id = fields.UUID()
    installer_id = fields.UUID()
    # Strict: this query travels as an RPC payload (JSON), never as an HTTP query string. A
    # gateway route for it would parse the query string first, as its `ListQuery` does.
    page = Integer(load_default=1, validate=validate.Range(min=1))
    per_page = Integer(load_default=10, validate=validate.Range(min=1, max=PER_PAGE_MAX))


class EmailSummary(Schema):
    """One email as operators see it (no bodies)."""

    id = fields.String(required=True)
    template = fields.String(required=True)
    recipient = fields.String(required=True)
    subject = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    attempts = fields.Integer(required=True)
    queued_at = fields.String(required=True, allow_none=True)
    retry_at = fields.String(required=True, allow_none=True)
    sent_at = fields.String(required=True, allow_none=True)
    transport = fields.String(required=True, allow_none=True)
    last_error = fields.String(required=True, allow_none=True)
    cause_event_id = fields.String(required=True)
    apartment_id = fields.String(required=True, allow_none=True)
    installer_id = fields.String(required=True, allow_none=True)
