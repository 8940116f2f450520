"""RPC over RabbitMQ on long-lived channels (concierge.rpc): replies on one per process,
requests (the gateway's RpcProxy) on a few pooled confirm channels.

A real nameko container answers a real standalone proxy: results, contract errors, calls with
the wrong arguments and a result that cannot be serialised arrive as nameko's own publisher
would send them; replies to concurrent callers each reach their caller; and a reply channel
whose connection broke is replaced on the next reply. A request to a service nobody runs is
refused at once (UnknownService) and leaves its channel fit for the next request.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
from nameko.containers import ServiceContainer
from nameko.exceptions import IncorrectSignature, RemoteError, UnknownService
from nameko.standalone.rpc import ClusterRpcProxy

from concierge.rpc import ReplyChannel, RequestPublisher, RpcProxy, rpc
from contracts.errors import NotFound


class Echo:
    name = f"echo_{uuid.uuid4().hex[:8]}"

    @rpc
    def echo(self, value: Any) -> Any:
        return value

    @rpc
    def when(self) -> dt.datetime:
        return dt.datetime(2026, 11, 24, 12, 30, tzinfo=dt.UTC)

    @rpc
    def missing(self) -> None:
        raise NotFound("No such apartment.")

    @rpc
    def unserialisable(self) -> Any:
        return object()


class Caller:
    """Calls Echo through concierge's RpcProxy, as the gateway calls the services."""

    name = f"caller_{uuid.uuid4().hex[:8]}"
    echo = RpcProxy(Echo.name)
    ghost = RpcProxy(f"ghost_{uuid.uuid4().hex[:8]}")  # a service nobody runs

    @rpc
    def relay(self, value: Any) -> Any:
        return self.echo.echo(value)

    @rpc
    def refused(self) -> str:
        return self.echo.missing()  # type: ignore[no-any-return]

    @rpc
    def call_ghost(self) -> str:
        try:
            self.ghost.anything()
        except UnknownService as exc:
            return f"unknown: {exc}"
        return "answered"


@contextlib.contextmanager
def running(rabbit_uri: str, *services: type) -> Iterator[Any]:
    config = {"AMQP_URI": rabbit_uri}
    containers = [ServiceContainer(cls, config) for cls in services]
    for container in containers:
        container.start()
    try:
        with ClusterRpcProxy(config, timeout=10) as proxy:
            yield proxy
    finally:
        for container in reversed(containers):
            container.stop()
        # Their durable RPC queues would outlive the test (named afresh for each run).
        with kombu.Connection(rabbit_uri) as conn:
            channel = conn.channel()
            for cls in services:
                channel.queue_delete(f"rpc-{cls.name}")


@pytest.fixture
def echo(rabbit_uri: str) -> Iterator[Any]:
    with running(rabbit_uri, Echo) as proxy:
        yield getattr(proxy, Echo.name)


@pytest.fixture
def platform(rabbit_uri: str) -> Iterator[Any]:
    """Echo and a caller of it (whose proxy's reply listener takes nameko a few seconds to
    stop)."""
    with running(rabbit_uri, Echo, Caller) as proxy:
        yield proxy


def test_results_and_errors_reach_the_caller(echo: Any) -> None:
    assert echo.echo({"apt": "101", "floors": [1, 2], "note": "é"}) == {
        "apt": "101", "floors": [1, 2], "note": "é"}
    # kombu's JSON, as nameko's publisher sends it, keeps the type.
    assert echo.when() == dt.datetime(2026, 11, 24, 12, 30, tzinfo=dt.UTC)
    big = "x" * 300_000  # more than one AMQP frame
    assert echo.echo(big) == big
    with pytest.raises(NotFound) as refused:
        echo.missing()
    assert refused.value.detail == "No such apartment."
    with pytest.raises(RemoteError) as failed:
        echo.unserialisable()
    assert failed.value.exc_type == "UnserializableValueError"
    for wrong in ((), (1, 2)):  # the signature is checked before any work
        with pytest.raises(IncorrectSignature):
            echo.echo(*wrong)
    with pytest.raises(IncorrectSignature):
        echo.echo(other=1)


def test_concurrent_calls_each_get_their_own_reply(echo: Any) -> None:
    # All in flight at once: the container's workers reply on the shared channel together.
    calls = [echo.echo.call_async(n) for n in range(200)]
    assert [call.result() for call in calls] == list(range(200))


def test_a_broken_reply_connection_is_replaced(echo: Any, rabbit_uri: str) -> None:
    assert echo.echo(1) == 1
    channel = ReplyChannel.shared(rabbit_uri)
    before = channel.connects
    assert channel._conn is not None
    channel._conn.connection.sock.close()  # the broker or the network dropped it

    assert echo.echo(2) == 2
    assert channel.connects == before + 1


def test_requests_go_out_on_pooled_channels_and_an_unknown_service_is_refused_at_once(
        platform: Any, rabbit_uri: str) -> None:
    caller = getattr(platform, Caller.name)
    assert caller.relay({"apt": "101"}) == {"apt": "101"}
    with pytest.raises(NotFound):  # a contract error comes back through both hops
        caller.refused()

    assert caller.call_ghost().startswith("unknown:")
    for n in range(5):  # the refused request's confirm was taken: each answer is its own
        assert caller.relay(n) == n
    assert caller.call_ghost().startswith("unknown:")

    calls = [caller.relay.call_async(n) for n in range(100)]  # many requests in flight
    assert [call.result() for call in calls] == list(range(100))


def test_a_pooled_request_channel_the_broker_dropped_is_replaced(
        platform: Any, rabbit_uri: str) -> None:
    caller = getattr(platform, Caller.name)
    assert caller.relay(1) == 1
    idle = RequestPublisher._idle[(rabbit_uri, repr(None), None)]
    assert idle
    for channel in idle:
        channel.conn.connection.sock.close()  # every idle connection dropped

    assert caller.relay(2) == 2
