"""The OpenAPI 3.1 document of the gateway, generated from its routes and the contract schemas.

A small converter from marshmallow fields to JSON Schema (2020-12, the dialect of OpenAPI 3.1)
instead of apispec: the contracts use a handful of field types and validators, and owning the
mapping keeps one pinned dependency fewer. A rule a validator checks in code states itself in
JSON Schema (`contracts.fields.documented`: blank names, APT numbers, IANA time zones), `Text`
states that it takes no NUL, a list states its sort keys, a rule across fields states itself on
its `validates_schema` method (`if`/`then`), and an operation names the fields the domain also
checks against what is stored (`x-state-rules`), so that a request made to the document is not
refused for a rule it does not say.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from marshmallow import RAISE, Schema, fields, missing, validate

from concierge import idempotency
from contracts.fields import ecma
from contracts.topology import FLOOR_MAX, FLOOR_MESSAGE, FLOOR_MIN, GROUND_FLOORS, Floor
from services.gateway.http import MAX_BODY_BYTES, WRITE_METHODS, Route

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"
SECURITY_SCHEME = "bearer"

# The most specific class first: Email is a String, AwareDateTime a DateTime.
FIELD_TYPES: list[tuple[type[fields.Field], dict[str, Any]]] = [
    (fields.Email, {"type": "string", "format": "email"}),
    (fields.UUID, {"type": "string", "format": "uuid"}),
    (fields.Url, {"type": "string", "format": "uri"}),
    (fields.DateTime, {"type": "string", "format": "date-time"}),
    (fields.Date, {"type": "string", "format": "date"}),
    (fields.Time, {"type": "string", "format": "time"}),
    (fields.String, {"type": "string"}),
    (fields.Integer, {"type": "integer"}),
    (fields.Number, {"type": "number"}),
    (fields.Boolean, {"type": "boolean"}),
    (fields.Mapping, {"type": "object"}),
]

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details. `errors` maps each bad field (or `body`) to its "
    "messages; nested fields nest the same way.",
    "required": ["type", "title", "status", "detail", "errors"],
    "properties": {
        "type": {"type": "string", "format": "uri-reference",
                 "examples": ["urn:concierge:problem:unprocessable-entity"]},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {"type": "object", "additionalProperties": True},
    },
}

BUILTIN_SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": PROBLEM_SCHEMA,
    "Resource": {"type": "object", "description": "The resource as the service returns it."},
    "Created": {
        "type": "object",
        "required": ["id"],
        "properties": {"id": {"type": "string"}},
    },
    "Page": {
        "type": "object",
        "required": ["items", "total", "page", "per_page"],
        "properties": {
            "items": {"type": "array", "items": {"type": "object"}},
            "total": {"type": "integer", "minimum": 0},
            "page": {"type": "integer", "minimum": 1},
            "per_page": {"type": "integer", "minimum": 1},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok"]}},
    },
    "OpenApiDocument": {"type": "object", "description": "This document."},
}

ERROR_RESPONSES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The body is not a JSON object or ended before its length "
                        "(`errors.body` says why), or a query parameter is not UTF-8 text."),
    401: ("Unauthorized", "No valid bearer token (or wrong credentials at login)."),
    403: ("Forbidden", "This role may never do this."),
    404: ("NotFound", "No such route or resource, or not one the caller may see."),
    408: ("RequestTimeout", "The body stopped arriving before its end."),
    409: ("Conflict", "Clashes with the current state: a duplicate or a concurrent change."),
    413: ("ContentTooLarge", f"The body is larger than {MAX_BODY_BYTES} bytes."),
    422: ("UnprocessableContent", "A field or query parameter broke a rule; see `errors`."),
    500: ("InternalError", "Our fault; quote the X-Request-Id."),
    503: ("ServiceUnavailable", "A service behind the gateway is not running, or has as many "
                                "of these requests in hand as it takes; retry after the "
                                "Retry-After seconds."),
}

_PATH_PARAM = re.compile(r"<(?:(?P<converter>[a-z]+):)?(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>")
_CONVERTERS: dict[str, dict[str, Any]] = {
    "uuid": {"type": "string", "format": "uuid"},
    "int": {"type": "integer"},
    "string": {"type": "string"},
}


class Components:
    """Schemas referenced so far, converted once each and named after their class."""

    def __init__(self) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}
        self._classes: dict[str, type[Schema]] = {}

    def ref(self, target: type[Schema] | str) -> dict[str, Any]:
        if isinstance(target, str):
            self.schemas.setdefault(target, BUILTIN_SCHEMAS[target])
            return {"$ref": f"#/components/schemas/{target}"}
        name = target.__name__
        known = self._classes.get(name)
        if known is not None and known is not target:
            raise ValueError(f"two schemas are both named {name}: {known} and {target}")
        if known is None:
            self._classes[name] = target
            self.schemas[name] = {}  # reserved first: a schema may nest itself
            self.schemas[name] = object_schema(target(), self)
        return {"$ref": f"#/components/schemas/{name}"}


def object_schema(schema: Schema, components: Components) -> dict[str, Any]:
    """A request schema as a JSON Schema object; unknown fields are refused if the schema does."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, field in schema.fields.items():
        if field.dump_only:
            continue
        key = field.data_key or name
        properties[key] = field_schema(field, components)
        if field.required:
            required.append(key)
    result: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        result["required"] = required
    if schema.unknown == RAISE:
        result["additionalProperties"] = False
    for rule in schema_rules(type(schema)):  # rules across fields (`validates_schema`)
        result.setdefault("allOf", []).extend(rule.get("allOf", [rule]))
    summary = _first_line(type(schema).__doc__)
    if summary:
        result["description"] = summary
    return result


