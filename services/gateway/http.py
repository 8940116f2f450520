"""HTTP plumbing of the gateway: routes, authentication, request parsing and problem+json errors.

`service.py` declares each route with `@api(...)` and stays one RPC call per route; everything a
route has in common (who is calling, is the body valid, which status an error maps to) lives here
so no route can forget it. Errors always leave as `application/problem+json`, never as nameko's
plain-text or werkzeug's HTML pages, nor as the bytes eventlet.wsgi and the standard library
answer malformed HTTP with (`ApiProtocol`).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from eventlet import wsgi
from marshmallow import Schema, ValidationError, fields, validate
from nameko.exceptions import UnknownService
from nameko.extensions import DependencyProvider
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import HttpOnlyProtocol, WebServer, WsgiApp
from werkzeug.exceptions import (
    ClientDisconnected,
    HTTPException,
    MethodNotAllowed,
    RequestEntityTooLarge,
)
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import RequestRedirect
from werkzeug.wrappers import Request, Response

from concierge import idempotency
from concierge.green import DeadlineExceeded, deadline, time_left, time_limit
from concierge.logs import printable
from concierge.rpc import SignatureReadOnce, as_contract_error
from contracts import load
from contracts.accounts import APP_STATUSES, LOCKOUT_SECONDS, PM_SORTS, SUB_ACCOUNT_SORTS
from contracts.devices import (
    COMMAND_STATES,
    DEVICE_SORTS,
    DEVICE_TYPES,
    MAC_SORTS,
    THIRD_PARTY_SORTS,
)
from contracts.errors import (
    Busy,
    ConciergeError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    PaymentRequired,
    TooManyAttempts,
    Unauthorized,
)
from contracts.fields import TEXT_PATTERN, UNSTORABLE
from contracts.topology import BUILDING_SORTS, COMMUNITY_SORTS, RESIDENT_SORTS

log = logging.getLogger(__name__)
access_log = logging.getLogger("services.gateway.access")

PROBLEM_JSON = "application/problem+json"
# Routes that change something: each takes an Idempotency-Key.
WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
MAX_BODY_BYTES = 1024 * 1024
MAX_BODY_DEPTH = 32
MAX_TOKEN_CHARS = 512
PER_PAGE_DEFAULT = 10
PER_PAGE_MAX = 100
# Far beyond any real list, small enough that no database offset overflows (topology agrees).
PAGE_MAX = 100_000
# A body read waits this long for the client's next bytes, then answers 408 (nameko config key
# from CONCIERGE_GATEWAY_BODY_TIMEOUT_SECONDS); below the gateway's deadline, so a slow client
# never looks like a slow service (504).
BODY_TIMEOUT_SECONDS = 5.0
BODY_TIMEOUT_CONFIG_KEY = "GATEWAY_BODY_TIMEOUT_SECONDS"
# A connection that sends nothing for this long is closed: between requests (keep-alive), in
# its request line or in its headers (from CONCIERGE_GATEWAY_IDLE_TIMEOUT_SECONDS). Without it
# a client that opens connections and stops sending holds each one for ever.
IDLE_TIMEOUT_SECONDS = 30.0
IDLE_TIMEOUT_CONFIG_KEY = "GATEWAY_IDLE_TIMEOUT_SECONDS"
# What the gateway reads of a body it did not take before it gives the connection up, and for
# how long it drains a connection it closes with bytes unread (see ApiProtocol).
DISCARD_MAX_BYTES = 64 * 1024 * 1024
LINGER_MAX_BYTES = 64 * 1024 * 1024
LINGER_SECONDS = 5.0
ACCESS_LINE_MAX = 300
SESSION_CACHE_SECONDS = 5.0
SESSION_CACHE_SIZE = 10_000
# nameko config key; tests raise it so a cached session outlives a slow machine.
SESSION_CACHE_CONFIG_KEY = "GATEWAY_SESSION_CACHE_SECONDS"


class Malformed(Invalid):
    """The body is not a JSON object at all (400), as opposed to an object with bad fields;
    or a query parameter is not text at all."""

    status = 400

    def __init__(self, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(message, errors or {"body": [message]})


class BodyTooSlow(ConciergeError):
    """The client stopped sending its body (408): its fault, not a slow service's (504)."""

    status = 408
    title = "Request timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, {"body": [message]})


