"""The gateway's declaration: the web portal's HTTP API, in front of the contexts. It keeps no
store: it only calls the contexts over RPC."""

from __future__ import annotations

from concierge.config import Settings
from concierge.contexts import BoundedContext


def describe(settings: Settings) -> str:
    return (f"API at http://{settings.gateway_host}:{settings.gateway_port}/api/v1 "
            "(OpenAPI: /openapi.json)")


CONTEXT = BoundedContext(
    name="gateway",
    service="services.gateway.service:GatewayService",
    describe=describe,
)
