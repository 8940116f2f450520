"""How errors and call context cross RPC.

Contract errors (contracts/errors.py) are registered with nameko so a caller gets the same typed
error back, with its field messages. `command` wraps a service entrypoint: it sets the caller's
context for the events the call records and turns library errors into contract errors, so a
rejected command always reaches the gateway as Invalid / NotFound / Conflict, never as a crash.
`rpc` is nameko's decorator with those errors declared expected, so a refused request is logged
as what it is (a caller's mistake, at WARNING) rather than as a service failure (ERROR).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar, overload

import amqp
import kombu
import kombu.serialization
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError
from marshmallow import ValidationError
from nameko import rpc as nameko_rpc
from nameko.amqp.publish import UndeliverableMessage
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_SERIALIZER,
    LOGIN_METHOD_CONFIG_KEY,
    SERIALIZER_CONFIG_KEY,
)
from nameko.exceptions import (
    IncorrectSignature,
    RemoteError,
    UnserializableValueError,
    registry,
    serialize,
)
from nameko.standalone.rpc import ClusterRpcProxy as NamekoClusterRpcProxy
from nameko.standalone.rpc import SingleThreadedReplyListener

from concierge import context, green
from concierge.bus import CONNECTION_ERRORS
from concierge.config import AMQP_PREFIX_CONFIG_KEY
from concierge.transport import SCHEME
from contracts.errors import ERROR_TYPES, ConciergeError, Conflict, Invalid, NotFound, rebuild

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)

# When the caller stops waiting for an RPC request (seconds since the epoch, a header).
DEADLINE_HEADER = "x-concierge-deadline"

# Every error a caller is meant to see: the request was refused, the service did not fail.
# nameko matches with isinstance, so errors a service subclasses from these match too.
# A command whose caller stopped waiting before it ran (`context.Expired`) is refused too.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (*ERROR_TYPES.values(), context.Expired)


def register_errors() -> None:
    for cls in ERROR_TYPES.values():
        registry[f"{cls.__module__}.{cls.__name__}"] = cls


register_errors()

# A reply queue with no consumer expires after this long (nameko's default is five minutes).
# Every short-lived standalone proxy (CLI, probes, tests) leaves one behind; thousands of them
# once filled the broker. Reply queues of running services always have a consumer, and a
# service that reconnects declares its queue again.
nameko_rpc.RPC_REPLY_QUEUE_TTL = 60_000


def as_contract_error(exc: BaseException) -> ConciergeError | None:
    """The contract error a library or domain exception stands for, if any."""
    if isinstance(exc, ConciergeError):
        # Subclasses defined inside a service travel as their contract base class.
        base = next(c for c in type(exc).__mro__ if c.__name__ in ERROR_TYPES
                    and c.__module__ == "contracts.errors")
        return exc if type(exc) is base else base(exc.detail, exc.errors)
    if isinstance(exc, ValidationError):
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        return Invalid.fields(messages)
    if isinstance(exc, AggregateNotFoundError):
        return NotFound("Not found")
    if isinstance(exc, IntegrityError):
        return Conflict("Someone else changed this at the same time; reload and try again")
    if isinstance(exc, RemoteError) and exc.exc_type in ERROR_TYPES:
        return rebuild(exc.exc_type, str(exc.value))
    return None


@contextlib.contextmanager
def contract_errors() -> Iterator[None]:
    """Re-raise library and domain errors as the contract error they stand for."""
    try:
        yield
    except Exception as exc:
        contract_error = as_contract_error(exc)
        if contract_error is None:
            raise
        raise contract_error from exc


def translated(fn: F) -> F:
    """Wrap an RPC entrypoint without a call context (login, authenticate): errors only."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with contract_errors():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def command(fn: F) -> F:
    """Wrap an RPC entrypoint whose first argument (after self) is the call context dict."""

    @functools.wraps(fn)
    def wrapper(self: Any, ctx: dict[str, Any] | None, *args: Any, **kwargs: Any) -> Any:
        with context.acting(ctx), contract_errors():
            return fn(self, ctx, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@overload
def rpc(fn: F, /) -> F: ...


@overload
def rpc(*, expected_exceptions: Any = ..., sensitive_arguments: Any = ...
        ) -> Callable[[F], F]: ...


def rpc(fn: Any = None, /, *, expected_exceptions: Any = (), sensitive_arguments: Any = ()
        ) -> Any:
    """nameko's `@rpc`, run at most once, with the contract errors among its expected exceptions.

    nameko 2.14 logs an entrypoint's exception at ERROR unless it is an instance of the
    entrypoint's `expected_exceptions`, which it logs at WARNING (nameko.containers). Works bare
    (`@rpc`) or called (`@rpc(sensitive_arguments=...)`); extra expected exceptions add to ours.
    Every entrypoint of a service must use this one: they share the service's RPC queue.
    """
    extra = (expected_exceptions if isinstance(expected_exceptions, tuple)
             else (expected_exceptions,))
    decorator = AtMostOnceRpc.decorator(expected_exceptions=EXPECTED_ERRORS + extra,
                                        sensitive_arguments=sensitive_arguments)
    return decorator if fn is None else decorator(fn)


class AtMostOnceRpcConsumer(nameko_rpc.RpcConsumer):
    """Takes a request off the queue before its work starts, so no request runs twice.

    nameko acks a request after its reply: a replica that dies between the two (or while the
    command runs) has the request delivered again to another replica, which runs the command a
    second time (a second community from one `create_community`). Commands are not idempotent,
    so we ack first: a request whose replica dies is lost, and its caller gets no answer (the
    gateway's 504) and can look before trying again. Events stay exactly-once in effect; that
    guarantee is the subscriptions' (tracking), not this one's. A request that crashes its
    replica is not handed to the next one either.
    """

    stopping = False

    def unregister_provider(self, provider: Any) -> None:
        # The container is stopping: a request delivered from now on is left unacked, and the
        # broker gives it to another replica (or to this service's next start) when the
        # consumer's channel closes, within a second.
        self.stopping = True
        super().unregister_provider(provider)

    def setup(self) -> None:
        """nameko's setup, with the deployment's prefix before the queue's name
        (`<prefix>rpc-<service>`): nameko names it from a module constant."""
        if self.queue is None:
            config = self.container.config
            service = self.container.service_name
            self.queue = kombu.Queue(
                f"{config.get(AMQP_PREFIX_CONFIG_KEY, '')}"
                f"{nameko_rpc.RPC_QUEUE_TEMPLATE.format(service)}",
                exchange=nameko_rpc.get_rpc_exchange(config), routing_key=f"{service}.*",
                durable=True)
            self.queue_consumer.register_provider(self)
            self._registered = True

    def handle_message(self, body: Any, message: Any) -> None:
        if self.stopping or not self._take(message):
            return
        deadline = (message.headers or {}).get(DEADLINE_HEADER)
        if isinstance(deadline, int | float) and time.time() >= deadline:
            # Its caller has been answered 504 already: running it now would be a write
            # nobody asked for any more (a retry would make it twice).
            log.info("RPC request %s dropped: its caller stopped waiting %.3f s ago",
                     message.properties.get("correlation_id"), time.time() - deadline)
            return
        super().handle_message(body, message)

    @staticmethod
    def _take(message: Any) -> bool:
        """Ack a request before it runs; False if the ack could not go out. Its channel then
        closed under it, which gives the request back to the broker for another consumer, so
        this process must not run it too."""
        if not message.channel.connection:
            return False
        try:
            message.ack()
        except CONNECTION_ERRORS:
            return False
        return True

    def requeue_message(self, message: Any) -> None:
        # A container being killed refuses new work; the request, already acked, is dropped.
        log.warning("RPC request %s dropped: its service is stopping",
                    message.properties.get("correlation_id"))

    def handle_result(self, message: Any, result: Any, exc_info: Any) -> Any:
        # nameko's reply, without its ack: the request was acked when it arrived.
        config = self.container.config
        responder = Responder(
            config[AMQP_URI_CONFIG_KEY],
            nameko_rpc.get_rpc_exchange(config),
            config.get(SERIALIZER_CONFIG_KEY, DEFAULT_SERIALIZER),
            message,
            ssl=config.get(AMQP_SSL_CONFIG_KEY),
            login_method=config.get(LOGIN_METHOD_CONFIG_KEY),
        )
        return responder.send_response(result, exc_info)


class ReplyPublisher(nameko_rpc.Publisher):
    """Replies go to the caller's own non-durable queue and are not retried: a broker confirm
    or a disk write for each adds a round trip and broker work, and guarantees nothing."""

    def __init__(self, amqp_uri: str, **kwargs: Any) -> None:
        super().__init__(amqp_uri, use_confirms=False, delivery_mode=1, **kwargs)


class ReplyChannel:
    """One long-lived channel per process and broker for RPC replies.

    nameko builds a publisher for every reply, takes a pooled connection, serialises the result
    twice and publishes through kombu's retrying producer: a tenth of a command's CPU in the
    topology service. A reply needs none of it: it goes without confirm (ReplyPublisher), to
    one caller's queue, and a lost one is the caller's timeout either way. Green threads
    share the channel; the lock keeps one message's frames together on the socket.
    """

    _channels: ClassVar[dict[tuple[str, Any, Any], ReplyChannel]] = {}
    _registry_lock = threading.Lock()

    def __init__(self, amqp_uri: str, ssl: Any = None, login_method: Any = None) -> None:
        self.amqp_uri = amqp_uri
        self.ssl = ssl
        self.login_method = login_method
        self._conn: kombu.Connection | None = None
        self._channel: Any = None
        self._lock = threading.Lock()
        self.connects = 0

    @classmethod
    def shared(cls, amqp_uri: str, ssl: Any = None, login_method: Any = None) -> ReplyChannel:
        key = (amqp_uri, repr(ssl), login_method)
        with cls._registry_lock:
            found = cls._channels.get(key)
            if found is None:
                found = cls._channels[key] = cls(amqp_uri, ssl, login_method)
            return found

    def send(self, exchange: str, routing_key: str, correlation_id: str | None, body: bytes,
             content_type: str, content_encoding: str) -> None:
        """Publish one reply; a broken connection is replaced once, then the error is raised."""
        message = amqp.Message(body, content_type=content_type,
                               content_encoding=content_encoding, delivery_mode=1,
                               correlation_id=correlation_id)
        with self._lock:
            for attempt in range(2):
                try:
                    if self._channel is None:
                        self._connect()
                    self._channel.basic_publish(message, exchange=exchange,
                                                routing_key=routing_key)
                    return
                except CONNECTION_ERRORS:
                    self._close()
                    if attempt:
                        raise

    def _connect(self) -> None:
        # No heartbeats: nothing reads this connection, and a dead one fails the next write.
        conn = kombu.Connection(self.amqp_uri, heartbeat=0, ssl=self.ssl,
                                login_method=self.login_method)
        conn.connect()
        self._conn, self._channel = conn, conn.channel()
        self.connects += 1

    def _close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to release
                conn.release()


class _ConfirmChannel:
    """One connection and confirm-mode channel, used by one caller at a time."""

    def __init__(self, amqp_uri: str, ssl: Any, login_method: Any) -> None:
        self.conn = kombu.Connection(amqp_uri, heartbeat=0, ssl=ssl, login_method=login_method)
        self.conn.connect()
        self.channel = self.conn.channel()
        self.channel.confirm_select()
        self.returned: BaseException | None = None
        self.channel.events["basic_return"].add(self._on_return)

    def _on_return(self, exc: BaseException, *_: Any) -> None:
        # Without a handler py-amqp raises while reading the return, and the broker's ack that
        # follows it is left unread, to be taken for the next message's.
        self.returned = exc

    def publish(self, message: amqp.Message, exchange: str, routing_key: str) -> None:
        self.returned = None
        self.channel.basic_publish_confirm(message, exchange=exchange, routing_key=routing_key,
                                           mandatory=True)
        if self.returned is not None:
            raise UndeliverableMessage(str(self.returned))

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already broken: nothing to release
            self.conn.release()


class RequestPublisher:
    """Publishes RPC requests as nameko's proxy does (mandatory and confirmed, so an unknown
    service is an immediate UnknownService), on long-lived channels.

    Requests are transient, where nameko makes them persistent. Kept across a broker restart,
    a request would run its command after its caller had been answered 504 or 500 (the
    caller's reply queue does not survive the restart), and a request is acked when it
    arrives (`AtMostOnceRpcConsumer`), so persistence never made one run more reliably; it
    only cost the broker a write for each.

    nameko's publisher builds a kombu connection object, takes a pooled producer and goes through
    its retrying publish for every request: a fifth of the gateway's CPU. Channels here are kept
    per process and broker; each serves one request at a time, and one that failed or was
    interrupted mid-confirm is closed rather than reused.
    """

    _idle: ClassVar[dict[tuple[str, str, Any], list[_ConfirmChannel]]] = {}

    def __init__(self, amqp_uri: str, serializer: str | None = None, ssl: Any = None,
                 login_method: Any = None, **options: Any) -> None:
        self.amqp_uri = amqp_uri
        self.serializer = serializer or DEFAULT_SERIALIZER
        self.ssl = ssl
        self.login_method = login_method
        self.key = (amqp_uri, repr(ssl), login_method)

    def publish(self, payload: Any, exchange: Any = None, routing_key: str = "",
                mandatory: bool = True, reply_to: str | None = None,
                correlation_id: str | None = None,
                extra_headers: dict[str, Any] | None = None) -> None:
        content_type, encoding, body = kombu.serialization.dumps(payload, self.serializer)
        headers = dict(extra_headers or {})
        expiry: dict[str, str] = {}
        left = green.time_left()
        if left is not None:
            # The caller stops waiting then: the broker drops the request if it is still
            # queued (a service down or busy), and the service if it receives it later.
            headers[DEADLINE_HEADER] = time.time() + left
            expiry["expiration"] = str(max(1, int(left * 1000)))
        message = amqp.Message(
            body if isinstance(body, bytes) else body.encode(encoding or "utf-8"),
            content_type=content_type, content_encoding=encoding, delivery_mode=1,
            priority=0, reply_to=reply_to, correlation_id=correlation_id,
            application_headers=headers, **expiry)
        name = getattr(exchange, "name", exchange) or ""
        idle = self._idle.setdefault(self.key, [])
        for attempt in range(2):
            channel = idle.pop() if idle else None
            fresh = channel is None
            try:
                if channel is None:
                    channel = _ConfirmChannel(self.amqp_uri, self.ssl, self.login_method)
                channel.publish(message, name, routing_key)
            except UndeliverableMessage:
                idle.append(channel)  # type: ignore[arg-type]  # confirmed: still in step
                raise
            except CONNECTION_ERRORS:
                if channel is not None:
                    channel.close()
                if fresh or attempt:  # a new connection failed too: the broker is away
                    raise
                # An idle connection the broker dropped (a restart drops them all): forget
                # every idle one and try once more on a new connection.
                while idle:
                    idle.pop().close()
                continue
            except BaseException:
                if channel is not None:  # a deadline mid-confirm: its ack is still to come
                    channel.close()
                raise
            idle.append(channel)
            return


class PrefixedReplyQueue:
    """nameko's reply listener setup, with the deployment's prefix before the reply queue's name
    (`<prefix>rpc.reply-<service>-<uuid>`)."""

    container: Any
    queue_consumer: Any

    def setup(self) -> None:
        config = self.container.config
        key = uuid.uuid4()
        self.routing_key = str(key)
        self.queue = kombu.Queue(
            f"{config.get(AMQP_PREFIX_CONFIG_KEY, '')}"
            f"{nameko_rpc.RPC_REPLY_QUEUE_TEMPLATE.format(self.container.service_name, key)}",
            exchange=nameko_rpc.get_rpc_exchange(config), routing_key=self.routing_key,
            queue_arguments={"x-expires": nameko_rpc.RPC_REPLY_QUEUE_TTL})
        self.queue_consumer.register_provider(self)


class ReplyListener(PrefixedReplyQueue, nameko_rpc.ReplyListener):
    """A service's reply queue (the gateway's), named in its deployment."""


class StandaloneReplyListener(PrefixedReplyQueue, SingleThreadedReplyListener):
    """A standalone proxy's reply queue, named in its deployment."""


class ClusterRpcProxy(NamekoClusterRpcProxy):
    """nameko's standalone proxy (CLI, log readers, tests), its reply queue named in the
    deployment of its config (`Settings.nameko_config()`)."""

    def __init__(self, config: dict[str, Any], context_data: Any = None,
                 timeout: float | None = None,
                 reply_listener_cls: type = StandaloneReplyListener) -> None:
        super().__init__(config, context_data, timeout, reply_listener_cls)


class ServiceProxy(nameko_rpc.ServiceProxy):
    def __getattr__(self, name: str) -> Any:
        return MethodProxy(self.worker_ctx, self.service_name, name, self.reply_listener,
                           **self.options)


class MethodProxy(nameko_rpc.MethodProxy):
    publisher_cls = RequestPublisher


class RpcProxy(nameko_rpc.RpcProxy):
    """nameko's RpcProxy, publishing its requests with `RequestPublisher` (over RabbitMQ; the
    embedded transport keeps nameko's publisher)."""

    rpc_reply_listener = ReplyListener()

    def get_dependency(self, worker_ctx: Any) -> Any:
        if self.container.config[AMQP_URI_CONFIG_KEY].startswith(SCHEME):
            return super().get_dependency(worker_ctx)
        return ServiceProxy(worker_ctx, self.target_service, self.rpc_reply_listener,
                            **self.options)


class Responder(nameko_rpc.Responder):
    publisher_cls = ReplyPublisher

    def send_response(self, result: Any, exc_info: Any) -> tuple[Any, Any]:
        """nameko's reply, serialised once and sent on the process's reply channel (over
        RabbitMQ; the embedded transport keeps nameko's own publisher)."""
        if self.amqp_uri.startswith(SCHEME):
            return super().send_response(result, exc_info)
        error = serialize(exc_info[1]) if exc_info is not None else None
        content_type = self.message.properties["content_type"]
        serializer = kombu.serialization.registry.type_to_name[content_type]
        try:
            content_type, encoding, body = kombu.serialization.dumps(
                {"result": result, "error": error}, serializer)
        except Exception:
            # As nameko: a result that cannot be serialised becomes an error that can.
            exc_info = sys.exc_info()
            error = serialize(UnserializableValueError(result))
            result = None
            content_type, encoding, body = kombu.serialization.dumps(
                {"result": None, "error": error}, serializer)
        ReplyChannel.shared(self.amqp_uri, self.ssl, self.login_method).send(
            self.exchange.name, self.message.properties["reply_to"],
            self.message.properties.get("correlation_id"),
            body if isinstance(body, bytes) else body.encode(encoding or "utf-8"),
            content_type, encoding)
        return result, exc_info


class SignatureReadOnce:
    """For a nameko entrypoint: nameko's argument check, on a signature read once.

    nameko's `inspect.getcallargs` re-reads the method's signature on every call (a few
    percent of the gateway's CPU per request). Same rule: the method as declared, wrappers
    included.
    """

    container: Any
    method_name: str

    def check_signature(self, args: Any, kwargs: Any) -> None:
        signature = self.__dict__.get("_signature")
        if signature is None:
            method = getattr(self.container.service_cls, self.method_name)
            signature = self.__dict__["_signature"] = inspect.signature(
                method, follow_wrapped=False)
        try:
            signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise IncorrectSignature(str(exc)) from None


class AtMostOnceRpc(SignatureReadOnce, nameko_rpc.Rpc):
    """nameko's RPC entrypoint with the at-most-once consumer."""

    rpc_consumer = AtMostOnceRpcConsumer()