# The one table from error class to HTTP status (looked up along the class's MRO, so an error
# subclass raised inside a service maps as its contract base). Equal to the `status` each
# contract error declares; a unit test keeps them equal.
ERROR_STATUS: dict[type[Exception], int] = {
    Malformed: 400,
    BodyTooSlow: 408,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Invalid: 422,
    PaymentRequired: 402,  # a paid item (an Additional App) not paid for
    TooManyAttempts: 429,  # failed logins or codes: locked out for a while
    Busy: 503,  # e.g. accounts has as many logins in hand as it takes
    ConciergeError: 400,
    UnknownService: 503,  # the service is not running: nobody consumes its RPC queue
    DeadlineExceeded: 504,  # a service did not answer in time
}

# What a client should do next, for the statuses that have an answer to that.
RETRY_HEADERS: dict[int, dict[str, str]] = {
    401: {"WWW-Authenticate": "Bearer"},
    429: {"Retry-After": str(LOCKOUT_SECONDS)},
    503: {"Retry-After": "1"},
}

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
_TOKEN = re.compile(r"[\x21-\x7e]+\Z")
_SORT = r"^-?[a-z][a-z0-9_]{0,39}\Z"
NOT_UTF8 = "Must be UTF-8 text, percent-encoded."


# --- problem+json --------------------------------------------------------------------------


def problem_kind(status: int) -> str:
    """The `type` URI of a problem: one per HTTP status, stable for clients to match on."""
    slug = HTTP_STATUS_CODES.get(status, "error").lower().replace(" ", "-").replace("'", "")
    return f"urn:concierge:problem:{slug}"


def problem_body(status: int, detail: str, errors: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    return {
        "type": problem_kind(status),
        "title": HTTP_STATUS_CODES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "errors": errors or {},
    }


def problem(status: int, detail: str, errors: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(problem_body(status, detail, errors)), status=status,
                    headers=headers, content_type=PROBLEM_JSON)


def problem_from_http(exc: HTTPException) -> Response:
    """werkzeug's routing errors (unknown route, wrong method, body too large) as problems."""
    status = exc.code or 500
    headers = {}
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    detail = {
        404: "No such route.",
        405: "This route does not accept that method.",
        413: f"The body is larger than {MAX_BODY_BYTES} bytes.",
    }.get(status, exc.description or "")
    errors = {"body": [detail]} if status == 413 else {}
    return problem(status, detail, errors, headers)


def problem_from(exc: Exception, request_id: str) -> Response:
    """Map an error to its problem response; anything unexpected becomes a logged, bare 500."""
    if isinstance(exc, HTTPException):
        return problem_from_http(exc)
    if not isinstance(exc, ConciergeError):
        exc = as_contract_error(exc) or exc  # a contract error nameko could not rebuild
    status = next((ERROR_STATUS[c] for c in type(exc).__mro__ if c in ERROR_STATUS), 500)
    if isinstance(exc, ConciergeError):
        headers = RETRY_HEADERS.get(status)
        return problem(status, exc.detail, exc.errors, headers)
    if status == 503:
        log.warning("request %s: %r", request_id, exc)
        return problem(503, "A service needed for this request is not running; retry later.")
    if status == 504:
        log.warning("request %s: %r", request_id, exc)
        return problem(504, "A service needed for this request did not answer in time; "
                            "retry later.")
    log.exception("request %s failed", request_id)
    return problem(500, f"Something went wrong on our side (request id {request_id}).")


# --- the nameko entrypoint ------------------------------------------------------------------


class ApiWsgiApp(WsgiApp):
    """nameko's WSGI app, but routing errors answer in problem+json and bodies are bounded."""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ, shallow=True)
        # One byte more than we take, so a chunked body of exactly the limit can be told from a
        # longer one (werkzeug stops a stream at the limit without saying whether more came).
        request.max_content_length = MAX_BODY_BYTES + 1
        adapter = self.url_map.bind_to_environ(environ)
        try:
            provider, values = adapter.match()
        except RequestRedirect as exc:  # a trailing slash or doubled slash: a plain redirect
            return exc(environ, start_response)
        except HTTPException as exc:
            return problem_from_http(exc)(environ, start_response)
        request.path_values = values
        return provider.handle_request(request)(environ, start_response)