def schema_rules(schema: type[Schema]) -> list[dict[str, Any]]:
    """The JSON Schema of each rule across fields that the schema states beside its check
    (`contracts.fields.documented` on a `validates_schema` method)."""
    hooks = (getattr(schema, name, None) for name in dir(schema) if not name.startswith("__"))
    return [hook.json_schema for hook in hooks
            if callable(hook) and isinstance(getattr(hook, "json_schema", None), dict)]


def state_rules(schema: type[Schema] | None) -> dict[str, str]:
    """Fields the domain also checks against what is stored (a schema's `state_rules`): a
    request the document allows may still be refused with 422 naming one of them."""
    return dict(getattr(schema, "state_rules", None) or {})


def field_schema(field: fields.Field, components: Components) -> dict[str, Any]:
    if isinstance(field, fields.Nested):
        target = components.ref(type(field.schema))
        result = {"type": "array", "items": target} if field.many else target
    elif isinstance(field, fields.List):
        result = {"type": "array", "items": field_schema(field.inner, components)}
    elif isinstance(field, Floor):
        result = floor_schema(allow_all=field.allow_all)
    else:
        result = next((dict(s) for cls, s in FIELD_TYPES if isinstance(field, cls)), {})
    for validator in field.validators:
        _apply(validator, result)
    _stated(field, result)
    if field.allow_none:
        result = _nullable(result)
    default = field.load_default
    if default is not missing:
        value = default() if callable(default) else default
        if _is_json(value):
            result = {**result, "default": value}
    return result


def floor_schema(*, allow_all: bool) -> dict[str, Any]:
    names = [*GROUND_FLOORS, "all"] if allow_all else list(GROUND_FLOORS)
    return {
        "anyOf": [
            {"type": "integer", "minimum": FLOOR_MIN, "maximum": FLOOR_MAX},
            {"type": "string", "enum": names},
        ],
        "description": FLOOR_MESSAGE + (" Or 'all' (All Floors)." if allow_all else ""),
    }


def _apply(validator: Any, result: dict[str, Any]) -> None:
    kind = result.get("type")
    if isinstance(validator, validate.Length):
        low, high = ("minItems", "maxItems") if kind == "array" else ("minLength", "maxLength")
        if validator.equal is not None:
            result[low] = result[high] = validator.equal
        if validator.min is not None:
            result[low] = validator.min
        if validator.max is not None:
            result[high] = validator.max
    elif isinstance(validator, validate.Range):
        if validator.min is not None:
            result["minimum" if validator.min_inclusive else "exclusiveMinimum"] = validator.min
        if validator.max is not None:
            result["maximum" if validator.max_inclusive else "exclusiveMaximum"] = validator.max
    elif isinstance(validator, validate.OneOf):
        result["enum"] = list(validator.choices)
    elif isinstance(validator, validate.Regexp):
        result["pattern"] = ecma(validator.regex.pattern)
    hint = getattr(validator, "json_schema", None)  # a rule in code (`contracts.fields.documented`)
    if hint:
        _merge(result, hint)


def _stated(field: fields.Field, result: dict[str, Any]) -> None:
    """What the field itself states beyond its validators: its own rules (`Text`: no NUL, no
    unpaired surrogate; an enum of a validator already says as much or more), and
    a route's `metadata={"json_schema": {...}}` (the sort keys a list takes), and its
    `metadata={"description": ...}` (what each call type code means)."""
    own = getattr(field, "json_schema", None)
    if own and "enum" not in result and "format" not in result:
        if "pattern" not in result:
            _merge(result, own)
        elif result["pattern"] != own["pattern"]:  # one `pattern` per schema: the rest in allOf
            result.setdefault("allOf", []).append({"pattern": own["pattern"]})
    stated = field.metadata.get("json_schema")
    if stated:
        _merge(result, stated)
    if field.metadata.get("description"):
        _merge(result, {"description": field.metadata["description"]})


def _merge(result: dict[str, Any], hint: dict[str, Any]) -> None:
    for key, value in hint.items():
        if key == "maxLength" and "maxLength" in result:
            result[key] = min(result[key], value)
        elif key == "description" and "description" in result:
            result[key] = f"{result[key]} {value}"
        else:
            result[key] = value


