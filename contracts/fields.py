"""marshmallow fields shared by the request schemas of every contract.

`Integer` is strict: marshmallow's own silently truncates 2.5 to 2 and accepts "3", so a caller's
mistake would be stored as something it never sent. Request bodies are JSON, where an integer is
a number; only query strings carry numbers as text, and their schemas (the gateway's `ListQuery`)
keep marshmallow's lenient field on purpose. Event schemas need neither: they read what a service
itself wrote.

The gateway refuses text no store can keep before a request reaches a service, but services are
also called over RPC directly (the CLI, operators, other services). `Text` gives those callers the
same field-named error instead of a database failure deep in a command: PostgreSQL refuses NUL in
text, and an unpaired surrogate cannot be encoded as UTF-8 by any store.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import fields

__all__ = ["EMAIL_PATTERN", "NUL_MESSAGE", "SURROGATE_MESSAGE", "Email", "Integer", "Text"]

NUL_MESSAGE = "Must not contain NUL characters."
# The one email rule of the platform (an address one context takes, every other takes too): the
# contracts' patterns and the domains' checks use this one.
EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
SURROGATE_MESSAGE = "Must not contain unpaired surrogates."

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class Text(fields.String):
    """A string that every store can keep: no NUL character, no unpaired surrogate.

    Checked while deserialising, before the field's validators, so the caller learns the real
    problem rather than a length or pattern message about an invisible character.
    """

    default_error_messages = {"nul": NUL_MESSAGE, "surrogate": SURROGATE_MESSAGE}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        found = _UNSTORABLE.search(text)
        if found is not None:
            raise self.make_error("nul" if found.group() == "\x00" else "surrogate")
        return text


class Email(Text, fields.Email):
    """marshmallow's Email field with Text's storability check."""


class Integer(fields.Integer):
    """An integer that must be sent as one: 2.5, 2.0 and "3" are refused, never coerced."""

    def __init__(self, *, strict: bool = True, **kwargs: Any) -> None:
        super().__init__(strict=strict, **kwargs)