class BodyTimeout(Exception):
    """The client stopped sending its body (not an OSError: werkzeug would call that a
    disconnect)."""


class ApiInput(wsgi.Input):
    """eventlet's request body, with a time limit on every read and a bounded skip.

    A read that waits longer than `timeout` for the client raises BodyTimeout, and one that
    fails marks the connection to be closed (`broken`): what is left of its bytes is unknown.
    """

    def __init__(self, inner: wsgi.Input, timeout: float, broken: Callable[[], None]) -> None:
        super().__init__(inner.rfile, inner.content_length, inner.get_socket(), inner.wfile,
                         inner.wfile_line, inner.chunked_input)
        self.timeout = timeout
        self.broken = broken

    def read(self, length: int | None = None) -> bytes:
        return self._timed(super().read, length)

    def readline(self, size: int | None = None) -> bytes:
        return self._timed(super().readline, size)

    def _timed(self, read: Callable[[int | None], bytes], size: int | None) -> bytes:
        try:
            with time_limit(self.timeout, BodyTimeout(f"no body for {self.timeout:g} s")):
                return read(size)
        except BaseException:
            self.broken()
            raise

    @property
    def unread(self) -> bool:
        """Whether the client may still be sending this request's body."""
        if self.chunked_input:
            return self.chunk_length != 0
        return self.position < (self.content_length or 0)

    def discard(self, buffer_size: int = 16 << 10) -> None:
        """Skip what the app left of the body, so the connection can serve the next request;
        a body too long or too slow to skip closes the connection instead."""
        left = DISCARD_MAX_BYTES
        try:
            while left > 0:
                chunk = self.read(min(buffer_size, left))
                if not chunk:
                    return
                left -= len(chunk)
        except (OSError, ValueError, BodyTimeout):
            pass
        self.broken()


# Refusals eventlet (or the standard library under it) makes before the app sees a request.
PROTOCOL_DETAILS = {
    400: "The request is not HTTP: its request line or headers cannot be read.",
    414: f"The request line is longer than {wsgi.MAX_REQUEST_LINE} bytes.",
    431: f"A header line is longer than {wsgi.MAX_HEADER_LINE} bytes, or the headers are "
         f"more than {wsgi.MAX_TOTAL_HEADER_SIZE} bytes or 100 lines.",
    501: "The only Transfer-Encoding this server reads is 'chunked'.",
    505: "This server speaks HTTP/1.0 and HTTP/1.1.",
}
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}\Z")