def _nullable(result: dict[str, Any]) -> dict[str, Any]:
    if isinstance(result.get("type"), str) and "$ref" not in result:
        nullable = {**result, "type": [result["type"], "null"]}
        if "enum" in nullable:
            nullable["enum"] = [*nullable["enum"], None]
        return nullable
    if "anyOf" in result:
        return {**result, "anyOf": [*result["anyOf"], {"type": "null"}]}
    return {"anyOf": [result, {"type": "null"}]}


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n\n")[0].replace("\n", " ").strip()


# --- the document ---------------------------------------------------------------------------


def openapi_path(path: str) -> tuple[str, list[dict[str, Any]]]:
    """werkzeug's `/x/<uuid:id>` as OpenAPI's `/x/{id}`, with its path parameters."""
    parameters = [
        {"name": m["name"], "in": "path", "required": True,
         "schema": dict(_CONVERTERS[m["converter"] or "string"])}
        for m in _PATH_PARAM.finditer(path)
    ]
    return _PATH_PARAM.sub(lambda m: "{" + m["name"] + "}", path), parameters


def query_parameters(schema: type[Schema] | None, components: Components) -> list[dict[str, Any]]:
    if schema is None:
        return []
    return [
        {"name": field.data_key or name, "in": "query", "required": field.required,
         "schema": field_schema(field, components)}
        for name, field in schema().fields.items()
    ]


def idempotency_parameters(route: Route) -> list[dict[str, Any]]:
    """Every write takes an Idempotency-Key (concierge.idempotency)."""
    if route.method not in WRITE_METHODS:
        return []
    return [{
        "name": idempotency.HEADER, "in": "header", "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_CHARS,
                   "pattern": "^[ -~]+$"},
        "description": "Makes the request safe to retry: the same key and request within 24 h "
                       "answer the first response again without doing anything twice; the "
                       "same key with another request is 422. Keys are per account.",
    }]


def error_statuses(route: Route) -> list[int]:
    """The error statuses a route can answer, from its shape (see services/gateway/http.py)."""
    statuses = {500, *route.errors}
    if route.body is not None:
        statuses |= {400, 408, 413, 422}
    if route.method in WRITE_METHODS:
        statuses.add(422)  # an Idempotency-Key reused for another request
    if route.query is not None:
        statuses |= {400, 422}
    if route.auth:
        statuses |= {401, 403}
    if "<" in route.path:
        statuses.add(404)
    if route.calls_rpc:
        statuses.add(503)
        if route.method in {"POST", "PATCH", "DELETE"}:
            statuses.add(409)  # every write may meet a concurrent one
    return sorted(statuses)


def operation(route: Route, components: Components) -> dict[str, Any]:
    _, path_parameters = openapi_path(route.path)
    success: dict[str, Any] = {"description": route.summary}
    if route.returns is not None and route.status != 204:
        success["content"] = {"application/json": {"schema": components.ref(route.returns)}}
    if route.location:
        success["headers"] = {"Location": {"schema": {"type": "string", "format": "uri-reference"},
                                           "description": "Where the new resource lives."}}
    responses: dict[str, Any] = {str(route.status): success}
    for status in error_statuses(route):
        responses[str(status)] = {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"}
    result: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": [*path_parameters, *query_parameters(route.query, components),
                       *idempotency_parameters(route)],
        "responses": responses,
        "security": [{SECURITY_SCHEME: []}] if route.auth else [],
    }
    description = " ".join(filter(None, [
        route.description, f"Only for: {', '.join(route.roles)}." if route.roles else ""]))
    rules = state_rules(route.body)
    if rules:
        stored = " ".join(f"`{name}` {why}" for name, why in rules.items())
        description = " ".join(filter(None, [
            description, f"Checked against what is stored too (422 naming the field): {stored}"]))
        result["x-state-rules"] = sorted(rules)
    if description:
        result["description"] = description
    if route.body is not None:
        result["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": components.ref(route.body)}},
        }
    return result


def document(routes: Iterable[Route]) -> dict[str, Any]:
    """The whole OpenAPI document for these routes."""
    components = Components()
    components.ref("Problem")
    paths: dict[str, dict[str, Any]] = {}
    tags: list[str] = []
    for route in routes:
        path, _ = openapi_path(route.path)
        paths.setdefault(path, {})[route.method.lower()] = operation(route, components)
        if route.tag not in tags:
            tags.append(route.tag)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "SmartPlus Cloud (Concierge) gateway",
            "version": API_VERSION,
            "description": "The web portal's HTTP API. Errors are application/problem+json; "
            "lists take page, per_page (default 10, at most 100), sort and q.",
        },
        "tags": [{"name": tag} for tag in tags],
        "paths": paths,
        "components": {
            "schemas": components.schemas,
            "responses": {
                name: {
                    "description": description,
                    "content": {"application/problem+json": {"schema": components.ref("Problem")}},
                }
                for name, description in ERROR_RESPONSES.values()
            },
            "securitySchemes": {
                SECURITY_SCHEME: {"type": "http", "scheme": "bearer",
                                  "description": "The token from POST /api/v1/auth/login."},
            },
        },
    }
