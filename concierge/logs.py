"""What a service process writes to its log: refused requests in one line, URIs without passwords.

Anyone who can reach the gateway can make a service refuse a request. nameko logs every refusal
(an entrypoint's expected exception) at WARNING with its traceback, twice when the error was
raised from another (a marshmallow error behind an Invalid): about a kilobyte a request, so a
stranger could fill the disk. `install()` turns each into one bounded line, at INFO, or at DEBUG
for a 401 (a missing, expired or wrong credential is the most ordinary request there is).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# The logger nameko's container writes entrypoint failures to (nameko 2.14, containers.py).
CONTAINER_LOGGER = "nameko.containers"
EXPECTED_PREFIX = "(expected)"
# A refusal's detail can echo what the caller sent; a line stays this short whatever it was.
DETAIL_MAX = 200
FIELDS_MAX = 10


def mask_uri(uri: str) -> str:
    """The URI with its password as `***` (`amqp://guest:***@host:5672/vhost`); kombu's
    failover lists (`;`-separated URIs) are masked one by one."""
    return ";".join(_mask_one(part) for part in uri.split(";"))


def _mask_one(uri: str) -> str:
    try:
        parts = urlsplit(uri)
        has_password = parts.password is not None
    except ValueError:  # an unparseable URI may still hold a password: print none of it
        return "<unparseable URI>"
    if not has_password:
        return uri
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def printable(text: str, limit: int = DETAIL_MAX) -> str:
    """Text safe for one log line: control characters escaped, cut to `limit` characters."""
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


class RefusalsInOneLine(logging.Filter):
    """On nameko's container logger: an expected exception (a refused request) becomes one line
    with no traceback, at INFO, or DEBUG for a 401; anything else passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None or not str(record.msg).startswith(EXPECTED_PREFIX):
            return True
        status = getattr(error, "status", None)
        level = logging.DEBUG if status == 401 else logging.INFO
        # The logger let the record through at WARNING; at the lower level it may not want it.
        if not logging.getLogger(record.name).isEnabledFor(level):
            return False
        worker = record.args[0] if isinstance(record.args, tuple) and record.args else None
        record.levelno, record.levelname = level, logging.getLevelName(level)
        record.msg = "%s refused: %s"
        record.args = (_entrypoint(worker), describe(error))
        record.exc_info = None
        record.exc_text = None
        return True


def _entrypoint(worker: Any) -> str:
    service = getattr(worker, "service_name", None)
    method = getattr(getattr(worker, "entrypoint", None), "method_name", None)
    return f"{service}.{method}" if service and method else "a worker"


def describe(error: BaseException) -> str:
    """`Invalid 422: Invalid input [name, time_zone]`: the error, its status, its detail cut
    short, and the names of at most ten bad fields."""
    status = getattr(error, "status", None)
    detail = getattr(error, "detail", None)
    text = printable(str(detail if detail is not None else error))
    fields = getattr(error, "errors", None)
    if isinstance(fields, dict) and fields:
        names = [printable(str(name), 40) for name in list(fields)[:FIELDS_MAX]]
        more = ", ..." if len(fields) > FIELDS_MAX else ""
        text += f" [{', '.join(names)}{more}]"
    return f"{type(error).__name__}{f' {status}' if status else ''}: {text}"


_installed = False


def install() -> None:
    """Put the refusal filter on nameko's container logger (idempotent); every service process
    calls it when it starts (concierge.serve.start)."""
    global _installed
    if _installed:
        return
    logging.getLogger(CONTAINER_LOGGER).addFilter(RefusalsInOneLine())
    _installed = True
