"""A refused request is a caller's mistake, not a service failure: nameko must log it as such.

nameko 2.14 logs an entrypoint's exception at ERROR, with a traceback, unless the entrypoint lists
it in `expected_exceptions` (then WARNING, with the traceback too). Every service entrypoint uses
`concierge.rpc.rpc`, which lists the contract errors, and every service process installs
`concierge.logs` (serve.start), which makes such a WARNING one short INFO line, or DEBUG for a
401; a real container on the in-process transport shows the effect. Also here: direct RPC
callers get the contracts' field errors without the gateway in front.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from marshmallow import Schema, fields
from nameko.containers import ServiceContainer
from nameko.extensions import ENTRYPOINT_EXTENSIONS_ATTR
from nameko.rpc import Rpc
from nameko.testing.services import entrypoint_hook, worker_factory

from concierge import logs, transport
from concierge.rpc import EXPECTED_ERRORS, rpc, translated
from contracts import load
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


class Strict(Schema):
    name = fields.String(required=True)


class Refusing:
    name = "refusing"

    @rpc
    @translated
    def refuse(self, detail: str = "Nope.") -> None:
        raise Invalid(detail, {"name": ["Nope."], **{f"f{i}": ["Bad."] for i in range(30)}})

    @rpc
    @translated
    def refuse_a_payload(self) -> None:
        load(Strict, {"name": 1, "extra": 2})  # Invalid raised from a ValidationError

    @rpc
    @translated
    def unauthorized(self) -> None:
        raise Unauthorized("Not signed in.")

    @rpc
    def crash(self) -> None:
        raise RuntimeError("a real failure")


@pytest.fixture
def container() -> Any:
    transport.reset()
    logs.install()  # as every service process does (concierge.serve.start)
    container = ServiceContainer(Refusing, {"AMQP_URI": "concierge-memory://"})
    container.start()
    yield container
    container.kill()


def container_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """The container's records about entrypoints, as the handler writes them."""
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    return [(r.levelno, formatter.format(r)) for r in caplog.records
            if r.name == "nameko.containers" and "worker" not in r.getMessage().split(" ")[0]
            and ("refused" in r.getMessage() or "error" in r.getMessage())]


def test_a_refused_request_is_one_info_line_without_a_traceback(
        container: ServiceContainer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="nameko.containers")
    with entrypoint_hook(container, "refuse_a_payload") as refuse, pytest.raises(Invalid):
        refuse()
    with entrypoint_hook(container, "refuse") as refuse, pytest.raises(Invalid):
        refuse("x\n" * 10_000)
    [(level, chained), (level_too, long)] = container_lines(caplog)
    assert (level, level_too) == (logging.INFO, logging.INFO)
    assert chained == ("INFO nameko.containers: refusing.refuse_a_payload refused: "
                       "Invalid 422: Invalid input [name, extra]")
    # A detail sent by the caller and thirty field names still make one short line.
    assert "\n" not in long and "Traceback" not in long and len(long) < 500
    assert "x\\nx\\n" in long and long.endswith(", ...]")


def test_a_401_is_logged_at_debug_and_not_at_all_at_info(
        container: ServiceContainer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="nameko.containers")
    with entrypoint_hook(container, "unauthorized") as refuse, pytest.raises(Unauthorized):
        refuse()
    assert container_lines(caplog) == [
        (logging.DEBUG, "DEBUG nameko.containers: refusing.unauthorized refused: "
                        "Unauthorized 401: Not signed in.")]
    caplog.clear()
    caplog.set_level(logging.INFO, logger="nameko.containers")
    with entrypoint_hook(container, "unauthorized") as refuse, pytest.raises(Unauthorized):
        refuse()
    assert container_lines(caplog) == []


def test_any_other_exception_is_still_an_error_with_its_traceback(
        container: ServiceContainer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="nameko.containers")
    with entrypoint_hook(container, "crash") as crash, pytest.raises(RuntimeError):
        crash()
    [(level, line)] = container_lines(caplog)
    assert level == logging.ERROR
    assert "Traceback" in line and "a real failure" in line


# --- direct RPC callers get the contracts' field errors --------------------------------------

LUNA_CTX = {"actor": "distributor:acme", "correlation_id": "c", "installer_id": None,
            "role": "distributor", "account_id": "a"}


def test_accounts_refuses_nul_from_a_direct_rpc_caller_before_the_store() -> None:
    # A command's payload (create_installer) is checked by the application, for every caller:
    # tests/unit/test_accounts_application.py. A query's is checked here.
    service = worker_factory(AccountsService)
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
