"""marshmallow fields shared by the request schemas of every contract.

`Integer` is strict: marshmallow's own silently truncates 2.5 to 2 and accepts "3", so a caller's
mistake would be stored as something it never sent (2.0 is 2, as JSON Schema counts it). Request
bodies are JSON, where an integer is a number; only query strings carry numbers as text, and
their schemas (the gateway's `ListQuery`) keep marshmallow's lenient field on purpose. Event
schemas need neither: they read what a service itself wrote.

The gateway refuses text no store can keep before a request reaches a service, but services are
also called over RPC directly (the CLI, operators, other services). `Text` gives those callers the
same field-named error instead of a database failure deep in a command: PostgreSQL refuses NUL in
text, and an unpaired surrogate cannot be encoded as UTF-8 by any store.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from marshmallow import fields, missing

__all__ = ["EMAIL_PATTERN", "NON_BLANK_PATTERN", "NUL_MESSAGE", "SPACE_CLASS", "SURROGATE_MESSAGE",
           "TEXT_PATTERN", "UNSTORABLE", "Boolean", "Email", "Integer", "List", "Text",
           "documented", "ecma", "optional", "padded", "stripped", "stripped_or_none"]

NUL_MESSAGE = "Must not contain NUL characters."
# The one email rule of the platform (an address one context takes, every other takes too): the
# contracts' patterns and the domains' checks use this one.
EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
SURROGATE_MESSAGE = "Must not contain unpaired surrogates."

# Text no store can keep: PostgreSQL refuses NUL, UTF-8 cannot encode lone surrogates.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

# What Python's `\s` and `str.strip()` take for white space, spelled out for JSON Schema: the
# `\s` of ECMA-262 (the dialect of JSON Schema patterns) lacks \x1c-\x1f and \x85 and adds
# \ufeff, so a document pattern that wrote `\s` would say another rule than the server checks.
SPACE_CLASS = (
    "\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
)

# The same rules in JSON Schema, for the OpenAPI document (services/gateway/openapi.py): text
# without NUL, and that text with at least one character that is not white space. (Unpaired
# surrogates are refused too; JSON Schema tools cannot all read a pattern that says so, and no
# JSON text generator makes them.)
TEXT_PATTERN = "^[^\\u0000]*$"
NON_BLANK_PATTERN = f"^[^\\u0000]*[^{SPACE_CLASS}\\u0000][^\\u0000]*$"

V = TypeVar("V", bound=Callable[..., Any])


def ecma(pattern: str) -> str:
    r"""A Python pattern in ECMA-262 syntax: `\Z` (end of text) is `$` there without flags, and
    `\s` is spelled out as Python means it (`SPACE_CLASS`)."""
    out: list[str] = []
    in_class = False
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            escape = pattern[index:index + 2]
            if escape == "\\Z":
                escape = "$"
            elif escape == "\\s":
                escape = SPACE_CLASS if in_class else f"[{SPACE_CLASS}]"
            elif escape == "\\S" and not in_class:
                escape = f"[^{SPACE_CLASS}]"
            out.append(escape)
            index += 2
            continue
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        out.append(char)
        index += 1
    return "".join(out)


def padded(pattern: str) -> str:
    """An ECMA-262 pattern (`ecma`) for `pattern` with white space around it: what a check of
    the stripped text against `pattern` accepts."""
    core = ecma(pattern).removeprefix("^").removesuffix("$")
    return f"^[{SPACE_CLASS}]*(?:{core})[{SPACE_CLASS}]*$"


def optional(pattern: str) -> str:
    """`padded`, or empty text: what such a check, skipped for empty text, accepts."""
    return f"^(?:|{padded(pattern)[1:-1]})$"


def documented(**json_schema: Any) -> Callable[[V], V]:
    """A validator function's rule as JSON Schema keywords, for the OpenAPI document: a rule
    in code is stated there too, so that a request made to the document is never refused."""

    def mark(validator: V) -> V:
        validator.json_schema = json_schema  # type: ignore[attr-defined]
        return validator

    return mark


def stripped(text: str) -> str:
    return text.strip()


def stripped_or_none(text: str) -> str | None:
    """Optional text: what is left after stripping, None when nothing is."""
    return text.strip() or None


class _Tidied(fields.Field):
    """A field whose loaded value is tidied (`tidy`) once its validators have passed: they
    judge what the caller sent, and what is stored is the one normal form of it."""

    def __init__(self, *args: Any, tidy: Callable[[Any], Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tidy = tidy

    def deserialize(self, value: Any, attr: str | None = None,
                    data: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        loaded = super().deserialize(value, attr, data, **kwargs)
        if self.tidy is None or loaded is None or loaded is missing:
            return loaded
        return self.tidy(loaded)


class List(_Tidied, fields.List):
    """marshmallow's List, with `tidy` (say, dropping empty items after counting them)."""


class Text(_Tidied, fields.String):
    """A string that every store can keep: no NUL character, no unpaired surrogate.

    Checked while deserialising, before the field's validators, so the caller learns the real
    problem rather than a length or pattern message about an invisible character.
    """

    default_error_messages = {"nul": NUL_MESSAGE, "surrogate": SURROGATE_MESSAGE}
    json_schema = {"pattern": TEXT_PATTERN}  # unless a validator states a stricter pattern

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        found = UNSTORABLE.search(text)
        if found is not None:
            raise self.make_error("nul" if found.group() == "\x00" else "surrogate")
        return text


class Email(Text, fields.Email):
    """marshmallow's Email field with Text's storability check."""


class Boolean(fields.Boolean):
    """A boolean that must be sent as one: "on", "true", 1 and 0 are refused, never coerced."""

    truthy: set[Any] = {True}
    falsy: set[Any] = {False}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class Integer(fields.Integer):
    """An integer that must be sent as one: 2.5 and "3" are refused, never coerced. 2.0 is
    the integer 2, as JSON Schema defines an integer (a number whose fraction is zero)."""

    def __init__(self, *, strict: bool = True, **kwargs: Any) -> None:
        super().__init__(strict=strict, **kwargs)

    def _validated(self, value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return super()._validated(value)