class ApiProtocol(HttpOnlyProtocol):
    """eventlet.wsgi's request handler as nameko runs it, hardened against broken clients.

    eventlet answers a long request line, long headers and a bad Content-Length with canned
    bytes of its own (an empty 414 or 400, no body), and the standard library under it with an
    HTML page; here each is problem+json. A chunked body reaches the app (eventlet reads it
    but does not say so: `wsgi.input_terminated`), every read of a body is bounded in time
    (ApiInput), and a connection closed before its request was read to the end is drained
    for a moment first (`_linger`): closed with bytes unread, the kernel resets it, and the
    client loses the answer it was sent. Overrides `_read_request_line`, a private method of
    eventlet 0.41.3 (pinned); the hardening tests fail if a release changes it.
    """

    server: Any
    _linger = False

    def _read_request_line(self) -> bytes | str:
        line = super()._read_request_line()
        if len(line) >= self.server.url_length_limit:
            self.refuse(414, requested=line[:80])
            return ""  # eventlet closes the connection without a word of its own
        return line

    def parse_request(self) -> bool:
        try:
            if not super().parse_request():
                return False
        except (wsgi.HeaderLineTooLong, wsgi.HeadersTooLarge):
            self.refuse(431)
            return False
        lengths = {value.strip() for value in self.headers.get_all("Content-Length") or ()}
        coding = self.headers.get("Transfer-Encoding")
        if lengths and (len(lengths) > 1 or not all(map(_CONTENT_LENGTH.match, lengths))):
            self.refuse(400, "Content-Length must be one number of bytes.")
            return False
        if lengths and coding is not None:
            self.refuse(400, "Send Content-Length or Transfer-Encoding, not both.")
            return False
        if coding is not None and coding.strip().lower() != "chunked":
            self.refuse(501)
            return False
        return True

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        # The standard library's refusals (a garbage request line, HTTP/2.0, 101 headers):
        # its HTML page, without even a status line when the request line was unreadable.
        self.refuse(code if code in PROTOCOL_DETAILS else 400)

    def refuse(self, status: int, detail: str | None = None,
               requested: bytes | str | None = None) -> None:
        """Answer a request the app never sees, and close the connection."""
        body = json.dumps(problem_body(status, detail or PROTOCOL_DETAILS[status])).encode()
        head = (f"HTTP/1.1 {status} {HTTP_STATUS_CODES.get(status, 'Error')}\r\n"
                f"Content-Type: {PROBLEM_JSON}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode("ascii")
        self.close_connection = True
        self._linger = True
        with contextlib.suppress(OSError):
            self.wfile.write(head + body)
            self.wfile.flush()
        if requested is None:
            requested = getattr(self, "raw_requestline", b"") or b""
        if isinstance(requested, bytes):
            requested = requested.decode("latin-1")
        self.server.log.info(f'{status} - - - "{requested.strip()}"')

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        body = ApiInput(environ["eventlet.input"], self.server.body_timeout, self._broken)
        environ["wsgi.input"] = environ["eventlet.input"] = body
        if body.chunked_input:
            environ["wsgi.input_terminated"] = True
        return environ

    def _broken(self) -> None:
        self.close_connection = 1
        self._linger = True

    def finish(self) -> None:
        body = getattr(self, "environ", {}).get("eventlet.input")
        if self._linger or (isinstance(body, ApiInput) and body.unread):
            self._drain()
        super().finish()

    def _drain(self) -> None:
        """Half-close, then read and drop what the client still sends, for a bounded time."""
        sock = self.connection
        with contextlib.suppress(OSError):
            self.wfile.flush()
            sock.shutdown(socket.SHUT_WR)
        left = LINGER_MAX_BYTES
        with contextlib.suppress(OSError, BodyTimeout), time_limit(
                LINGER_SECONDS, BodyTimeout("linger")):
            while left > 0:
                chunk = sock.recv(min(left, 64 << 10))
                if not chunk:
                    return
                left -= len(chunk)


class AccessLog:
    """eventlet.wsgi's log on a Logger: a request's line at INFO, a 401's at DEBUG (the most
    ordinary refusal there is, and anyone can make one), every line escaped and cut short,
    since the request line is whatever the client sent."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        text = msg % args if args else msg
        if text.startswith("Traceback"):  # the app raised: a bug of ours, kept whole
            self.logger.error("%s", text)
            return
        level = logging.DEBUG if text.startswith("401 ") else logging.INFO
        if self.logger.isEnabledFor(level):
            self.logger.log(level, "%s", printable(text, ACCESS_LINE_MAX))

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("%s", printable(msg % args if args else msg, ACCESS_LINE_MAX))

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.logger.error("%s", printable(msg % args if args else msg, ACCESS_LINE_MAX))

    def write(self, msg: str, *args: Any) -> None:
        self.info(msg, *args)


class ApiServer(WebServer):
    def get_wsgi_app(self) -> ApiWsgiApp:
        return ApiWsgiApp(self)

    def get_wsgi_server(self, sock: Any, wsgi_app: Any, protocol: Any = ApiProtocol,
                        debug: bool = False) -> Any:
        server = super().get_wsgi_server(sock, wsgi_app, protocol=protocol, debug=debug)
        server.body_timeout = float(self.container.config.get(
            BODY_TIMEOUT_CONFIG_KEY, BODY_TIMEOUT_SECONDS))
        idle = float(self.container.config.get(IDLE_TIMEOUT_CONFIG_KEY, IDLE_TIMEOUT_SECONDS))
        # eventlet: `keepalive` bounds the wait for a request line, `socket_timeout` every
        # other read and write of the connection (nameko sets it on each accepted socket).
        server.keepalive = idle
        server.socket_timeout = idle
        # The status first and the request line last, so that cutting a line short keeps
        # the status and cuts only what the client sent.
        server.log_format = ('%(status_code)s %(wall_seconds).3f %(body_length)s '
                             '%(client_ip)s "%(request_line)s"')
        server.log = AccessLog(access_log)
        return server

    def process_request(self, sock: socket.socket, address: Any) -> None:
        # Without TCP_NODELAY a response of more than a few segments waits out the client's
        # delayed ACK (40 ms on Linux) on its last segment: measured on GET /openapi.json.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().process_request(sock, address)


class ApiEndpoint(SignatureReadOnce, HttpRequestHandler):
    """nameko's `http` entrypoint on the problem+json server."""

    server = ApiServer()

    def response_from_exception(self, exc: Exception) -> Response:
        # Only reached if the route wrapper itself failed; the wrapper answers every error.
        log.error("gateway entrypoint failed: %r", exc)
        return problem(500, "Something went wrong on our side.")


# --- routes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One HTTP route: what it accepts and answers, for the wrapper and for OpenAPI."""

    name: str
    method: str
    path: str
    summary: str
    tag: str
    # What a client must know beyond the summary and the schemas (OpenAPI `description`).
    description: str = ""
    body: type[Schema] | None = None
    query: type[Schema] | None = None
    status: int = 200
    # A marshmallow schema or the name of a schema in openapi.BUILTIN_SCHEMAS; None: no body.
    returns: type[Schema] | str | None = "Resource"
    auth: bool = True
    roles: tuple[str, ...] = ()
    # Where a created resource lives, filled in from the response ("/api/v1/x/{id}").
    location: str | None = None
    # Error statuses beyond the ones the route's shape implies (see openapi.error_statuses).
    errors: tuple[int, ...] = ()
    calls_rpc: bool = True


@dataclass(frozen=True)
class Call:
    """A parsed request as a route method sees it."""

    ctx: dict[str, Any]
    body: dict[str, Any] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    token: str | None = None


class Gatekeeper(Protocol):
    timeout_seconds: float
    trusted_proxies: int

    def principal(self, token: str) -> dict[str, Any]: ...


Handler = Callable[..., Any]


def api(method: str, path: str, *, summary: str, tag: str, **options: Any) -> Callable[
        [Handler], Handler]:
    """Declare a route: the method receives a `Call` (authenticated, validated) and path ids."""

    def decorate(fn: Handler) -> Handler:
        route = Route(fn.__name__, method, path, summary, tag, **options)

        @functools.wraps(fn)
        def endpoint(service: Gatekeeper, request: Request, **values: Any) -> Response:
            return serve(service, route, fn, request, values)

        endpoint.route = route  # type: ignore[attr-defined]
        return ApiEndpoint.decorator(method, path)(endpoint)

    return decorate


def routes_of(service_cls: type) -> list[Route]:
    """Every route a service class declares, in declaration order."""
    return [fn.route for fn in vars(service_cls).values() if hasattr(fn, "route")]


def serve(service: Gatekeeper, route: Route, fn: Handler, request: Request,
          values: dict[str, Any]) -> Response:
    request_id = _request_id(request)
    try:
        with deadline(service.timeout_seconds):
            call = parse(service, route, request, request_id)
            result = fn(service, call, **{name: str(value) for name, value in values.items()})
        response = respond(route, result)
    except Exception as exc:
        response = problem_from(exc, request_id)
    response.headers["X-Request-Id"] = request_id
    return response


def respond(route: Route, result: Any) -> Response:
    if isinstance(result, Response):
        return result
    if route.returns is None and result is None:
        return Response(status=route.status)  # 204, or 202: accepted, nothing to show
    if route.status == 204 or result is None:
        return Response(status=204)
    headers = {}
    if route.location and isinstance(result, dict) and "id" in result:
        headers["Location"] = route.location.format(id=result["id"])
    return Response(json.dumps(result), status=route.status, headers=headers,
                    content_type="application/json")


def parse(service: Gatekeeper, route: Route, request: Request, request_id: str) -> Call:
    """Authenticate first (a stranger learns nothing about the body), then validate."""
    token = bearer_token(request)
    ctx: dict[str, Any] = {"actor": "anonymous", "correlation_id": request_id,
                           "installer_id": None, "role": "anonymous",
                           "client_address": client_address(request,
                                                            service.trusted_proxies)}
    if route.auth:
        if token is None:
            raise Unauthorized("Log in and send 'Authorization: Bearer <token>'.")
        principal = service.principal(token)
        role = str(principal.get("role"))
        if route.roles and role not in route.roles:
            raise Forbidden(f"Only {' or '.join(map(_with_article, route.roles))} may do this.")
        ctx = {
            "actor": f"{role}:{principal.get('username')}",
            "correlation_id": request_id,
            "installer_id": principal.get("installer_id"),
            "role": role,
            "account_id": principal.get("account_id"),
            "client_address": ctx["client_address"],
            # A property manager's communities and permissions (None for other roles).
            "communities": principal.get("communities"),
        }
    body = read_body(request) if route.body is not None else {}
    query = read_query(request, route.query) if route.query is not None else {}
    left = time_left()
    if left is not None:
        ctx["deadline"] = time.time() + left  # a service does not start it after this
    if route.method in WRITE_METHODS:
        _idempotency(request, body, ctx)
    return Call(ctx=ctx, body=body, query=query, token=token)


def _idempotency(request: Request, body: dict[str, Any], ctx: dict[str, Any]) -> None:
    """The client's Idempotency-Key and what it asked, for the service that runs the command
    to answer a retry from store (`concierge.idempotency`)."""
    key = request.headers.get(idempotency.HEADER)
    if key is None:
        return
    problem_text = idempotency.check_key(key)
    if problem_text is not None:
        raise Invalid.fields({idempotency.HEADER: [problem_text]})
    ctx["idempotency_key"] = key
    ctx["request_digest"] = idempotency.request_digest(request.method, request.path, body)


def client_address(request: Request, trusted_proxies: int = 0) -> str | None:
    """Who sent the request: the peer, or behind `trusted_proxies` proxies the address that
    many hops back in X-Forwarded-For (each proxy appends its peer; anything further left was
    written by the client and is not to be trusted)."""
    if trusted_proxies <= 0:
        return request.remote_addr
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")
            if h.strip()]
    return hops[-trusted_proxies] if len(hops) >= trusted_proxies else request.remote_addr


