"""RPC replies over RabbitMQ go out on one long-lived channel per process (concierge.rpc).

A real nameko container answers a real standalone proxy: results, contract errors, calls with
the wrong arguments and a result that cannot be serialised arrive as nameko's own publisher
would send them; replies to concurrent callers each reach their caller; and a reply channel
whose connection broke is replaced on the next reply.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from nameko.containers import ServiceContainer
from nameko.exceptions import IncorrectSignature, RemoteError
from nameko.standalone.rpc import ClusterRpcProxy

from concierge.rpc import ReplyChannel, rpc
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


@pytest.fixture
def echo(rabbit_uri: str) -> Iterator[Any]:
    config = {"AMQP_URI": rabbit_uri}
    container = ServiceContainer(Echo, config)
    container.start()
    try:
        with ClusterRpcProxy(config, timeout=10) as proxy:
            yield getattr(proxy, Echo.name)
    finally:
        container.stop()


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
