"""Schemas shared between services: the event envelope, event payloads, RPC payloads, errors.

Nothing else crosses a service boundary. See contracts/README.md for the version rule.
"""
