"""URIs are printed and logged without their passwords (issue 14, finding 8)."""

from __future__ import annotations

import pytest

from concierge.logs import mask_uri, printable


@pytest.mark.parametrize(("uri", "shown"), [
    ("amqp://guest:guest@127.0.0.1:5672/hA", "amqp://guest:***@127.0.0.1:5672/hA"),
    ("amqp://user:p%40ss%3Aw0rd@rabbit/", "amqp://user:***@rabbit/"),
    ("postgresql://postgres:secret@db:5432/concierge", "postgresql://postgres:***@db:5432/concierge"),
    ("amqp://a:one@h1//;amqp://a:two@h2//", "amqp://a:***@h1//;amqp://a:***@h2//"),
    ("amqp://guest@127.0.0.1/", "amqp://guest@127.0.0.1/"),
    ("postgresql://postgres@127.0.0.1:5432/x", "postgresql://postgres@127.0.0.1:5432/x"),
    ("concierge-memory://", "concierge-memory://"),
    ("amqp://u:pw@[::1", "<unparseable URI>"),
])
def test_a_uri_is_shown_without_its_password(uri: str, shown: str) -> None:
    assert mask_uri(uri) == shown


def test_printable_text_is_one_short_line() -> None:
    assert printable("a\nb\x1b[31m") == "a\\nb\\x1b[31m"
    assert printable("x" * 500, 10) == "x" * 10 + "..."
