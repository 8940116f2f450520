"""Schemathesis hooks for tests/e2e/test_openapi_conformance.py (`SCHEMATHESIS_HOOKS`)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance

# The document's rule for the header (services/gateway/openapi.py, `idempotency_parameters`).
VALID_KEY = re.compile(r"[ -~]{1,255}")


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """A valid Idempotency-Key becomes a key of its own for each request.

    A generator draws the same few keys again and again ("0", "00", ...), and a key used again
    with another request is refused (422) or answered with the first request's response, which
    is the header's documented rule, not a rule JSON Schema can state. A fresh key is still a
    valid one; a key the document refuses is sent as drawn, so the rule on its shape is still
    tried.
    """
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and VALID_KEY.fullmatch(key):
        case.headers["Idempotency-Key"] = uuid.uuid4().hex


@schemathesis.check
def positive_data_acceptance_beside_stored_state(ctx: Any, response: Any, case: Any
                                                 ) -> bool | None:
    """Schemathesis' `positive_data_acceptance`, except for the rules an operation states it
    also checks against what is stored (`x-state-rules`: the basic plan needs an indoor
    monitor, an edit's call sequence meets the stored preference): no document can say which
    community is on which plan, and a 422 naming only such fields is the rule, not a failure."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        stated = set(case.operation.definition.raw.get("x-state-rules", []))
        if response.status_code == 422 and stated and set(_named(response)) <= stated:
            return None
        raise


def _named(response: Any) -> list[str]:
    try:
        errors = json.loads(response.content).get("errors")
    except (ValueError, AttributeError):
        return ["?"]
    return list(errors) if isinstance(errors, dict) and errors else ["?"]
