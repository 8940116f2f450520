"""The gateway's deadline: a service that does not answer gets 504, never a hung request."""

from __future__ import annotations

import json
import socket
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_service_that_does_not_answer_gets_504_not_a_hang() -> None:
    """A stuck topology worker: the gateway answers 504 problem+json within its deadline."""
    from nameko.rpc import rpc
    from nameko.runners import ServiceRunner

    from concierge import green, transport
    from services.gateway.service import GatewayService

    class StuckTopology:
        name = "topology"

        @rpc
        def dashboard(self, ctx: Any) -> Any:
            green.sleep(30)

    class QuickAccounts:
        name = "accounts"

        @rpc
        def authenticate(self, token: str) -> Any:
            return {"account_id": "a", "role": "installer", "username": "luna",
                    "installer_id": "00000000-0000-0000-0000-000000000001"}

    transport.reset()
    port = _free_port()
    runner = ServiceRunner({"AMQP_URI": "concierge-memory://",
                            "WEB_SERVER_ADDRESS": f"127.0.0.1:{port}",
                            "GATEWAY_TIMEOUT_SECONDS": 0.5})
    for cls in (GatewayService, StuckTopology, QuickAccounts):
        runner.add_service(cls)
    runner.start()
    try:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/dashboard",
                                         headers={"Authorization": "Bearer t"})
        try:
            urllib.request.urlopen(request, timeout=10)
            raise AssertionError("expected 504")
        except urllib.error.HTTPError as err:
            assert err.code == 504
            body = json.loads(err.read())
            assert body["status"] == 504 and body["errors"] == {}
    finally:
        runner.kill()
