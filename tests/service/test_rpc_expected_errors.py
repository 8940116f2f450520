"""A refused request is a caller's mistake, not a service failure: nameko must log it as such.

nameko 2.14 logs an entrypoint's exception at ERROR, with a traceback, unless the entrypoint lists
it in `expected_exceptions` (then WARNING). Every service entrypoint uses `concierge.rpc.rpc`,
which lists the contract errors; a real container on the in-process transport shows the effect.
Also here: direct RPC callers get the contracts' field errors without the gateway in front.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from nameko.containers import ServiceContainer
from nameko.extensions import ENTRYPOINT_EXTENSIONS_ATTR
from nameko.rpc import Rpc
from nameko.testing.services import entrypoint_hook, worker_factory

from concierge import transport
from concierge.rpc import EXPECTED_ERRORS, rpc, translated
from contracts.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from contracts.fields import NUL_MESSAGE
from services.accounts.service import AccountsService
from services.notify.service import NotifyService
from services.topology.service import TopologyService

SERVICES = [AccountsService, TopologyService, NotifyService]
CONTRACT_ERRORS = (Invalid, NotFound, Conflict, Forbidden, Unauthorized)


def rpc_entrypoints(cls: type) -> dict[str, Rpc]:
    """The RPC entrypoints a service class declares itself (not those of ServiceBase)."""
    found = {}
    for name, member in vars(cls).items():
        for entrypoint in getattr(member, ENTRYPOINT_EXTENSIONS_ATTR, ()):
            if isinstance(entrypoint, Rpc):
                found[name] = entrypoint
    return found


@pytest.mark.parametrize("cls", SERVICES, ids=lambda cls: cls.__name__)
def test_every_service_entrypoint_expects_the_contract_errors(cls: type) -> None:
    entrypoints = rpc_entrypoints(cls)
    assert entrypoints
    for name, entrypoint in entrypoints.items():
        for error in CONTRACT_ERRORS:
            assert error in entrypoint.expected_exceptions, (name, error)


def test_rpc_works_bare_and_called_and_adds_extra_expected_exceptions() -> None:
    class Toy:
        name = "toy"

        @rpc
        def bare(self) -> None: ...

        @rpc(expected_exceptions=KeyError, sensitive_arguments="secret")
        def called(self, secret: str) -> None: ...

    bare, called = rpc_entrypoints(Toy)["bare"], rpc_entrypoints(Toy)["called"]
    assert bare.expected_exceptions == EXPECTED_ERRORS
    assert called.expected_exceptions == (*EXPECTED_ERRORS, KeyError)
    assert called.sensitive_arguments == "secret"


class Refusing:
    name = "refusing"

    @rpc
    @translated
    def refuse(self) -> None:
        raise Invalid.field("name", "Nope.")

    @rpc
    def crash(self) -> None:
        raise RuntimeError("a real failure")


@pytest.fixture
def container() -> Any:
    transport.reset()
    container = ServiceContainer(Refusing, {"AMQP_URI": "concierge-memory://"})
    container.start()
    yield container
    container.kill()


def container_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "nameko.containers" and "error" in r.msg]


def test_a_contract_error_is_logged_as_a_warning(
        container: ServiceContainer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="nameko.containers")
    with entrypoint_hook(container, "refuse") as refuse, pytest.raises(Invalid):
        refuse()
    [record] = container_records(caplog)
    assert record.levelno == logging.WARNING
    assert "(expected)" in record.getMessage()


def test_any_other_exception_is_still_an_error(
        container: ServiceContainer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="nameko.containers")
    with entrypoint_hook(container, "crash") as crash, pytest.raises(RuntimeError):
        crash()
    [record] = container_records(caplog)
    assert record.levelno == logging.ERROR


# --- direct RPC callers get the contracts' field errors --------------------------------------

LUNA_CTX = {"actor": "distributor:acme", "correlation_id": "c", "installer_id": None,
            "role": "distributor", "account_id": "a"}


def test_accounts_refuses_nul_from_a_direct_rpc_caller_before_the_store() -> None:
    service = worker_factory(AccountsService)
    payload = {"username": "lu\x00na", "password": "correct-horse", "email": "l@example.com"}
    with pytest.raises(Invalid) as caught:
        service.create_installer(LUNA_CTX, payload)
    assert caught.value.errors == {"username": [NUL_MESSAGE]}
    with pytest.raises(Invalid) as caught:
        service.login({"username": "luna\x00", "password": "pw"})
    assert caught.value.errors == {"username": [NUL_MESSAGE]}
    assert service.runtime.app.method_calls == []


def test_notify_refuses_a_fractional_page_from_a_direct_rpc_caller() -> None:
    service = worker_factory(NotifyService)
    with pytest.raises(Invalid) as caught:
        service.list_emails(None, {"page": 2.5})
    assert caught.value.errors == {"page": ["Not a valid integer."]}
    assert service.runtime.app.method_calls == []


def test_reply_queues_of_short_lived_proxies_expire_after_a_minute() -> None:
    """A standalone proxy's reply queue outlives it by x-expires; nameko's five minutes let
    test runs and probes fill the broker."""
    from types import SimpleNamespace

    from nameko.standalone.rpc import SingleThreadedReplyListener

    import concierge.rpc  # noqa: F401  (sets the TTL on import)

    listener = SingleThreadedReplyListener()
    listener.container = SimpleNamespace(service_name="probe", config={})
    listener.queue_consumer = SimpleNamespace(register_provider=lambda provider: None)
    listener.setup()
    assert listener.queue.queue_arguments["x-expires"] == 60_000
