"""The mailer's direct composer gives exactly the bytes the email package gives, or steps aside.

No I/O. `direct_bytes` exists for speed only (the email package's header registry made composing
the largest CPU cost of an activation email); these tests hold it to the reference, `compose`,
over emails drawn from a seeded generator: plain and non-ASCII text, long lines, CR and LF mixes,
headers that need quoting or encoded words.
"""

from __future__ import annotations

import email
import email.policy
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

from services.notify.mailer import Outgoing, compose, direct_bytes

TEMPLATES = Path(__file__).resolve().parents[2] / "services" / "notify" / "templates"
FROM = "SmartPlus Cloud <no-reply@smartplus.example>"


@dataclass
class Drawn:
    """What `compose` reads of an Email."""

    recipient: str
    subject: str
    text: str
    html: str
    id: UUID = field(default_factory=uuid4)
    created_on: datetime = datetime(2025, 3, 1, 8, 30, tzinfo=UTC)


def reference(drawn: Drawn, mail_from: str = FROM) -> bytes:
    return compose(drawn, mail_from).as_bytes(policy=email.policy.SMTP)  # type: ignore[arg-type]


PIECES = ["Hello", "Zoë", "Ünïcødé", "日本", "=", "=?utf-8?q?x?=", ".", "From me", " ", "  ",
          "\t", "a" * 90, "b" * 78, "c" * 77, "\n", "\r\n", "\r", "\n\n", "<p>", "&amp;", "é" * 40]
SUBJECTS = ["Activate your SmartPlus account", "Hi", "x" * 69, "x" * 70, "Zoë's account",
            "two  spaces", " leading", "trailing ", "=?utf-8?q?hi?=", "tab\there", "a,b;c:d"]
RECIPIENTS = ["judy@example.com", "r0001@example.org", "first.last+tag@mail.example.co.uk",
              "zoë@example.com", "\"quoted\"@example.com", "x@localhost",
              "a" * 70 + "@example.com"]
FROMS = [FROM, "no-reply@smartplus.example", "SmartPlus <no-reply@smartplus.example>",
         "Smart.Plus <no-reply@smartplus.example>", "Zoë <z@example.com>",
         "\"Quoted, Name\" <q@example.com>"]


def a_body(rng: random.Random) -> str:
    body = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 40)))
    return body if body.strip() else body + "x"


def test_the_direct_bytes_are_the_email_packages_bytes_or_nothing() -> None:
    rng = random.Random(20261124)
    built = 0
    for _ in range(1500):
        drawn = Drawn(recipient=rng.choice(RECIPIENTS), subject=rng.choice(SUBJECTS),
                      text=a_body(rng), html=a_body(rng),
                      created_on=datetime(2025, 1, 1, tzinfo=UTC)
                      + timedelta(seconds=rng.randint(0, 10**8)))
        mail_from = rng.choice(FROMS)
        direct = direct_bytes(drawn, mail_from)  # type: ignore[arg-type]
        if direct is not None:
            built += 1
            assert direct == reference(drawn, mail_from), (drawn, mail_from)
    assert built > 100  # the common case really takes the direct path


def test_the_activation_template_takes_the_direct_path() -> None:
    drawn = Drawn(recipient="judy@example.com", subject="Activate your SmartPlus account",
                  text=(TEMPLATES / "activation.txt").read_text(),
                  html=(TEMPLATES / "activation.html").read_text())

    direct = direct_bytes(drawn, FROM)  # type: ignore[arg-type]

    assert direct is not None and direct == reference(drawn)


def test_an_outgoing_message_falls_back_to_the_email_package_for_an_unusual_header() -> None:
    drawn = Drawn(recipient="judy@example.com", subject="Zoë's account", text="Hello Zoë",
                  html="<p>Hello Zoë</p>")

    outgoing = Outgoing(drawn, FROM)  # type: ignore[arg-type]

    assert direct_bytes(drawn, FROM) is None  # type: ignore[arg-type]
    assert outgoing.as_bytes() == reference(drawn)
    parsed = email.message_from_bytes(outgoing.as_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == "Zoë's account"
