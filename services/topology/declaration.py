"""Topology's declaration: communities, buildings, apartments and residents (the manual's Sites)."""

from __future__ import annotations

from concierge.contexts import BoundedContext
from contracts.topology import EVENT_SCHEMAS
from services.topology.application import TopologyApplication
from services.topology.projections import READ_MODELS

CONTEXT = BoundedContext(
    name="topology",
    service="services.topology.service:TopologyService",
    application=TopologyApplication,
    read_models=lambda app: [model() for model in READ_MODELS],
    event_schemas=EVENT_SCHEMAS,
)