def _with_article(role: str) -> str:
    return f"{'an' if role[:1] in 'aeiou' else 'a'} {role}"


def bearer_token(request: Request) -> str | None:
    """The bearer token, or None; a malformed header counts as no token."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        return None
    return token if _TOKEN.match(token) else None


def _request_id(request: Request) -> str:
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.match(given) else str(uuid.uuid4())


# --- bodies and queries ---------------------------------------------------------------------


def _finite(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_body(request: Request) -> dict[str, Any]:
    """The JSON object sent, with text every store can keep.

    The route's schema is not loaded here: every service loads its payload with that schema
    as its first step, before it looks anything up, and answers the same problem (422, each
    bad field named). Loading it here too cost a tenth of the gateway's CPU per command.
    """
    raw = read_raw_body(request)
    try:
        data = json.loads(raw.decode("utf-8"), parse_float=_finite, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Malformed("The body must be JSON in UTF-8.") from None
    if not isinstance(data, dict):
        raise Malformed("The body must be a JSON object.")
    _check_text(data)
    return data


def read_raw_body(request: Request) -> bytes:
    """The body's bytes; a client that sends less than it announced, or stops sending, is
    answered at once (400, 408), however long the gateway would wait for a service."""
    try:
        raw = request.get_data(cache=False)
    except (BodyTimeout, DeadlineExceeded):
        raise BodyTooSlow("The body stopped arriving before its end; send it whole.") from None
    except ClientDisconnected:
        raise Malformed("The body ended before its Content-Length, or its chunked encoding "
                        "is broken.") from None
    if len(raw) > MAX_BODY_BYTES:  # only a chunked body gets here: see ApiWsgiApp
        raise RequestEntityTooLarge()
    return raw


def read_query(request: Request, schema: type[Schema]) -> dict[str, Any]:
    """Query parameters loaded with `schema`; unknown or repeated parameters are errors."""
    pairs = query_pairs(request)
    names = [name for name, _ in pairs]
    repeated = {name: ["Give this parameter once."] for name in names if names.count(name) > 1}
    if repeated:
        raise Invalid.fields(repeated)
    data = dict(pairs)
    _check_text(data)
    try:
        loaded = load(schema, data)
    except ValidationError as exc:
        raise Invalid.fields(_messages(exc)) from None
    return {k: str(v) if isinstance(v, uuid.UUID) else v.isoformat()
            if isinstance(v, datetime.datetime) else v for k, v in loaded.items()}


def query_pairs(request: Request) -> list[tuple[str, str]]:
    """The query string's names and values, percent-decoded as UTF-8; bytes that are not UTF-8
    (raw or percent-encoded) are a 400 naming the parameter.

    werkzeug's `request.args` raises UnicodeDecodeError on a raw byte above 0x7f (a 500), and
    leaves an undecodable `%FF` in the value as the three characters `%FF`.
    """
    pairs = []
    for part in request.query_string.split(b"&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition(b"=")
        name = unquote_to_bytes(raw_name.replace(b"+", b" "))
        value = unquote_to_bytes(raw_value.replace(b"+", b" "))
        try:
            key = name.decode("utf-8")
        except UnicodeDecodeError:
            key = name.decode("utf-8", "backslashreplace")
            raise Malformed(f"The query parameter name {key!r} is not UTF-8 text.",
                            {key: [NOT_UTF8]}) from None
        try:
            pairs.append((key, value.decode("utf-8")))
        except UnicodeDecodeError:
            raise Malformed(f"The query parameter {key!r} is not UTF-8 text.",
                            {key: [NOT_UTF8]}) from None
    return pairs


def _messages(exc: ValidationError) -> dict[str, Any]:
    return exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}


def _check_text(data: dict[str, Any]) -> None:
    """Refuse text no store can keep and nesting no request needs, naming the field."""
    for path, value in _walk(data):
        if len(path) > MAX_BODY_DEPTH:
            raise Malformed(f"The body is nested deeper than {MAX_BODY_DEPTH} levels.")
        if isinstance(value, str) and UNSTORABLE.search(value):
            raise Invalid.fields(
                _nest(path, "Text may not contain NUL characters or unpaired surrogates."))


def _walk(data: Any) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every value with its path; iterative, so depth cannot exhaust the stack.

    Keys need no check: the strict schemas refuse every key they do not declare.
    """
    stack: list[tuple[tuple[str, ...], Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        yield path, value
        if len(path) > MAX_BODY_DEPTH:
            continue
        if isinstance(value, dict):
            stack.extend(((*path, str(key)), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend(((*path, str(i)), item) for i, item in enumerate(value))


def _nest(path: tuple[str, ...], message: str) -> dict[str, Any]:
    if not path:
        return {"body": [message]}
    errors: Any = [message]
    for key in reversed(path[1:]):
        errors = {key: errors}
    return {path[0]: errors}


class PageQuery(Schema):
    """A page of a list in a fixed order (an APT's history, oldest first): no sort, no q."""

    page = fields.Integer(load_default=1, validate=validate.Range(1, PAGE_MAX))
    per_page = fields.Integer(load_default=PER_PAGE_DEFAULT,
                              validate=validate.Range(1, PER_PAGE_MAX))


def _sort(keys: tuple[str, ...] = ()) -> fields.String:
    """A sort key (the service checks which; the document states them, so that a request made
    to it is never refused)."""
    stated = {"json_schema": {"enum": [*keys, *(f"-{key}" for key in keys)]}} if keys else {}
    return fields.String(validate=validate.Regexp(
        _SORT, error="A field name such as 'name' or '-created_at'."), metadata=stated)


class ListQuery(PageQuery):
    """The portal's list parameters (ARCHITECTURE: page, per_page default 10, sort, q)."""

    sort = _sort()
    q = fields.String(validate=validate.Length(max=128),
                      metadata={"json_schema": {"pattern": TEXT_PATTERN}})


class CommunitiesQuery(ListQuery):
    """The installer's communities (manual: Sites)."""

    sort = _sort(COMMUNITY_SORTS)


class BuildingsQuery(ListQuery):
    """A community's buildings."""

    sort = _sort(BUILDING_SORTS)


class ResidentsQuery(ListQuery):
    """Residents of a community, as the portal's resident list filters them."""

    sort = _sort(RESIDENT_SORTS)

    app_status = fields.String(validate=validate.OneOf(APP_STATUSES))
    building_id = fields.UUID()


class QueryBoolean(fields.Boolean):
    """A query-string boolean, spelled as JSON spells one: "true" or "false" (marshmallow's
    own takes "1", "on", "yes"..., which the OpenAPI document's boolean does not)."""

    truthy = {"true"}
    falsy = {"false"}


class CascadeQuery(Schema):
    """Deleting what still holds something: only with the explicit confirmation."""

    cascade = QueryBoolean(load_default=False, metadata={"description": (
        "true: delete what it holds too (buildings, APTs, their residents' accounts and "
        "devices, each through its own context's events; the MACs go back to the library).")})


class SubInstallersQuery(ListQuery):
    """The installer's sub-accounts: search by account (username)."""

    sort = _sort(SUB_ACCOUNT_SORTS)


class PropertyManagersQuery(ListQuery):
    """The installer's property managers: search by name or email; one community's."""

    sort = _sort(PM_SORTS)
    community_id = fields.UUID()


class MacLibraryQuery(ListQuery):
    """The installer's MAC library: search by MAC, filter by whether a device uses it."""

    sort = _sort(MAC_SORTS)
    in_use = QueryBoolean()


class ThirdPartyQuery(ListQuery):
    """The cameras or locks of an area: search by name."""

    sort = _sort(THIRD_PARTY_SORTS)


class DevicesQuery(ListQuery):
    """The intercom devices of an area: search by MAC, name or SIP; filter by type."""

    sort = _sort(DEVICE_SORTS)
    type = fields.Integer(validate=validate.OneOf(tuple(DEVICE_TYPES)))


class LogQuery(PageQuery):
    """A page of a door or call log, newest first, within [from, to) (ISO 8601 times with
    their offset; a range whose end is not after its start holds nothing)."""

    since = fields.AwareDateTime(data_key="from", metadata={
        "description": "the first instant shown (inclusive)"})
    until = fields.AwareDateTime(data_key="to", metadata={
        "description": "the instant the range ends (exclusive)"})


class CommandsQuery(PageQuery):
    """A page of a device's remote operations, newest first; one state or all."""

    state = fields.String(validate=validate.OneOf(COMMAND_STATES))


def page(call: Call, result: dict[str, Any]) -> dict[str, Any]:
    """A list answer in the gateway's shape, whatever paging fields the service echoes."""
    return {"items": result["items"], "total": result["total"],
            "page": call.query["page"], "per_page": call.query["per_page"]}


def created(result: Any) -> dict[str, Any]:
    """A create RPC answers the new id, bare or as {"id": ...}."""
    return result if isinstance(result, dict) else {"id": result}


# --- sessions -------------------------------------------------------------------------------


class SessionCache:
    """Principals of recently authenticated tokens, so most requests skip the accounts RPC.

    A logout here forgets the token at once (and keeps an in-flight request from caching it
    again); a session closed elsewhere (another replica, an expiry) is noticed within `ttl`.
    """

    def __init__(self, ttl: float, size: int = SESSION_CACHE_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}
        self._forgotten: dict[str, float] = {}

    def get(self, token: str) -> dict[str, Any] | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            self._entries.pop(token, None)
            return None
        return entry[1]

    def put(self, token: str, principal: dict[str, Any]) -> None:
        now = self.clock()
        if self.ttl <= 0 or self._forgotten.get(token, now) > now:
            return
        self._entries.pop(token, None)
        self._bound(self._entries, now, lambda entry: entry[0])
        self._entries[token] = (now + self.ttl, principal)

    def forget_account(self, account_id: str, keep: str | None = None) -> None:
        """Every cached token of one account but `keep` (its sessions ended: a reset, a
        delete, a password change)."""
        for token, (_, principal) in list(self._entries.items()):
            if str(principal.get("account_id")) == str(account_id) and token != keep:
                self.forget(token)

    def forget(self, token: str) -> None:
        now = self.clock()
        self._entries.pop(token, None)
        self._bound(self._forgotten, now, lambda until: until)
        self._forgotten[token] = now + self.ttl

    def _bound(self, entries: dict[str, Any], now: float, expiry: Callable[[Any], float]) -> None:
        if len(entries) < self.size:
            return
        for token in [t for t, e in entries.items() if expiry(e) <= now]:
            del entries[token]
        while len(entries) >= self.size:
            del entries[next(iter(entries))]  # the oldest


class Sessions(DependencyProvider):
    """The gateway's session cache, shared by all its workers."""

    def setup(self) -> None:
        ttl = float(self.container.config.get(SESSION_CACHE_CONFIG_KEY, SESSION_CACHE_SECONDS))
        self.cache = SessionCache(ttl)

    def get_dependency(self, worker_ctx: Any) -> SessionCache:
        return self.cache
